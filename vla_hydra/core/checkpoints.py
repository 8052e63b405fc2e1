"""A checkpoint path as the user gives it (`ckpt_path=...`): what can be told without reading the file.

Free of torch on purpose: the cluster launchers check every job's ckpt_path here before anything is
submitted, and importing torch would add seconds to every submission.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from vla_hydra.core.exceptions import CheckpointError, ConfigError

RUN_DIR_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# ckpt_path values Lightning resolves itself (`last`: vla_hydra's own, this run dir's last.ckpt)
LIGHTNING_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Lightning's DeepSpeed strategy saves `last.ckpt` as a directory: a `latest` tag file and the
    tagged folder of model/optimizer shards."""
    return path.is_dir() and (path / "latest").is_file()


def checkpoint_in_dir(directory: str | Path) -> Path:
    """The checkpoint file a user who named a directory most likely meant: a run dir's
    checkpoints/last.ckpt, or the last.ckpt of a checkpoints/ dir (not checkpoints/checkpoints/last.ckpt)."""
    directory = Path(directory)
    inside = directory / RUN_DIR_CHECKPOINT.name
    if inside.is_file() or (
        directory.name == RUN_DIR_CHECKPOINT.parent.name and not (directory / RUN_DIR_CHECKPOINT).is_file()
    ):
        return inside
    return directory / RUN_DIR_CHECKPOINT


def check_checkpoint_file(path: str) -> None:
    """`ckpt_path=<path>` (not an alias): one line when it cannot be a checkpoint. Called in the run
    (training and eval_only) and, for every job, by the cluster launchers before they submit."""
    if not path.strip():
        raise CheckpointError(
            "ckpt_path: empty; expected a checkpoint file, e.g. <run dir>/checkpoints/last.ckpt"
        )
    if is_deepspeed_checkpoint(Path(path)):
        return
    if Path(path).is_dir():
        raise CheckpointError(
            f"ckpt_path={path}: a directory; expected a checkpoint file, e.g. {checkpoint_in_dir(path)}"
        )
    if not Path(path).is_file():
        raise CheckpointError(f"ckpt_path={path}: file not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"ckpt_path={path}: not a complete checkpoint (truncated, or not written by torch.save); use "
            "another one, e.g. the run's checkpoints/last.ckpt"
        )


def check_run_checkpoint(cfg) -> None:
    """A run's `ckpt_path` as the run will use it: required with eval_only=true (experiment=eval); `last`
    (a training run's own dir's last.ckpt) is left to the run, which alone knows its dir; Lightning's other
    aliases are refused. Called by the run and, for every job, by the cluster launchers before they submit."""
    path = cfg.get("ckpt_path")
    eval_only = bool(cfg.get("eval_only"))
    if path is None:
        if eval_only:
            raise ConfigError(
                "ckpt_path: required with eval_only=true (experiment=eval); pass ckpt_path=<checkpoint>, or "
                "several separated by commas (one job each)"
            )
        return
    path = str(path)
    if path == "last" and not eval_only:
        return
    if path in LIGHTNING_CKPT_ALIASES:
        raise CheckpointError(
            f"ckpt_path={path}: not supported here; pass a checkpoint file"
            + ("" if eval_only else " (or ckpt_path=last)")
        )
    check_checkpoint_file(path)
