"""Resume so that the continuation equals the uninterrupted run.

Lightning restores weights, optimizer state and step counters, but not the minibatch sampler (its
generator is reseeded when the dataloader is built) nor the global RNGs. `ResumeState` stores in every
checkpoint how many training batches were consumed and the global RNG states; on resume it advances the
sampler by that many draws and restores the RNGs. Draws are replayed rather than the generator state
saved because Lightning prefetches one batch: at any hook the generator is already one draw ahead of
what training consumed.
"""

from __future__ import annotations

import os
import warnings
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from vla_hydra.core.checkpoints import RUN_DIR_CHECKPOINT, check_run_checkpoint, is_deepspeed_checkpoint
from vla_hydra.core.exceptions import CheckpointError
from vla_hydra.core.logging import get_logger
from vla_hydra.core.runtime import all_gather_objects, decorrelate_rngs, get_rng_states, set_rng_states

log = get_logger(__name__)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint `trainer.fit` starts from.

    With `cluster.auto_resume` (cluster=slurm) a job that finds its own run dir's `last.ckpt` is a
    requeued job (run dirs are new for every launch) and continues from it; otherwise `ckpt_path`
    (`last`: this run dir's checkpoints/last.ckpt). A run dir that already holds a finished run's
    results.json is refused unless the run continues from a checkpoint: nothing earlier is overwritten.
    """
    own = run_dir / RUN_DIR_CHECKPOINT
    cluster = cfg.get("cluster") or {}
    if cluster.get("auto_resume") and (own.is_file() or is_deepspeed_checkpoint(own)):
        # a requeued job never got to its results.json; a run dir that has one is a finished run that
        # a new sweep (the same hydra.sweep.dir again) must not retrain and overwrite
        refuse_finished_run_dir(run_dir)
        log.info(f"resuming the requeued job from {own}")
        return str(own)
    path = cfg.get("ckpt_path")
    if path is None:
        refuse_finished_run_dir(run_dir)
        refuse_unfinished_run_dir(run_dir)
        return None
    path = str(path)
    if path == "last":
        if not (own.is_file() or is_deepspeed_checkpoint(own)):
            raise CheckpointError(
                f"ckpt_path=last: no checkpoint at {own} (this run's dir); pass a checkpoint file"
            )
        return str(own)
    check_run_checkpoint(cfg)  # before any data is collected or trained on, not when Lightning reads it
    refuse_another_runs_dir(run_dir, path)
    return path


def finished_before_requeue(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The results of a requeued SLURM job whose run had already finished, else None.

    A requeue or pre-emption signal that arrives outside the fit (during start-up or the final evaluation)
    meets submitit's handler, which lets the job go on: it can finish and write results.json before SLURM
    kills it, and SLURM then starts it again. That restart used to be refused as a new run into a finished
    run's dir: the job ended FAILED and its submitit result, read by the launcher and `report`, was
    replaced by that failure. Its work is done: it hands back the run's results instead."""
    import json

    results = Path(run_dir) / "results.json"
    cluster = cfg.get("cluster") or {}
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if not (cluster.get("auto_resume") and restarts > 0 and results.is_file()):
        return None
    return json.loads(results.read_text())


class RunDirLock:
    """An exclusive flock on the run dir itself (no lock file): held until close() or the process ends,
    however it ends."""

    def __init__(self, run_dir: Path):
        import fcntl

        self.fd = os.open(run_dir, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)


def lock_run_dir(run_dir: Path) -> RunDirLock:
    """Lock `run_dir` for this process's run. Two runs into one dir used to overwrite each other's results
    and interleave one metrics.csv; the second is now refused in one line."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    try:
        return RunDirLock(Path(run_dir))
    except BlockingIOError:
        raise CheckpointError(
            f"run dir {run_dir} is in use by another running process; wait for it or choose another "
            "hydra.run.dir"
        ) from None


def refuse_run_dir_in_use(run_dir: Path) -> None:
    """The same refusal before Hydra writes into an existing dir (test, then release)."""
    if Path(run_dir).is_dir():
        lock_run_dir(run_dir).close()


def refuse_unfinished_run_dir(run_dir: Path) -> None:
    """A fresh run may not start over in the dir of an interrupted one either: it would append a second
    step history to its metrics.csv and leave its last.ckpt beside results that are not from it."""
    own = Path(run_dir) / RUN_DIR_CHECKPOINT
    if own.is_file() or is_deepspeed_checkpoint(own):
        from vla_hydra.cli.run_dirs import continue_command_of

        # the whole command: `ckpt_path=` alone is refused as another algo= or continues in a new dir
        raise CheckpointError(
            f"run dir {run_dir} holds an unfinished run ({RUN_DIR_CHECKPOINT}); continue it with "
            f"{continue_command_of(run_dir)}, or choose another hydra.run.dir"
        )


# what continuing a finished run takes besides its own command
_LARGER_BUDGET = " and a larger trainer.max_steps (online algos: algo.total_timesteps)"


def refuse_finished_run_dir(run_dir: Path) -> None:
    """A fresh run may not write into the dir of a finished one (its results.json, logs and config would
    be replaced); continuing that run from its checkpoint may."""
    if (Path(run_dir) / "results.json").is_file():
        from vla_hydra.cli.run_dirs import continue_command_of

        raise CheckpointError(
            f"run dir {run_dir} holds a finished run (results.json); choose another hydra.run.dir / "
            f"hydra.sweep.dir, or continue that run with {continue_command_of(run_dir)}{_LARGER_BUDGET}"
        )


def refuse_another_runs_dir(run_dir: Path, ckpt_path: str) -> None:
    """A continuation (`ckpt_path=<A's checkpoint> hydra.run.dir=<B>`) may write into the dir of an existing
    run only to continue that very run: into another run's dir it replaced B's results.json, config and
    metrics with A's continuation (and put a last-v1.ckpt beside B's last.ckpt)."""
    run_dir = Path(run_dir)
    held = [name for name in ("results.json", RUN_DIR_CHECKPOINT.as_posix()) if (run_dir / name).exists()]
    if not held or ckpt_path == "last" or "${" in ckpt_path:
        return  # nothing there to lose; `last` is the run dir's own checkpoint
    if Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
        return
    from vla_hydra.cli.run_dirs import continue_command_of

    raise CheckpointError(
        f"ckpt_path={ckpt_path}: run dir {run_dir} holds another run ({', '.join(held)}), which this "
        f"continuation would replace; choose another hydra.run.dir (or continue that run with "
        f"{continue_command_of(run_dir)}{_LARGER_BUDGET if 'results.json' in held else ''})"
    )


# algo.* keys whose change is how a run is extended (an online run's env-step budget), not a change of method
BUDGET_KEYS = ("total_timesteps", "max_updates")


def check_resumable(
    ckpt_path: str,
    algo,
    max_steps: int = -1,
    dataset_name: str | None = None,
    seed: int | None = None,
    algo_settings: dict | None = None,
) -> None:
    """Fail in one line, before training, when `ckpt_path` cannot continue into `algo`: an inference-only
    file (no optimizer/loop state), another algorithm, another dataset (`dataset_name`: its normalisation
    statistics and reward scale stay the checkpoint's), or weights of other shapes (another model= or
    env). Warn when `max_steps` (trainer.max_steps) is already behind the checkpoint, and when `seed`
    differs from the seed of the run that wrote it (the minibatch sampler is reseeded from it, so the
    continuation is not that run's: `ckpt_path=` without the run's `seed=` used to pass silently), and name
    the `algo_settings` (the resolved algo.* config) that differ from that run's: what depends on them
    (IQL's actor-lr cosine over algo.actor_lr_decay_updates) continues on the new values, e.g. a stretched
    schedule whose lr rises again. A larger budget (BUDGET_KEYS) is the usual continuation: not named."""
    from vla_hydra.algos.base import CHECKPOINT_KEY

    try:
        # read in full (not mmap): a corrupted tensor record fails here, in one line, not inside Lightning
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"ckpt_path={ckpt_path}: not a readable torch checkpoint ({err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"ckpt_path={ckpt_path}: not a Lightning checkpoint (no state_dict)")
    if "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: an inference-only checkpoint (eval export= or a best-policy file): "
            "it has no optimizer or loop state to resume; resume from a run's checkpoints/last.ckpt"
        )
    meta = checkpoint.get(CHECKPOINT_KEY) or {}
    name = algo.short_name()
    if meta.get("algo") and meta["algo"] != name:
        raise CheckpointError(f"ckpt_path={ckpt_path}: a checkpoint of algo={meta['algo']}, not algo={name}")
    trained_in = (meta.get("env_spec") or {}).get("env_id")
    if trained_in and trained_in != algo.spec.env_id:
        from vla_hydra.envs.factory import env_choice_hint

        raise CheckpointError(
            f"ckpt_path={ckpt_path}: trained in {trained_in}, but this run's env is {algo.spec.env_id}; "
            f"resume with {env_choice_hint(trained_in)}"
        )
    trained_on = meta.get("dataset_name")
    if trained_on and dataset_name and trained_on != dataset_name:
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: trained on dataset {trained_on}, but this run's data is {dataset_name} "
            "(the checkpoint's normalisation statistics belong to its dataset); resume with the data= of "
            "the run that wrote it, or start a new run to train on this one"
        )
    expected = {k: tuple(v.shape) for k, v in algo.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    problems = [f"{k} missing" for k in expected if k not in saved]
    problems += [f"{k} unexpected" for k in saved if k not in expected]
    problems += [f"{k}: {saved[k]} in the checkpoint, {shape} here" for k, shape in expected.items()
                 if k in saved and saved[k] != shape]  # fmt: skip
    if problems:
        # algo=ppo and algo=ppo_continuous are one class (the check above passes): the choice is named
        written_by, chosen = meta.get("algo_choice"), getattr(algo, "algo_choice", None)
        other_choice = (
            f"algo={written_by} (not {chosen}) and the "
            if written_by and chosen and chosen != written_by
            else ""
        )
        # an algo option that shapes the networks (algo.critic_hidden_dims, GRPO's algo.kl_coef > 0 adding a
        # reference policy) was blamed on model=/data=/env=
        # (another algo= choice differs in many: that choice is named instead)
        changed = (
            []
            if other_choice
            else _changed_algo_settings(algo_settings, (meta.get("config") or {}).get("algo"))
        )
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: its weights do not fit this config ({problems[0]}"
            + (f"; {len(problems) - 1} more" if len(problems) > 1 else "")
            + f"): resume with the {other_choice}model=/data=/env= settings of the run that wrote it"
            + (f" and its algo settings ({'; '.join(changed)})" if changed else "")
        )
    trained_config = meta.get("config") or {}
    trained_seed = trained_config.get("seed")
    if seed is not None and trained_seed is not None and int(trained_seed) != int(seed):
        log.warning(
            f"seed={seed}, but the run that wrote ckpt_path={ckpt_path} had seed={trained_seed}: this "
            "continuation draws other samples (minibatches, env resets) than that run would (and "
            f"results.json records seed {seed}); add seed={trained_seed} to continue it exactly"
        )
    changed = _changed_algo_settings(algo_settings, trained_config.get("algo"))
    if changed:
        log.warning(
            f"continuing ckpt_path={ckpt_path} with algo settings other than its run's ({'; '.join(changed)}): "
            "what depends on them (learning-rate schedules, budgets) continues on the new values"
        )
    step = int(checkpoint.get("global_step", 0))
    if 0 < max_steps < step:  # 0: experiment=eval's "restore and evaluate only"
        log.warning(
            f"trainer.max_steps={max_steps} is behind the checkpoint's step {step}: no training, the "
            "checkpoint's weights are evaluated as they are"
        )
    elif step > 0:  # a continuation said as such (an online one showed only in its budget and results)
        env_steps = checkpoint["state_dict"].get("env_steps")
        log.info(
            f"continuing ckpt_path={ckpt_path} from update {step}"
            + (f", env step {int(env_steps)}" if env_steps is not None else "")
        )


def _changed_algo_settings(algo_settings: dict | None, trained_algo: Any) -> list[str]:
    """`algo.<key>: <the checkpoint run's> -> <this run's>` for each algo.* option that differs, the
    budget (BUDGET_KEYS) aside."""
    if algo_settings is None or not isinstance(trained_algo, dict):
        return []
    return [
        f"algo.{key}: {trained_algo[key]!r} -> {value!r}"
        for key, value in algo_settings.items()
        if key in trained_algo
        and key not in BUDGET_KEYS
        and key != "seed"  # online algos' copy of the top-level seed (`${seed}`): said apart
        and value is not None  # unset: filled in at fit start as it was (DT's target_return)
        and not isinstance(value, dict)
        and value != trained_algo[key]
    ]


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
        # every save of a multi-process run is collective (Lightning dumps the checkpoint on every rank, rank
        # 0 writes it). Each rank draws its own numbers (decorrelate_rngs), so every rank's states are kept:
        # with rank 0's alone, a resumed rank r continued from rank 0's reseeded, not from its own stream
        return {
            "batches_consumed": self.batches_consumed,
            "rng_by_rank": all_gather_objects(get_rng_states()),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict
        self.batches_consumed = int(state_dict["batches_consumed"])
        # Lightning then warns that a mid-epoch resume with a non-resumable dataloader is unreliable: this
        # callback positions the sampler itself (on_train_start), so the stream continues exactly
        warnings.filterwarnings(
            "ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*"
        )

    def on_train_start(self, trainer, pl_module) -> None:
        # before the loop's first fetch: the sampler still sits at its seed
        if not self._restored or not self.batches_consumed:
            return
        # (online algorithms' ticks, data=rollouts, are a plain iterator: nothing to position)
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if isinstance(dataset, torch.utils.data.IterableDataset):
            # a block that trainer.max_steps cut short is drawn again: its rest is trained first
            drawn = advance_iterable(dataset, self.batches_consumed - bool(pl_module.updates_into_block()))
            log.info(f"resume: sampler advanced past the {drawn} batches already trained on")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # RNGs are restored at the first step, after every on_train_start hook (e.g. the evaluation at start)
        if self._restored is None:
            return
        restored, self._restored = self._restored, None
        # checkpoints written before rng_by_rank hold rank 0's states as "rng"
        by_rank = restored.get("rng_by_rank") or [restored["rng"]]
        if len(by_rank) == trainer.world_size:  # the same number of processes: each continues its own
            set_rng_states(by_rank[trainer.global_rank])
            return
        set_rng_states(by_rank[0])  # another number of processes (or an older checkpoint): rank 0's
        if trainer.world_size > 1:  # ... reseeded per rank, or every rank would draw the same numbers
            decorrelate_rngs(trainer.global_rank)
