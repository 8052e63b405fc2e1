"""Rank-zero logging: in multi-process runs only global rank 0 writes, so messages are not repeated."""

from __future__ import annotations

import logging
import os
import sys


def _global_rank() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return _global_rank() == 0


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are emitted on global rank 0 only."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger


class _CurrentStdout:
    """`sys.stdout` as it is at each write: the stream of the console log handler (conf/hydra/default.yaml).
    Lightning's progress bar (rich) swaps sys.stdout for a proxy that prints above the live bar while it
    runs; a handler holding the stream it was given at start-up wrote past that proxy, into the bar, and each
    log line left a stale copy of the bar on the screen (and a wrapped line lost its end under the bar)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


CURRENT_STDOUT = _CurrentStdout()


RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)


class _DropLightningTips(logging.Filter):
    # its adverts; its Ctrl-C notice (the run's own last line says where it stopped and how to continue);
    # and its "TPU available: False, using: 0 TPU cores" on every run and sweep job: vla_hydra has no TPU
    # trainer config (a machine with a TPU still gets the line, and Lightning's warning when it goes unused)
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg).lstrip()
        return not message.startswith(
            ("💡 Tip", "Detected KeyboardInterrupt, attempting graceful shutdown", "TPU available: False,")
        )


def silence_known_warnings() -> None:
    """Lightning warnings and duplicate log output that do not apply to how vla_hydra trains (checked, intended behaviour)."""
    import warnings

    # The minibatch stream has a length but never runs in worker processes (num_workers=0).
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
    # Checkpoints are meant to hold the state after the step's updates (manual optimization).
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # A machine with SLURM installed (e.g. a login node, or this project's local SLURM) is not a
    # SLURM job; cluster=slurm launches through submitit, which sets up the job environment itself.
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")
    # Lightning 2.6 calling a torch pytree API that torch 2.13 deprecates: not ours to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    # conf/trainer/ddp.yaml keeps broadcast_buffers=false, which torch 2.13 deprecates for
    # forward_sync_buffers; that one does not exist in the older torch versions pyproject allows, and
    # vla_hydra's buffers are equal on all ranks when DDP wraps the module, so the two mean the same here
    warnings.filterwarnings("ignore", message=".*`broadcast_buffers` is deprecated.*")
    # Async training envs closed by a Ctrl-C/SIGTERM that landed while they were stepping: the run's own
    # last line says what happened; gymnasium's note about the interrupted step adds nothing.
    warnings.filterwarnings("ignore", message=".*Calling `close` while waiting for a pending call.*")
    # A resumed run writes into its own new run dir, not the one its checkpoint came from (intended).
    warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
    # Lightning's advice for an unused GPU is Python's (`Trainer(accelerator='gpu')`); build_trainer says it
    # in this CLI's terms (trainer=gpu) instead
    warnings.filterwarnings(
        "ignore", message=r"GPU available but not used\. You can set it by doing `Trainer"
    )
    # Lightning's "💡 Tip: ... try installing litlogger/litmodels" adverts on every Trainer: not advice
    # that applies to a vla_hydra run (its loggers and checkpoints are chosen in conf/). Lightning logs them
    # through the logger of whichever rank_zero module was imported last: `lightning_fabric`'s (the
    # standalone package) once anything imports it, and the tips came through there
    for name in RANK_ZERO_LOGGERS:
        rank_zero = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in rank_zero.filters):
            rank_zero.addFilter(_DropLightningTips())
    # `lightning` installs its own console handler and also propagates to the root logger: under Hydra
    # (root already configured) every Lightning message would print twice.
    # Imported before Hydra configured logging (a continuation into its own run dir: the early run-dir
    # checks import lightning), `lightning.pytorch` and `lightning.fabric` get such a handler too, and stop
    # propagating: their messages went unformatted to stderr and never reached the run's train.log.
    root = logging.getLogger()
    if root.handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_logger = logging.getLogger(name)
            console = [
                handler
                for handler in lightning_logger.handlers
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            ]
            for handler in console:
                lightning_logger.removeHandler(handler)
            if console and name != "lightning":
                lightning_logger.propagate = True
