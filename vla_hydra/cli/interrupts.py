"""Ctrl-C and SIGTERM end a command with one line saying where the run continues from (exit 130 / 143)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from vla_hydra.cli.job import _record_in_job_log, _sweep_job_prefix


class Terminated(BaseException):
    """SIGTERM outside a fit (dataset collection, evaluation), raised so that `finally` blocks run: a
    collection's temporary file is removed instead of left beside the data."""


def _sigterm_to_exception(signum, frame) -> None:
    # Lightning's fit wraps the handlers it finds in its own and stops at the next step boundary, saving
    # last.ckpt (InterruptionRecord): raising here would cut a step short, so only raise when called directly
    if signal.getsignal(signal.SIGTERM) is _sigterm_to_exception:
        raise Terminated


def raise_on_sigterm():
    """Install _sigterm_to_exception where SIGTERM still has its default action (which kills without
    cleanup); a handler someone else installed (submitit's, in SLURM jobs) is left alone. Returns the
    handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return None
    return signal.signal(signal.SIGTERM, _sigterm_to_exception)


def _report_interruption(record: dict | None, signal_name: str = "Ctrl-C") -> None:
    """One line for a run stopped by Ctrl-C or SIGTERM, saying where to continue from; exit 130 / 143.
    `record`: the fit's InterruptionRecord, None when it was stopped outside a fit (by `signal_name`)."""
    from vla_hydra.cluster.launcher import requeued_by_slurm

    signal_name = record["signal"] if record else signal_name
    code = 143 if signal_name == "SIGTERM" else 130
    requeued = code == 143 and requeued_by_slurm()
    line = _interruption_line(record, signal_name, requeued)
    if requeued:
        # not a failure: the job starts again and continues (cluster.auto_resume); the ERROR "terminated"
        # line read as one in the run's train.log
        from vla_hydra.core.logging import get_logger

        get_logger("vla_hydra").warning(line)
        raise SystemExit(code)
    print(f"{_sweep_job_prefix()}{line}", file=sys.stderr, flush=True)
    _record_in_job_log(line)
    raise SystemExit(code)


def _interruption_line(record: dict | None, signal_name: str, requeued: bool) -> str:
    """What the interruption did and where the run continues from: a `ckpt_path=` to pass, or (a SIGTERM
    that SLURM follows with a requeue) what the requeued job starts from."""
    if requeued:
        head = "preempted (SIGTERM, requeued by SLURM)"
    else:
        head = f"{'interrupted' if signal_name == 'Ctrl-C' else 'terminated'} ({signal_name})"
    if record is None:
        return f"{head} outside training: the job starts again" if requeued else head
    if record["saved"]:
        what_next = (
            "the requeued job continues from it"
            if requeued
            else f"continue with {_continuation(record['checkpoint'])}"
        )
        where = f"saved {record['checkpoint']}: {what_next}"
    elif record["checkpoint"]:
        at = f" (update {record['checkpoint_step']})" if record.get("checkpoint_step") is not None else ""
        where = (
            f"the requeued job continues from its last checkpoint{at}"
            if requeued
            else f"continue from its last checkpoint{at} with {_continuation(record['checkpoint'])}"
        )
    else:
        where = "no checkpoint had been saved yet" + (": the requeued job starts over" if requeued else "")
    return f"{head} at update {record['step']}; {where}"


def _continuation(checkpoint: str) -> str:
    """`ckpt_path=<checkpoint>`; in a Hydra run, the whole command that continues the run in its dir (the
    checkpoint alone is refused without the run's own algo=, data=, ...)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return f"ckpt_path={checkpoint}"
    from hydra.types import RunMode

    from vla_hydra.cli.run_dirs import continue_command

    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    return continue_command(
        Path(hydra.runtime.output_dir), checkpoint, overrides, hydra.mode == RunMode.MULTIRUN
    )
