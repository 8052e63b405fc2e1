"""The scheduler's warning signal during a job's start-up: held until the job can act on it cleanly.

SLURM sends its time-limit warning (`--signal=USR2@<signal_delay_s>`, set by submitit) whenever the limit
comes near, also while a job is still starting. submitit's handler requeues the job and raises SystemExit
wherever the process is: inside an import (a job imports torch and Lightning at start-up) that left a
partially initialised module behind, and the job failed on an AttributeError instead of being requeued.
So the job side holds the signal from its start (`hold_warning_signal`, light: no torch/Lightning here):
it is only recorded. Training takes it over as its fit starts (`PreemptionCheckpoint` saves at the first
step boundary and hands it to submitit); a re-evaluation hands it on once it is set up
(`release_warning_signal(hand_on=True)`). One still held when the job's task ends is dropped: the work
is done and a requeue would only run it again.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from vla_hydra.core.logging import get_logger

log = get_logger(__name__)

# the hold of this process: the signal held, the handler it replaced (submitit's), what arrived meanwhile
_hold: dict[str, Any] = {"signum": None, "handler": None, "received": None}


def submitit_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send (submitit reads SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


def _record(signum: int, frame: Any) -> None:
    _hold["received"] = signum


def hold_warning_signal() -> None:
    """From now on the warning signal is only recorded (main thread only: Python's signal handlers are)."""
    if threading.current_thread() is not threading.main_thread() or _hold["signum"] is not None:
        return
    signum = submitit_signal()
    _hold.update(signum=signum, handler=signal.getsignal(signum), received=None)
    signal.signal(signum, _record)


def take_held_signal(signum: int) -> tuple[Callable | int | None, int | None] | None:
    """For the code that installs its own handler for `signum` first: ends the hold and returns (the
    handler the hold replaced, the signal received while held or None); None when `signum` is not held."""
    if _hold["signum"] != signum:
        return None
    handler, received = _hold["handler"], _hold["received"]
    _hold.update(signum=None, handler=None, received=None)
    return handler, received


def release_warning_signal(hand_on: bool = False) -> None:
    """End the hold: the replaced handler is back. A signal received meanwhile is re-delivered to it
    (`hand_on`: submitit requeues the job and exits from here) or else dropped, with a line saying so."""
    signum = _hold["signum"]
    if signum is None:
        return
    handler, received = take_held_signal(signum)
    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if received is None:
        return
    name = signal.Signals(received).name
    if hand_on:
        log.info(f"{name} arrived during start-up: handing it on now")
        os.kill(os.getpid(), received)
    else:
        log.warning(
            f"{name} (the scheduler's time-limit warning) arrived while the job ran outside training: "
            "it finished its work instead of being requeued"
        )
