"""The one training entry point.

    python -m vla_hydra.train                          # BC on the embedded Pendulum dataset
    python -m vla_hydra.train algo=bc seed=1 trainer.max_steps=5000
    python -m vla_hydra.train -m algo=bc seed=0,1       # local sweep, one run dir per job
    python -m vla_hydra.train --help                    # config groups and their choices

Heavy imports (torch, lightning) happen inside `train`, so `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vla_hydra.cli import (
    command_line_overrides,
    continuation_started,
    hydra_job_config,
    one_line_hydra_errors,
    refuse_unread_additions,
    run_cli,
)
from vla_hydra.core.config import CONF_DIR, check_config_values, instantiate_dict_values

# train() calls so far in this process (a local multirun runs its jobs one after another in one process)
_runs_in_this_process = 0


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Fit the configured algorithm, evaluate it, write results.json; return (optimized metric, results)."""
    global _runs_in_this_process
    first_run_in_process = _runs_in_this_process == 0
    _runs_in_this_process += 1
    from lightning.fabric.utilities.rank_zero import _get_rank

    from vla_hydra.cluster.resume import lock_run_dir
    from vla_hydra.training.loggers import finish_wandb_run

    started_at = time.time()
    # one run per run dir; the other processes of a multi-process run (ranks > 0) share rank 0's
    lock = lock_run_dir(Path(cfg.paths.output_dir)) if (_get_rank() or 0) == 0 else None
    failed = True
    try:
        outcome = _train(cfg, first_run_in_process, started_at)
        failed = False
        return outcome
    finally:  # the next job of a local sweep (same process) must get a wandb run of its own
        finish_wandb_run(failed)
        if lock is not None:
            lock.close()


def _check_best_checkpoint_path(path: Path, resuming: bool) -> None:
    """callbacks.policy_eval.best_checkpoint, before training: a file path that can be written, and, for a
    fresh run, not an existing file (another run's best policy, or an earlier job's of the same sweep,
    used to be replaced at the first evaluation). A resumed run replaces its earlier leg's file only with
    a better policy."""
    from vla_hydra.core.exceptions import OutputError
    from vla_hydra.core.io import check_creatable

    option = "callbacks.policy_eval.best_checkpoint"
    if path.is_dir():
        raise OutputError(f"{option}={path}: a directory; expected a file path, e.g. {path / 'best.ckpt'}")
    if path.exists() and not resuming:
        raise OutputError(
            f"{option}={path}: file exists, and a new run (no ckpt_path=) would replace it; delete it or "
            "choose another path, e.g. ${paths.output_dir}/checkpoints/best.ckpt"
        )
    check_creatable(path, option)


def _log_final_evaluation(trainer, final) -> None:
    """The final evaluation (eval.episodes, after training) in the loggers too, at the last update: a wandb
    or TensorBoard user compares runs by it, and it used to be in results.json only."""
    metrics = {
        "final/return_mean": final.return_mean,
        "final/return_std": final.return_std,
        "final/episodes": float(len(final.returns)),
    }
    if final.normalized_score is not None:
        metrics["final/normalized_score"] = final.normalized_score
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


def _scoring_references(cfg: DictConfig, env, datamodule) -> dict[str, float] | None:
    """The reference returns of normalized scores, None (and a warning) when the only ones there are
    were measured on episodes of another length than this run's evaluation episodes."""
    from vla_hydra.core.logging import get_logger
    from vla_hydra.envs.factory import registered_time_limit

    references = datamodule.reference_returns(env.ref_returns, env.time_limit)
    published = cfg.env.get("ref_returns")
    if references is None and (published or getattr(datamodule, "ref_returns", None)):
        measured_at = getattr(datamodule, "reference_time_limit", None) or registered_time_limit(env.id)
        get_logger(__name__).warning(
            f"no normalized scores: the reference returns are for {measured_at}-step episodes, this run's "
            f"end at {env.time_limit} steps (env.max_episode_steps)"
        )
    return references


def _check_segment_length(cfg: DictConfig, algo_class) -> None:
    """Sequence algorithms (DT) train on segments of algo.context_length steps, the others on single
    transitions; data.segment_length follows algo.context_length unless overridden."""
    from vla_hydra.core.exceptions import ConfigError

    segment, context = cfg.data.get("segment_length"), cfg.algo.get("context_length")
    if not getattr(algo_class, "takes_sequences", False):
        if segment is not None:
            raise ConfigError(
                f"data.segment_length={segment}: algo={_algo_choice() or algo_class.short_name()} trains on single "
                "transitions; expected null (segments are for algo=dt)"
            )
    elif segment != context:
        raise ConfigError(
            f"data.segment_length={segment}: algo=dt trains on segments of its algo.context_length={context}; "
            "leave data.segment_length unset (it follows algo.context_length)"
        )


def _check_data_source(cfg: DictConfig, algo_class) -> None:
    """data=rollouts holds no data (it paces the online algorithms, which collect their own): an offline
    algo on it failed with a traceback in its first update. A dataset given to an online algo that reads
    none (algo=sac data=pendulum_mixed) was ignored, while results.json named it as the run's dataset."""
    from hydra.utils import get_object

    from vla_hydra.algos.online import OnlineAlgorithm
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.data.rollouts import RolloutDataModule

    target = cfg.data.get("_target_")
    if not isinstance(target, str):
        return
    built_by = get_object(target)  # a class, or a function that picks one (data=d4rl, data=minari)
    rollouts = isinstance(built_by, type) and issubclass(built_by, RolloutDataModule)
    online = issubclass(algo_class, OnlineAlgorithm)
    hydra_cfg = hydra_job_config()
    data = (hydra_cfg.runtime.choices.get("data") if hydra_cfg is not None else None) or cfg.data.get("name")
    algo = _algo_choice() or algo_class.short_name()
    if rollouts and not online:
        raise ConfigError(
            f"data=rollouts: algo={algo} learns from a dataset, and data=rollouts holds none (it paces the "
            "online algorithms, which collect their own); choose one, e.g. data=pendulum_mixed"
        )
    if not rollouts and online and not algo_class.reads_dataset:
        raise ConfigError(
            f"data={data}: algo={algo} learns only from the experience it collects in env= and would ignore "
            "this dataset; leave data= out (its config selects data=rollouts)"
        )


def _train(
    cfg: DictConfig, first_run_in_process: bool, started_at: float
) -> tuple[float | None, dict[str, Any]]:
    from hydra.utils import get_object, instantiate
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import Logger

    from vla_hydra.cluster.resume import check_resumable, finished_before_requeue, resume_checkpoint
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.core.io import check_creatable, remove_empty_dirs, write_json_atomic
    from vla_hydra.core.logging import get_logger, silence_known_warnings
    from vla_hydra.core.runtime import seed_everything, set_torch_threads
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.training.callbacks import InterruptionRecord, PolicyEvaluation, Throughput
    from vla_hydra.training.sharding import prepare_strategy, weights_sharded

    # wall_seconds counts from here: the one-off library imports above (~3 s, paid by the first run of
    # a process only) would make the jobs of one local sweep incomparable
    start = time.perf_counter()
    log = get_logger(__name__)
    silence_known_warnings()
    check_config_values(cfg)
    refuse_unread_additions(cfg)
    _refuse_local_multiprocess_sweep(cfg)
    set_torch_threads(cfg.get("torch_threads"))
    seed_everything(cfg.seed)
    output_dir = Path(cfg.paths.output_dir).resolve()
    finished = finished_before_requeue(cfg, output_dir)
    if finished is not None:
        log.info(f"requeued after its run had finished ({output_dir / 'results.json'}): nothing left to do")
        return (finished.get(cfg.optimized_metric) if cfg.get("optimized_metric") else None), finished
    if cfg.get("eval_only"):
        return _evaluate_checkpoint(cfg, output_dir, start)
    ckpt_path = resume_checkpoint(cfg, output_dir)

    env = instantiate(cfg.env)
    spec = env.spec()
    algo_class = get_object(cfg.algo._target_)
    if hasattr(algo_class, "check_settings"):
        algo_class.check_settings(spec, cfg.algo)  # before a dataset is collected for nothing
    _check_segment_length(cfg, algo_class)
    _check_data_source(cfg, algo_class)
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "check_recipe_env"):
        datamodule.check_recipe_env(spec.env_id)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.check_compatible(spec)
    algo = instantiate(cfg.algo, _partial_=True)(
        spec=spec, model=instantiate(cfg.model), stats=datamodule.stats()
    )
    if ckpt_path and Path(ckpt_path).is_file():
        check_resumable(ckpt_path, algo, int(cfg.trainer.get("max_steps", -1)), datamodule.name)
    if cfg.trainer.get("max_steps", -1) < 0 and not hasattr(algo, "total_timesteps"):
        raise ConfigError(
            f"trainer.max_steps={cfg.trainer.max_steps}: algo={algo.short_name()} learns "
            "from a fixed dataset and has no other end; expected a number of gradient updates >= 1"
        )
    algo.run_config = OmegaConf.to_container(cfg, resolve=True)
    algo.algo_choice, algo.dataset_name = _algo_choice(), datamodule.name
    algo.ref_returns = _scoring_references(cfg, env, datamodule)

    callbacks = instantiate_dict_values(cfg.get("callbacks"), "callbacks", Callback)
    for callback in callbacks:  # before training, not at its first save (debug=fdr saves nothing)
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and not cfg.trainer.get("fast_dev_run"):
            check_creatable(Path(callback.dirpath) / "last.ckpt", "callbacks.model_checkpoint.dirpath")
        if (
            isinstance(callback, PolicyEvaluation)
            and callback.best_checkpoint
            and not cfg.trainer.get("fast_dev_run")
        ):
            _check_best_checkpoint_path(Path(callback.best_checkpoint), resuming=ckpt_path is not None)
    # the first run of a process: from its launch (what the user waits for); later sweep jobs: from train()
    throughput = Throughput(since=None if first_run_in_process else started_at)
    callbacks.append(throughput)
    callbacks.append(InterruptionRecord())  # what stopped a fit early, for the command's last line
    loggers = instantiate_dict_values(cfg.get("logger"), "logger", Logger)
    trainer = _build_trainer(cfg.trainer, callbacks, loggers)
    prepare_strategy(trainer, algo)
    continuation_started()
    try:
        trainer.fit(algo, datamodule=datamodule, ckpt_path=ckpt_path)
    except ConfigError:  # refused as the fit started (e.g. DAgger's expert for another env)
        remove_empty_dirs(output_dir)
        raise

    # Lightning versions the name (last-v1.ckpt) rather than overwrite a last.ckpt already in the dir
    checkpointing = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    last_ckpt = checkpointing[0].last_model_path if checkpointing else ""
    if (
        checkpointing
        and not last_ckpt
        and checkpointing[0].dirpath
        and not trainer.fast_dev_run  # debug=fdr: a smoke test leaves no checkpoint
    ):
        # no optimizer step happened (e.g. an online budget inside the random warm-up), so Lightning
        # saved nothing: still leave the policy as it is, without replacing an existing file. Every
        # rank takes part (sharded weights are gathered collectively); rank 0's view of the file decides.
        fallback = Path(checkpointing[0].dirpath) / "last.ckpt"
        if not trainer.strategy.broadcast(fallback.exists()):
            trainer.save_checkpoint(fallback, weights_only=False)
            last_ckpt = str(fallback)
    if trainer.global_rank != 0:
        return None, {}  # rank 0 alone evaluates and writes results
    max_steps = int(cfg.trainer.get("max_steps", -1))
    if hasattr(algo, "total_timesteps") and 0 <= max_steps < trainer.global_step:
        # offline blocks are cut at max_steps; an online iteration (rollout + its updates) is not
        log.info(
            f"trainer.max_steps={max_steps}: algo={algo.run_label} updates in whole iterations, "
            f"so it stopped after {trainer.global_step} updates ({int(algo.env_steps)} env steps; "
            f"its budget is algo.total_timesteps={algo.total_timesteps})"
        )
    elif hasattr(algo, "total_timesteps") and algo.env_steps_at_fit_start >= algo.total_timesteps > 0:
        log.warning(
            f"algo.total_timesteps={algo.total_timesteps}: the checkpoint had already run "
            f"{algo.env_steps_at_fit_start} env steps; no training, its policy is evaluated as it is"
        )
    elif hasattr(algo, "total_timesteps") and int(algo.env_steps) > algo.total_timesteps:
        # rollouts are whole (PPO: num_envs x num_steps; GRPO: whole episodes; SAC: one step per env)
        log.info(
            f"algo.total_timesteps={algo.total_timesteps}: algo={algo.run_label} collects in whole rollouts, "
            f"so it ran {int(algo.env_steps)} env steps"
        )
    policy = algo
    if weights_sharded(trainer.strategy) and last_ckpt:
        # FSDP-wrapped / ZeRO-3-partitioned weights are not plain modules after fit: evaluate what
        # was saved (load_policy consolidates it)
        from vla_hydra.eval import load_policy

        policy = load_policy(last_ckpt)[0]
    final = rollout_episodes(policy, env, cfg.eval.episodes, cfg.eval.seed, ref_returns=algo.ref_returns)
    evals = [cb for cb in callbacks if isinstance(cb, PolicyEvaluation)]
    results = {
        "algo": algo.run_label,
        "env": spec.env_id,
        "dataset": datamodule.name,
        "dataset_path": str(datamodule.path.resolve()) if datamodule.path else None,
        "dataset_transitions": datamodule.num_raw_transitions,
        "seed": int(cfg.seed),
        "train_steps": int(trainer.global_step),
        "env_steps": int(algo.env_steps) if hasattr(algo, "env_steps") else None,
        "wall_seconds": time.perf_counter() - start,
        "train_updates_per_s": throughput.updates_per_s,
        "train_env_steps_per_s": throughput.env_steps_per_s,
        "train_env_steps_per_cpu_s": throughput.env_steps_per_cpu_s,
        "time_to_first_step_s": throughput.time_to_first_step_s,
        **final.to_dict(),
        "eval_history": evals[0].history if evals else [],
        "train_episodes": getattr(algo, "episode_log", []),
        "checkpoint": str(Path(last_ckpt).resolve()) if last_ckpt else None,
        # the best periodic evaluation and its policy (callbacks.policy_eval.best_checkpoint)
        "best_eval": evals[0].best if evals and evals[0].best_checkpoint else None,
        "best_checkpoint": str(Path(evals[0].best_checkpoint).resolve())
        if evals and evals[0].best and evals[0].best_checkpoint and Path(evals[0].best_checkpoint).is_file()
        else None,
        "run_dir": str(output_dir),
    }
    write_json_atomic(output_dir / "results.json", results)
    _log_final_evaluation(trainer, final)
    _record_video_if_asked(cfg, algo, env, output_dir, results)
    score = results["normalized_score"]
    log.info(
        f"eval return {final.return_mean:.1f} ± {final.return_std:.1f} over {cfg.eval.episodes} episodes"
        + (f", normalized score {score:.1f}" if score is not None else "")
    )
    log.info(f"run dir:    {output_dir}")
    log.info(f"checkpoint: {results['checkpoint']}")
    log.info(f"results:    {output_dir / 'results.json'}")
    metric = results.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None
    return metric, results


# config groups an eval_only run takes from the checkpoint, not from the command line
_SET_BY_THE_CHECKPOINT = ("algo", "model", "data", "env", "trainer", "callbacks")


def _record_video_if_asked(cfg: DictConfig, policy, env, output_dir: Path, results: dict[str, Any]) -> None:
    """eval.video=true: an mp4 of the policy, written after results.json (a failing video loses no
    result), then named in it."""
    if not cfg.eval.get("video"):
        return
    from vla_hydra.core.io import write_json_atomic
    from vla_hydra.core.logging import get_logger
    from vla_hydra.envs.video import record_video

    get_logger(__name__).info(f"recording {cfg.eval.video_episodes} episode(s) to video (eval.video=true)")
    video = record_video(
        policy, env, output_dir / "videos" / "eval.mp4", cfg.eval.video_episodes, cfg.eval.seed
    )
    results["video"] = video["path"]
    get_logger(__name__).info(f"video:      {video['path']}")
    write_json_atomic(output_dir / "results.json", results)


def _evaluate_checkpoint(
    cfg: DictConfig, output_dir: Path, start: float
) -> tuple[float | None, dict[str, Any]]:
    """`eval_only=true` (experiment=eval): no training. The checkpoint brings its own algorithm, networks
    and env (the config it carries, as for vla_hydra.eval), so one sweep re-evaluates checkpoints of any
    algorithms; results.json has the fields of a training run's, labelled with the run's algo, dataset
    and seed, so vla_hydra.report tables them."""
    from vla_hydra.cluster.resume import refuse_finished_run_dir
    from vla_hydra.core.checkpoints import check_run_checkpoint
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.core.io import write_json_atomic
    from vla_hydra.core.logging import get_logger
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import load_policy

    log = get_logger(__name__)
    for override, key in command_line_overrides():
        if key.split(".")[0] in _SET_BY_THE_CHECKPOINT:
            raise ConfigError(
                f"{override}: eval_only=true evaluates the checkpoint with the algo, model, data and env "
                "it was trained with; only eval.* options apply (vla_hydra.eval takes the same)"
            )
    check_run_checkpoint(cfg)  # the same check as before a cluster submission
    refuse_finished_run_dir(output_dir)
    ckpt_path = Path(str(cfg.ckpt_path)).resolve()
    algo, env, config = load_policy(ckpt_path)
    final = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed, ref_returns=algo.ref_returns)
    data_config = config.get("data") or {}
    results = {
        "algo": algo.run_label,
        "env": env.id,
        "dataset": algo.dataset_name or data_config.get("name") or Path(str(data_config.get("path"))).stem,
        "seed": int(config.get("seed", cfg.seed)),  # the training run's: reports group runs by it
        "train_steps": algo.trained_steps,
        "env_steps": int(algo.env_steps) if hasattr(algo, "env_steps") else None,
        "wall_seconds": time.perf_counter() - start,
        **final.to_dict(),
        "eval_history": [],
        "checkpoint": str(ckpt_path),
        "eval_only": True,
        "run_dir": str(output_dir),
    }
    write_json_atomic(output_dir / "results.json", results)
    _record_video_if_asked(cfg, algo, env, output_dir, results)
    score = results["normalized_score"]
    log.info(
        f"{results['algo']} checkpoint after {results['train_steps']} updates: eval return "
        f"{final.return_mean:.1f} ± {final.return_std:.1f} over {cfg.eval.episodes} episodes"
        + (f", normalized score {score:.1f}" if score is not None else "")
    )
    log.info(f"results:    {output_dir / 'results.json'}")
    metric = results.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None
    return metric, results


def _refuse_local_multiprocess_sweep(cfg: DictConfig) -> None:
    """Lightning starts the extra processes of trainer=ddp/fsdp/deepspeed by re-running the command line:
    in a local multirun (-m, hparams_search=..., cluster=submitit_local) each of them would re-run the
    whole sweep. On SLURM, SLURM starts one task per device instead."""
    from hydra.types import RunMode

    from vla_hydra.core.exceptions import ConfigError

    hydra_cfg = hydra_job_config()
    if (
        hydra_cfg is None
        or hydra_cfg.mode != RunMode.MULTIRUN
        or "SlurmLauncher" in str(hydra_cfg.launcher.get("_target_"))
    ):
        return
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    per_node = len(devices) if OmegaConf.is_list(devices) else devices if isinstance(devices, int) else 1
    if per_node * (nodes if isinstance(nodes, int) else 1) > 1:
        raise ConfigError(
            f"trainer.devices={devices}: a local sweep (-m, hparams_search=, cluster=submitit_local) cannot "
            "run several processes per job; run the jobs one at a time without -m, or use cluster=slurm"
        )


def _algo_choice() -> str | None:
    """The `algo=` choice of a Hydra run (ppo_continuous and ppo are one class, two configs), for results
    and reports; None when train() is called from Python."""
    hydra_cfg = hydra_job_config()
    return hydra_cfg.runtime.choices.get("algo") if hydra_cfg is not None else None


def _build_trainer(trainer_cfg: DictConfig, callbacks: list, loggers: list):
    """The Lightning Trainer; settings Lightning refuses on this machine (a GPU strategy without GPUs,
    more devices than exist) become a one-line ConfigError naming them."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.training.checkpoint_io import use_atomic_checkpoint_io

    # every algorithm steps its own optimizers (Lightning's manual optimization), for which Lightning
    # neither clips nor accumulates gradients: it refused these with a traceback as the fit started
    clip, accumulate = trainer_cfg.get("gradient_clip_val"), trainer_cfg.get("accumulate_grad_batches")
    if clip:
        raise ConfigError(
            f"trainer.gradient_clip_val={clip}: vla_hydra's algorithms step their own optimizers, which "
            "Lightning does not clip; the algos that clip have their own option (algo.max_grad_norm: ppo, "
            "ppo_continuous, grpo, gail; algo.grad_clip: dt)"
        )
    if accumulate not in (None, 1):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate}: vla_hydra's algorithms step their own "
            "optimizers, for which Lightning does not accumulate gradients; use a larger batch "
            "(data.batch_size; online algos: algo.batch_size or algo.num_minibatches)"
        )
    try:
        trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
        use_atomic_checkpoint_io(trainer)
        return trainer
    except InstantiationException as err:
        # MisconfigurationException: a setting this machine cannot run; ValueError/TypeError: a value
        # Lightning does not accept (trainer.precision=fp8, ...); ImportError: an accelerator whose package
        # is not installed (trainer.accelerator=tpu needs torch_xla)
        if not isinstance(err.__cause__, (MisconfigurationException, ValueError, TypeError, ImportError)):
            raise
        strategy = trainer_cfg.get("strategy")
        if isinstance(strategy, DictConfig):
            strategy = str(strategy.get("_target_", "?")).rsplit(".", 1)[-1]
        raise ConfigError(
            f"trainer (accelerator={trainer_cfg.get('accelerator')}, devices={trainer_cfg.get('devices')}, "
            f"strategy={strategy}): Lightning refuses it here: {err.__cause__}"
        ) from err


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metric, _ = run_cli(train, cfg)
    return metric


def main() -> None:
    import sys

    from vla_hydra.cli import refuse_finished_run_dir_early, undo_refused_continuation

    refuse_finished_run_dir_early(sys.argv[1:])
    with undo_refused_continuation(), one_line_hydra_errors("train"):
        _hydra_main()


if __name__ == "__main__":
    main()
