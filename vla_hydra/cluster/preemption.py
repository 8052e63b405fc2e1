"""Pre-emption and time limits: checkpoint at a step boundary, then let submitit requeue the job.

SLURM warns a job with a signal (`--signal=USR2@<signal_delay_s>`, set by submitit) before its time
limit or when it is pre-empted. submitit's own handler requeues the job and exits at once, wherever the
process is: a checkpoint written from inside that handler could capture half a training step. This
callback replaces the handler while training runs: the signal only sets a flag; at the end of the
current step the callback saves `last.ckpt` and re-delivers the signal to the handler it replaced
(submitit's: requeue and exit). The requeued job finds that checkpoint in its run dir
(`cluster.auto_resume`, see `resume.resume_checkpoint`). A signal that arrived before the fit (held since
the job started, `warning_signal`) is acted on at the first step boundary.

Only one mechanism handles the signal: cluster=slurm gives Lightning a `SLURMEnvironment` with
`auto_requeue: false`, so Lightning neither requeues nor listens to SIGUSR1.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L

from vla_hydra.cluster.warning_signal import submitit_signal, take_held_signal
from vla_hydra.core.logging import get_logger

log = get_logger(__name__)


class PreemptionCheckpoint(L.Callback):
    """Turns the scheduler's warning signal into `last.ckpt` at the next step boundary, then hands it on.

    Args:
        dirpath: where `last.ckpt` goes when no checkpoint callback is configured (normally the
            `UpdateCheckpoint` callback writes it, keeping its own bookkeeping consistent).
        signal_name: the signal to catch; default: the one submitit asks SLURM for.
    """

    def __init__(self, dirpath: str | None = None, signal_name: str | None = None):
        self.dirpath = dirpath
        self.signum = signal.Signals[signal_name] if signal_name else submitit_signal()
        self.received: int | None = None
        self._previous = None
        self._installed = False

    def _on_signal(self, signum, frame) -> None:
        self.received = signum

    def on_fit_start(self, trainer, pl_module) -> None:
        self._previous = signal.signal(self.signum, self._on_signal)
        self._installed = True
        # a job holds the signal from its start (warning_signal): one that arrived meanwhile is acted on
        # at the first step boundary, and the handler the hold replaced (submitit's) is the one handed to
        held = take_held_signal(self.signum)
        if held is not None:
            self._previous, arrived = held
            if arrived is not None:
                log.info(f"{signal.Signals(arrived).name} arrived during start-up: saving at the first step")
                self.received = self.received or arrived

    def _uninstall(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def on_fit_end(self, trainer, pl_module) -> None:
        self._uninstall()
        if self.received is not None:  # arrived after the last step: the final checkpoint exists
            self._hand_on()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._uninstall()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = self.received is not None
        if trainer.world_size > 1:  # every rank must reach the (collective) save at the same step
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        self.received = self.received or self.signum
        path = self._save(trainer)
        log.info(
            f"pre-emption signal {signal.Signals(self.received).name}: saved {path} at step {trainer.global_step}"
        )
        self._uninstall()
        self._hand_on()

    def _save(self, trainer) -> str:
        from vla_hydra.training.callbacks import UpdateCheckpoint

        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, UpdateCheckpoint):
                callback._save_last_now(trainer)
                return callback.last_model_path
        path = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        return str(path)

    def _hand_on(self) -> None:
        """Re-deliver the signal to the handler this callback replaced (submitit: requeue, exit)."""
        signum, self.received = self.received, None
        os.kill(os.getpid(), signum)
