"""Callbacks: periodic policy evaluation in the env, throughput/start-up timing, progress display."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import psutil
from lightning.pytorch.callbacks import ModelCheckpoint

from vla_hydra.core.logging import get_logger
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.envs.factory import EnvFactory
from vla_hydra.training.sharding import gathered_weights, prepare_sharded_forward, weights_sharded

log = get_logger(__name__)


def is_interactive() -> bool:
    """A terminal is attached: show a live progress bar; otherwise keep logs to one line per eval."""
    return sys.stdout.isatty()


def progress_bar(refresh_rate: int = 1):
    """Rich progress bar in a terminal; None (no bar) in non-interactive logs."""
    if not is_interactive():
        return None
    from lightning.pytorch.callbacks import RichProgressBar

    class TrainingProgressBar(RichProgressBar):
        """Adds gradient updates, updates/s and the latest eval return to the bar's metrics."""

        def on_train_start(self, trainer, pl_module):
            super().on_train_start(trainer, pl_module)
            self._t0, self._step0 = time.perf_counter(), trainer.global_step

        # The bar counts the run's budget, not the dataloader's batches: one Lightning step is a block of
        # updates (or env steps), and an "epoch" of data.steps_per_epoch blocks means nothing to the user
        @property
        def total_train_batches(self):
            module = self.trainer.lightning_module
            if hasattr(module, "total_timesteps"):
                return int(module.total_timesteps)
            return self.trainer.max_steps if self.trainer.max_steps > 0 else float("inf")

        def _budget_done(self, trainer, pl_module) -> int:
            return int(pl_module.env_steps) if hasattr(pl_module, "total_timesteps") else trainer.global_step

        def _get_train_description(self, current_epoch: int) -> str:
            online = hasattr(self.trainer.lightning_module, "total_timesteps")
            return "env steps" if online else "updates"

        def on_train_epoch_start(self, trainer, pl_module):
            if self.train_progress_bar_id is None:  # one bar for the whole run: never reset per epoch
                super().on_train_epoch_start(trainer, pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not self.is_disabled and self.train_progress_bar_id is None:
                self._initialize_train_progress_bar_id()  # a run resumed mid-epoch
            self._update(self.train_progress_bar_id, self._budget_done(trainer, pl_module))
            self._update_metrics(trainer, pl_module)
            self.refresh()

        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            if hasattr(pl_module, "total_timesteps"):  # the bar counts env steps: show the updates here
                metrics["updates"] = str(trainer.global_step)
            elapsed = time.perf_counter() - getattr(self, "_t0", time.perf_counter())
            if elapsed > 0:
                metrics["updates/s"] = f"{(trainer.global_step - self._step0) / elapsed:.0f}"
            for callback in trainer.callbacks:
                if isinstance(callback, PolicyEvaluation) and callback.history:
                    metrics["eval_return"] = f"{callback.history[-1]['eval/return_mean']:.1f}"
            return metrics

    return TrainingProgressBar(refresh_rate=refresh_rate)


def next_multiple(step: int, every: int) -> int:
    """The first multiple of `every` after `step`. Evaluations and checkpoints run on this fixed grid (not
    `step + every`): one Lightning step may cross a multiple without landing on it, and a run resumed
    mid-way (a requeued SLURM job at update 2200) keeps the schedule of its uninterrupted twin."""
    return (step // every + 1) * every


class PolicyEvaluation(L.Callback):
    """Every `every_n_updates` gradient updates, run `episodes` env episodes and log eval/* metrics.

    best_checkpoint: if set, a path where the policy with the highest periodic eval return so far is
        saved (an inference checkpoint: weights + metadata, loadable by vla_hydra.eval/collect). RL
        policies often get worse again later in training (SAC on Hopper swings by thousands), and the
        best one is what a behaviour or expert policy should be. The best return so far is saved in
        the training checkpoint, so a resumed run only replaces the file with a better policy (a run
        resumed into a new dir starts from a copy of the earlier best file).

    The evaluation history travels in training checkpoints too: a resumed run's results.json holds the
    whole curve, evaluated at the same steps (multiples of every_n_updates) as an uninterrupted run's.
    """

    def __init__(
        self,
        env: EnvFactory,
        every_n_updates: int = 2000,
        episodes: int = 10,
        seed: int = 1000,
        at_start: bool = True,
        best_checkpoint: str | None = None,
    ):
        self.env, self.every_n_updates, self.episodes, self.seed = env, every_n_updates, episodes, seed
        self.at_start = at_start
        self.best_checkpoint = best_checkpoint
        self.best: dict | None = None  # the history entry of the best evaluation so far
        self.seconds_spent = 0.0
        self.cpu_seconds_spent = 0.0
        self.history: list[dict] = []
        self._next_eval = 0
        self._best_written_to: str | None = None  # where the best file was last written

    def state_dict(self) -> dict:
        return {"best": self.best, "history": list(self.history), "best_written_to": self._best_written_to}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
        self.history = list(state_dict.get("history", []))
        self._best_written_to = state_dict.get("best_written_to")

    def _carry_best_file(self, trainer) -> None:
        """A run resumed into another dir: its best_checkpoint starts as a copy of the earlier best file
        (the restored best return gates what replaces it)."""
        if not (self.best and self.best_checkpoint and self._best_written_to) or trainer.global_rank != 0:
            return
        target, earlier = Path(self.best_checkpoint), Path(self._best_written_to)
        if target.exists() or not earlier.is_file() or target.resolve() == earlier.resolve():
            return
        from vla_hydra.core.io import atomic_path

        with atomic_path(target) as tmp:
            shutil.copyfile(earlier, tmp)
        self._best_written_to = str(target.resolve())
        log.info(f"best policy so far (step {self.best['step']}) copied from {earlier} -> {target}")

    def _save_if_best(self, trainer: L.Trainer, pl_module, entry: dict) -> None:
        if self.best is not None and entry["eval/return_mean"] <= self.best["eval/return_mean"]:
            return
        # sharded weights: every rank takes part in gathering them; rank 0 writes
        if trainer.global_rank == 0 or weights_sharded(trainer.strategy):
            with gathered_weights(trainer, pl_module):
                checkpoint = pl_module.inference_checkpoint(trainer.global_step)
            if trainer.global_rank == 0:
                pl_module.save_inference_checkpoint(self.best_checkpoint, trainer.global_step, checkpoint)
                self._best_written_to = str(Path(self.best_checkpoint).resolve())
                log.info(f"best eval return so far -> {self.best_checkpoint}")
        self.best = entry

    def _evaluate(self, trainer: L.Trainer, pl_module) -> None:
        sharded = weights_sharded(trainer.strategy)
        if trainer.global_rank != 0 and not sharded:
            return
        if sharded:
            # each forward gathers parameters collectively (FSDP, ZeRO-3), so every rank runs the same
            # rollouts (same seeds and weights: the same forwards); rank 0 reports
            prepare_sharded_forward(trainer)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = rollout_episodes(  # in eval mode, then back in training mode
            pl_module, self.env, self.episodes, self.seed, ref_returns=pl_module.ref_returns
        )
        metrics = {"eval/return_mean": result.return_mean, "eval/return_std": result.return_std}
        if result.normalized_score is not None:
            metrics["eval/normalized_score"] = result.normalized_score
        env_steps = {"env_steps": int(pl_module.env_steps)} if hasattr(pl_module, "env_steps") else {}
        if self.history and self.history[-1]["step"] == trainer.global_step:
            # a resumed run re-scores the weights its checkpoint's last entry scored: one point per step
            self.history.pop()
        self.history.append({"step": trainer.global_step, **env_steps, **metrics})
        self.seconds_spent += time.perf_counter() - start
        self.cpu_seconds_spent += time.process_time() - cpu_start
        if trainer.global_rank == 0:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            score = (
                f" (normalized {result.normalized_score:.1f})" if result.normalized_score is not None else ""
            )
            if hasattr(pl_module, "total_timesteps"):  # online: the budget is in env steps
                where = (
                    f"env step {int(pl_module.env_steps)}/{pl_module.total_timesteps} "
                    f"(update {trainer.global_step})"
                )
            else:
                max_steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
                where = f"step {trainer.global_step}{max_steps}"
            log.info(f"{where}: eval return {result.return_mean:.1f} ± {result.return_std:.1f}{score}")
        if self.best_checkpoint and not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_if_best(trainer, pl_module, self.history[-1])

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self._next_eval = next_multiple(step, self.every_n_updates)
        self._carry_best_file(trainer)
        # a fresh run's start, or a resume at a scheduled step (re-scoring restored weights replaces the
        # history's entry of that step); a resume between scheduled steps waits for the next one
        if self.at_start and step % self.every_n_updates == 0 and not trainer.sanity_checking:
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self._next_eval:
            self._evaluate(trainer, pl_module)
            self._next_eval = next_multiple(trainer.global_step, self.every_n_updates)


class UpdateCheckpoint(ModelCheckpoint):
    """Saves `last.ckpt` every `every_n_updates` gradient updates and once more when training ends.

    Lightning's every_n_train_steps tests `global_step % n == 0`, but one Lightning step here runs
    `updates_per_step` updates, so global_step jumps and most multiples are never hit; and nothing saves
    the final state when max_steps is not such a multiple. This fires whenever a multiple is crossed.
    """

    def __init__(self, every_n_updates: int = 1000, **kwargs):
        super().__init__(save_last=True, save_top_k=0, every_n_train_steps=0, every_n_epochs=0, **kwargs)
        self.every_n_updates = every_n_updates
        self._next_save = every_n_updates
        # the update last.ckpt holds, when known (an interrupted run's last line names it)
        self.saved_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._next_save = next_multiple(trainer.global_step, self.every_n_updates)
        last = Path(self.dirpath or ".") / "last.ckpt"
        resumed_from_it = bool(trainer.ckpt_path) and Path(trainer.ckpt_path).resolve() == last.resolve()
        self.saved_step = trainer.global_step if resumed_from_it else None
        if resumed_from_it:
            # Lightning restores last_model_path only when the checkpoint names this very dirpath; in a run
            # dir moved or copied since, it saved last-v1.ckpt beside the last.ckpt it continued from
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.saved_step = trainer.global_step

    def _save_last_now(self, trainer) -> None:
        if (
            trainer.sanity_checking
            or trainer.fast_dev_run
            or self._last_global_step_saved == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self._next_save:
            self._save_last_now(trainer)
            self._next_save = next_multiple(trainer.global_step, self.every_n_updates)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_last_now(trainer)


class Throughput(L.Callback):
    """Launch-to-first-step time, gradient updates/s and (online algorithms) env steps/s of the fit loop
    (evaluation time excluded).

    It also carries a continued run's wall time across legs (a resume from `ckpt_path=`, a requeued SLURM
    job): each checkpoint saves the wall seconds of all legs so far, from the checkpoint it continued
    (earlier legs up to their last save) plus this leg's from `leg_start` to the save.

    Args:
        since: wall-clock time (time.time()) the first-step time counts from; None: the process's launch
            (a run's own process). Later jobs of a local sweep share the process: they pass their start.
        leg_start: time.perf_counter() this leg's wall time counts from (results.json's wall_seconds);
            None: now.
        resuming: whether the fit continues a checkpoint; one saved before this callback kept the time
            (no state of its own) leaves the earlier legs' time unknown (None).
    """

    def __init__(self, since: float | None = None, leg_start: float | None = None, resuming: bool = False):
        self.since = since
        self.leg_start = time.perf_counter() if leg_start is None else leg_start
        # wall seconds of the earlier legs, up to the checkpoint this leg continues: 0 for a new run
        self.earlier_legs_seconds: float | None = None if resuming else 0.0
        self.time_to_first_step_s: float | None = None
        self.updates_per_s: float | None = None
        self.env_steps_per_s: float | None = None
        # per second of this process's CPU time: robust to other load on a shared machine
        self.updates_per_cpu_s: float | None = None
        self.env_steps_per_cpu_s: float | None = None
        self._start_time = self._start_step = self._start_env_steps = None

    def wall_seconds_all_legs(self, leg_seconds: float | None = None) -> float | None:
        """The earlier legs' wall seconds plus this leg's (`leg_seconds`, default: from leg_start to now);
        None when the earlier legs' are unknown."""
        if self.earlier_legs_seconds is None:
            return None
        if leg_seconds is None:
            leg_seconds = time.perf_counter() - self.leg_start
        return self.earlier_legs_seconds + leg_seconds

    def state_dict(self) -> dict[str, Any]:
        return {"wall_seconds_all_legs": self.wall_seconds_all_legs()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        earlier = state_dict.get("wall_seconds_all_legs")
        self.earlier_legs_seconds = None if earlier is None else float(earlier)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.time_to_first_step_s is None:
            since = self.since if self.since is not None else psutil.Process().create_time()
            self.time_to_first_step_s = time.time() - since

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the rates are steady-state: timed from the end of the first step, whose one-off costs
        # (lazy imports, optimizer state allocation) are part of time_to_first_step instead
        if self._start_time is None:
            self._start_time, self._start_step = time.perf_counter(), trainer.global_step
            self._start_env_steps = int(getattr(pl_module, "env_steps", 0))
            self._eval_seconds_at_start = self._eval_seconds(trainer)
            self._start_cpu = time.process_time()
            self._eval_cpu_seconds_at_start = self._eval_seconds(trainer, "cpu_seconds_spent")

    @staticmethod
    def _eval_seconds(trainer, attribute: str = "seconds_spent") -> float:
        return sum(getattr(cb, attribute, 0.0) for cb in trainer.callbacks)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._start_time is None:
            return  # no Lightning step completed: nothing was timed (the rates stay null)
        updates = trainer.global_step - self._start_step
        online = hasattr(pl_module, "env_steps")
        env_steps = int(pl_module.env_steps) - self._start_env_steps if online else 0
        # an online run inside its random warm-up (SAC's learning_starts) steps the env without updating:
        # its env-step rate is still measured; without either there is no steady-state interval to time
        if updates == 0 and env_steps == 0:
            return
        if pl_module.device.type == "cuda":
            import torch

            torch.cuda.synchronize()  # count queued GPU work in the timing
        eval_seconds = self._eval_seconds(trainer) - self._eval_seconds_at_start
        elapsed = time.perf_counter() - self._start_time - eval_seconds
        cpu = time.process_time() - self._start_cpu
        cpu -= self._eval_seconds(trainer, "cpu_seconds_spent") - self._eval_cpu_seconds_at_start
        self.updates_per_s = updates / max(elapsed, 1e-9)
        self.updates_per_cpu_s = updates / max(cpu, 1e-9)
        metrics = {"perf/updates_per_s": self.updates_per_s}
        if online:
            self.env_steps_per_s = env_steps / max(elapsed, 1e-9)
            self.env_steps_per_cpu_s = env_steps / max(cpu, 1e-9)
            metrics["perf/env_steps_per_s"] = self.env_steps_per_s
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class InterruptionRecord(L.Callback):
    """What ended a fit early, for the command's last line (vla_hydra.cli.entry.run_cli): Ctrl-C or SIGTERM,
    at which update, and the checkpoint to continue from.

    SIGTERM reaches the loop at a step boundary (Lightning raises it there), so on one process the state
    is consistent and `last.ckpt` is saved first; a Ctrl-C can land inside an update block, so nothing is
    saved and the last periodic checkpoint is named instead.
    """

    last: dict | None = None  # the latest interruption in this process (cleared by each fit)

    def on_fit_start(self, trainer, pl_module) -> None:
        InterruptionRecord.last = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        checkpoint = next(
            (
                Path(cb.dirpath) / "last.ckpt"
                for cb in trainer.callbacks
                if isinstance(cb, ModelCheckpoint) and cb.dirpath
            ),
            None,
        )
        saved = False
        if isinstance(exception, SIGTERMException) and checkpoint is not None and trainer.world_size == 1:
            trainer.save_checkpoint(checkpoint, weights_only=False)
            saved = True
        saved_step = next(
            (cb.saved_step for cb in trainer.callbacks if isinstance(cb, UpdateCheckpoint)), None
        )
        InterruptionRecord.last = {
            "signal": "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C",
            "step": int(trainer.global_step),
            "checkpoint": str(checkpoint) if checkpoint is not None and checkpoint.is_file() else None,
            "checkpoint_step": int(trainer.global_step) if saved else saved_step,
            "saved": saved,
        }
