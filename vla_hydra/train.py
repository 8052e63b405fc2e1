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

from vla_hydra.cli.entry import run_cli
from vla_hydra.cli.errors import one_line_hydra_errors
from vla_hydra.cli.job import hydra_choice
from vla_hydra.cli.overrides import refuse_unread_additions
from vla_hydra.cli.run_dirs import continuation_started
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


def _scoring_references(cfg: DictConfig, env, datamodule) -> dict[str, float] | None:
    """The reference returns of normalized scores, None (and a warning) when the only ones there are
    were measured on episodes of another length than this run's evaluation episodes."""
    from vla_hydra.core.logging import get_logger
    from vla_hydra.envs.factory import references_of_another_env, registered_time_limit

    references = datamodule.reference_returns(env.ref_returns, env.time_limit)
    published = cfg.env.get("ref_returns")
    other_env = references_of_another_env(published, env.id) if published else None
    if references is None and other_env:
        get_logger(__name__).warning(
            f"no normalized scores: env.ref_returns are {other_env}'s published returns, not {env.id}'s "
            "(env.id changed, env.ref_returns not); give this env's as env.ref_returns='{random: R, expert: R}'"
        )
    elif references is None and (published or getattr(datamodule, "ref_returns", None)):
        measured_at = getattr(datamodule, "reference_time_limit", None) or registered_time_limit(env.id)
        get_logger(__name__).warning(
            f"no normalized scores: the reference returns are for {measured_at}-step episodes, this run's "
            f"end at {env.time_limit} steps (env.max_episode_steps)"
        )
    return references


def _train(
    cfg: DictConfig, first_run_in_process: bool, started_at: float
) -> tuple[float | None, dict[str, Any]]:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    from vla_hydra.cluster.preemption import PreemptionCheckpoint
    from vla_hydra.cluster.resume import finished_before_requeue, resume_checkpoint
    from vla_hydra.cluster.warning_signal import release_warning_signal
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.core.io import remove_empty_dirs, write_json_atomic
    from vla_hydra.core.logging import get_logger, silence_known_warnings
    from vla_hydra.core.runtime import seed_everything, set_torch_threads
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.training.callbacks import InterruptionRecord, PolicyEvaluation, Throughput
    from vla_hydra.training.checks import (
        check_output_paths,
        refuse_a_non_algorithm,
        refuse_local_multiprocess_sweep,
    )
    from vla_hydra.training.loggers import log_final_evaluation, log_run_config
    from vla_hydra.training.sharding import prepare_strategy, weights_sharded
    from vla_hydra.training.trainer import build_trainer, last_checkpoint

    # wall_seconds counts from here: the one-off library imports above (~3 s, paid by the first run of
    # a process only) would make the jobs of one local sweep incomparable
    start = time.perf_counter()
    log = get_logger(__name__)
    silence_known_warnings()
    refuse_a_non_algorithm(cfg.algo)  # before its algo.* options are checked against a constructor
    check_config_values(cfg)
    refuse_unread_additions(cfg)
    refuse_local_multiprocess_sweep(cfg)
    set_torch_threads(cfg.get("torch_threads"))
    seed_everything(cfg.seed)
    output_dir = Path(cfg.paths.output_dir).resolve()
    finished = finished_before_requeue(cfg, output_dir)
    if finished is not None:
        log.info(f"requeued after its run had finished ({output_dir / 'results.json'}): nothing left to do")
        return _optimized_metric(cfg, finished), finished
    if cfg.get("eval_only"):
        from vla_hydra.eval import evaluate_training_run_checkpoint

        results = evaluate_training_run_checkpoint(cfg, output_dir, start)
        return _optimized_metric(cfg, results), results
    ckpt_path = resume_checkpoint(cfg, output_dir)
    env, datamodule, algo = _build_run(cfg, ckpt_path)

    callbacks = instantiate_dict_values(cfg.get("callbacks"), "callbacks", Callback)
    check_output_paths(cfg, callbacks, resuming=ckpt_path is not None)
    # the first run of a process: from its launch (what the user waits for); later sweep jobs: from train()
    throughput = Throughput(
        since=None if first_run_in_process else started_at, leg_start=start, resuming=ckpt_path is not None
    )
    callbacks.append(throughput)
    callbacks.append(InterruptionRecord())  # what stopped a fit early, for the command's last line
    loggers = instantiate_dict_values(cfg.get("logger"), "logger", Logger)
    trainer = build_trainer(cfg.trainer, callbacks, loggers)
    log_run_config(trainer.loggers, algo)
    prepare_strategy(trainer, algo)
    if not any(isinstance(callback, PreemptionCheckpoint) for callback in callbacks):
        release_warning_signal(hand_on=True)  # nothing in the fit takes over a held time-limit warning
    continuation_started()
    try:
        trainer.fit(algo, datamodule=datamodule, ckpt_path=ckpt_path)
    except ConfigError:  # refused as the fit started (e.g. DAgger's expert for another env)
        remove_empty_dirs(output_dir)
        raise
    last_ckpt = last_checkpoint(trainer, callbacks)
    if trainer.global_rank != 0:
        return None, {}  # rank 0 alone evaluates and writes results
    algo.note_training_end(int(cfg.trainer.get("max_steps", -1)), trainer.global_step)

    policy = algo
    if weights_sharded(trainer.strategy) and last_ckpt:
        # FSDP-wrapped / ZeRO-3-partitioned weights are not plain modules after fit: evaluate what
        # was saved (load_policy consolidates it)
        from vla_hydra.eval import load_policy

        policy = load_policy(last_ckpt)[0]
    final = rollout_episodes(policy, env, cfg.eval.episodes, cfg.eval.seed, ref_returns=algo.ref_returns)
    evals = [cb for cb in callbacks if isinstance(cb, PolicyEvaluation)]
    best_checkpoint = evals[0].best_checkpoint if evals and evals[0].best else None
    wall_seconds = time.perf_counter() - start  # this leg's; a continued run's earlier legs are added below
    results = {
        "algo": algo.run_label,
        "env": env.id,
        "dataset": datamodule.name,
        "dataset_path": str(datamodule.path.resolve()) if datamodule.path else None,
        "dataset_transitions": datamodule.num_raw_transitions,
        "seed": int(cfg.seed),
        "train_steps": int(trainer.global_step),
        "env_steps": int(algo.env_steps) if hasattr(algo, "env_steps") else None,
        "wall_seconds": wall_seconds,
        # + the earlier legs' up to the checkpoint this leg continued; null: that checkpoint predates the record
        "wall_seconds_all_legs": throughput.wall_seconds_all_legs(wall_seconds),
        "train_updates_per_s": throughput.updates_per_s,
        # per second of this process's CPU time: comparable across runs on a shared, loaded machine
        "train_updates_per_cpu_s": throughput.updates_per_cpu_s,
        "train_env_steps_per_s": throughput.env_steps_per_s,
        "train_env_steps_per_cpu_s": throughput.env_steps_per_cpu_s,
        "time_to_first_step_s": throughput.time_to_first_step_s,
        **final.to_dict(),
        "eval_history": evals[0].history if evals else [],
        "train_episodes": getattr(algo, "episode_log", []),
        "checkpoint": str(Path(last_ckpt).resolve()) if last_ckpt else None,
        # the best periodic evaluation and its policy (callbacks.policy_eval.best_checkpoint)
        "best_eval": evals[0].best if evals and evals[0].best_checkpoint else None,
        "best_checkpoint": str(Path(best_checkpoint).resolve())
        if best_checkpoint and Path(best_checkpoint).is_file()
        else None,
        "run_dir": str(output_dir),
    }
    write_json_atomic(output_dir / "results.json", results)
    log_final_evaluation(trainer.loggers, final, trainer.global_step, results, cfg.get("optimized_metric"))
    if cfg.eval.get("video"):  # after results.json: a failing video loses no result
        from vla_hydra.envs.video import add_video_to_results

        add_video_to_results(
            algo, env, results, output_dir / "results.json", cfg.eval.video_episodes, cfg.eval.seed
        )
    log.info(final.summary())
    log.info(f"run dir:    {output_dir}")
    # fast_dev_run (debug=fdr) and callbacks.model_checkpoint=null save none
    log.info(f"checkpoint: {results['checkpoint'] or 'none saved (no checkpoint callback, or debug=fdr)'}")
    log.info(f"results:    {output_dir / 'results.json'}")
    return _optimized_metric(cfg, results), results


def _build_run(cfg: DictConfig, ckpt_path: str | None):
    """The env, the datamodule (its data prepared) and the algorithm, each checked against the others
    before the next is built: a dataset is not collected for settings that would be refused."""
    from hydra.utils import get_object, instantiate

    from vla_hydra.cluster.resume import check_resumable
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.training.checks import (
        build_algorithm,
        check_algorithm_class,
        check_data_source,
        check_segment_length,
    )

    env = instantiate(cfg.env)
    spec = env.spec()
    if cfg.eval.get("video"):  # before any data or training: the video is made after training
        from vla_hydra.envs.video import check_can_render

        check_can_render(env, "eval.video=true")
    algo_class = get_object(cfg.algo._target_)
    check_algorithm_class(cfg.algo, algo_class)
    algo_class.check_settings(spec, cfg.algo)
    check_segment_length(cfg, algo_class)
    check_data_source(cfg, algo_class)
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "check_recipe_env"):
        datamodule.check_recipe_env(spec.env_id)
    datamodule.prepare_data()
    if hasattr(datamodule, "use_eval_env"):  # a file without timeouts: its episodes end at this env's limit
        datamodule.use_eval_env(env.id, env.time_limit)
    datamodule.setup("fit")
    datamodule.check_compatible(spec)
    algo = build_algorithm(cfg.algo, spec, instantiate(cfg.model), datamodule.stats())
    algo.algo_choice, algo.dataset_name = hydra_choice("algo"), datamodule.name
    max_steps = int(cfg.trainer.get("max_steps", -1))
    if ckpt_path and Path(ckpt_path).is_file():
        check_resumable(
            ckpt_path,
            algo,
            max_steps,
            dataset_name=datamodule.name,
            seed=int(cfg.seed),
            algo_settings=OmegaConf.to_container(cfg.algo, resolve=True),
        )
    if max_steps < 0 and not hasattr(algo, "total_timesteps"):
        raise ConfigError(
            f"trainer.max_steps={cfg.trainer.max_steps}: algo={algo.short_name()} learns "
            "from a fixed dataset and has no other end; expected a number of gradient updates >= 1"
        )
    algo.run_config = OmegaConf.to_container(cfg, resolve=True)
    algo.ref_returns = _scoring_references(cfg, env, datamodule)
    return env, datamodule, algo


def _optimized_metric(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The value `train` returns to Hydra's sweepers (optimized_metric, a results.json field)."""
    return results.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metric, _ = run_cli(train, cfg)
    return metric


def main() -> None:
    import sys

    from vla_hydra.cli.overrides import read_argv_as_meant
    from vla_hydra.cli.run_dirs import refuse_finished_run_dir_early, undo_refused_continuation

    read_argv_as_meant()
    refuse_finished_run_dir_early(sys.argv[1:])
    with undo_refused_continuation(), one_line_hydra_errors("train"):
        _hydra_main()


if __name__ == "__main__":
    main()
