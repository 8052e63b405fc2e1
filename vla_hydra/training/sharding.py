"""What sharded strategies (trainer=fsdp, trainer=deepspeed) change outside the training step.

Evaluation runs on rank 0 with whole weights, but FSDP (several GPUs) and DeepSpeed ZeRO-3 keep only a
shard of each parameter on each rank between forward passes; and Lightning's DeepSpeed strategy writes
a checkpoint as a directory of shards rather than one file. One home for both.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vla_hydra.core.exceptions import CheckpointError


@contextlib.contextmanager
def gathered_weights(trainer, module: torch.nn.Module) -> Iterator[None]:
    """Whole parameters inside the block on every rank. Every rank must enter it (gathering is a
    collective); rank 0 then evaluates or saves. A no-op for unsharded strategies."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield
    elif isinstance(strategy, FSDPStrategy) and strategy.world_size > 1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False):
            yield
    else:
        yield


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Lightning's DeepSpeed strategy saves `last.ckpt` as a directory: a `latest` tag file and the
    tagged folder of model/optimizer shards."""
    return path.is_dir() and (path / "latest").is_file()


def load_deepspeed_checkpoint(path: Path) -> dict[str, Any]:
    """A DeepSpeed checkpoint directory as the one-file checkpoint dict Lightning writes elsewhere
    (fp32 weights gathered from the ZeRO shards under "state_dict", plus the run's own sections).
    Runs on a CPU; needs the deepspeed package, as the run that wrote it did."""
    try:
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    except ImportError as err:  # deepspeed missing
        raise CheckpointError(
            f"ckpt_path={path}: a DeepSpeed checkpoint directory; reading it needs the deepspeed "
            f'package (pip install -e ".[deepspeed]")'
        ) from err
    # it also writes the consolidated file (and says so on stdout); the returned dict is what we need
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        try:
            return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(tmp) / "whole.ckpt"))
        except Exception as err:  # noqa: BLE001 - a broken shard set, whatever DeepSpeed raises
            raise CheckpointError(
                f"ckpt_path={path}: unreadable DeepSpeed checkpoint ({type(err).__name__}: {err})"
            ) from err
