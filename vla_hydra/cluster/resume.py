"""Resume so that the continuation equals the uninterrupted run.

Lightning restores weights, optimizer state and step counters, but not the minibatch sampler (its
generator is reseeded when the dataloader is built) nor the global RNGs. `ResumeState` stores in every
checkpoint how many training batches were consumed and the global RNG states; on resume it advances the
sampler by that many draws and restores the RNGs. Draws are replayed rather than the generator state
saved because Lightning prefetches one batch: at any hook the generator is already one draw ahead of
what training consumed.
"""

from __future__ import annotations

import zipfile
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from vla_hydra.core.exceptions import CheckpointError
from vla_hydra.core.logging import get_logger
from vla_hydra.core.runtime import decorrelate_rngs, get_rng_states, set_rng_states
from vla_hydra.training.sharding import is_deepspeed_checkpoint

log = get_logger(__name__)

RUN_DIR_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# ckpt_path values Lightning resolves itself
LIGHTNING_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint `trainer.fit` starts from.

    With `cluster.auto_resume` (cluster=slurm) a job that finds its own run dir's `last.ckpt` is a
    requeued job (run dirs are new for every launch) and continues from it; otherwise `ckpt_path`.
    """
    own = run_dir / RUN_DIR_CHECKPOINT
    cluster = cfg.get("cluster") or {}
    if cluster.get("auto_resume") and (own.is_file() or is_deepspeed_checkpoint(own)):
        log.info(f"resuming the requeued job from {own}")
        return str(own)
    path = cfg.get("ckpt_path")
    if (
        path is not None
        and str(path) not in LIGHTNING_CKPT_ALIASES
        and not is_deepspeed_checkpoint(Path(path))
    ):
        # checked before any data is collected or trained on, not when Lightning gets to it
        if not Path(path).is_file():
            raise CheckpointError(f"ckpt_path={path}: file not found")
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"ckpt_path={path}: not a checkpoint (expected a file written by torch.save)"
            )
    return path


def advance_iterable(dataset: Any, draws: int) -> int:
    """Draw `draws` items from an iterable dataset (restarting its iterator at epoch ends); returns how
    many were drawn. Used to bring a freshly seeded sampler to where a checkpointed run left it."""
    done = 0
    while done < draws:
        got = sum(1 for _ in islice(iter(dataset), draws - done))
        if got == 0:
            break
        done += got
    return done


class ResumeState(L.Callback):
    """Saves the sampler position and global RNG states with each checkpoint and restores them on resume."""

    def __init__(self):
        self.batches_consumed = 0
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning runs checkpoint callbacks after the others, so a save at this step sees the new count
        self.batches_consumed += 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed, "rng": get_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict
        self.batches_consumed = int(state_dict["batches_consumed"])

    def on_train_start(self, trainer, pl_module) -> None:
        # before the loop's first fetch: the sampler still sits at its seed
        if not self._restored or not self.batches_consumed:
            return
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if isinstance(dataset, torch.utils.data.IterableDataset):
            drawn = advance_iterable(dataset, self.batches_consumed)
            log.info(f"resume: sampler advanced past the {drawn} batches already trained on")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # RNGs are restored at the first step, after every on_train_start hook (e.g. the evaluation at start)
        if self._restored is None:
            return
        rng, self._restored = self._restored["rng"], None
        set_rng_states(rng)
        if trainer.world_size > 1:  # the checkpoint holds rank 0's states: every rank got the same
            decorrelate_rngs(trainer.global_rank)
