"""How checkpoint files are written: atomically, beside their final name."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vla_hydra.core.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's own directory, then os.replace onto the name.

    Lightning's own save goes through fsspec's transaction, whose temporary file lies in $TMPDIR: on another
    file system (a tmpfs /tmp, a node-local TMPDIR on SLURM) the final step copies over the old file, so a
    kill mid-copy left a truncated last.ckpt and no good one; and it swallows PermissionError, so an
    unwritable checkpoint dir meant no checkpoint and exit 0. Here the old file stays whole until the new
    one is complete, and a directory that cannot take the file is a one-line OutputError.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def use_atomic_checkpoint_io(trainer) -> None:
    """Replace the strategy's plain TorchCheckpointIO (single device, DDP, FSDP full state dicts); other
    checkpoint IO (DeepSpeed's shard directories, a user's plugin) is left as it is."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
