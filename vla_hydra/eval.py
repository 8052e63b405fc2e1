"""Re-evaluate a checkpoint in its environment; the training config comes from the checkpoint.

python -m vla_hydra.eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
python -m vla_hydra.eval ckpt_path=... episodes=50 seed=7
python -m vla_hydra.eval ckpt_path=... export=policy.ckpt   # also write a small inference checkpoint
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from vla_hydra.cli.entry import exit_with_error, run_cli
from vla_hydra.cli.errors import one_line_hydra_errors
from vla_hydra.cli.overrides import refuse_unread_additions
from vla_hydra.cluster.warning_signal import release_warning_signal
from vla_hydra.core.config import CONF_DIR, check_config_values
from vla_hydra.core.logging import get_logger

log = get_logger(__name__)


def load_policy(ckpt_path: str | Path, device: str = "cpu", option: str = "ckpt_path"):
    """Rebuild the trained algorithm (networks + normalisation) from a vla_hydra checkpoint.

    Returns (algo, env_factory, config) with algo in eval mode on `device`. `option`: the config key that
    named the file, for error messages (e.g. algo.expert_ckpt).
    """
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vla_hydra.algos.base import CHECKPOINT_KEY
    from vla_hydra.core.checkpoints import checkpoint_in_dir, is_deepspeed_checkpoint
    from vla_hydra.core.exceptions import CheckpointError, VlaHydraError
    from vla_hydra.envs.factory import EnvSpec
    from vla_hydra.training.sharding import load_deepspeed_checkpoint

    if ckpt_path is None or not str(ckpt_path).strip():
        raise CheckpointError(
            f"{option}: empty; expected a checkpoint file, e.g. <run dir>/checkpoints/last.ckpt"
        )
    path = Path(ckpt_path)
    if is_deepspeed_checkpoint(path):  # trainer=deepspeed: a directory of ZeRO shards
        checkpoint = load_deepspeed_checkpoint(path)
    elif path.is_dir():
        raise CheckpointError(
            f"{option}={path}: a directory, not a checkpoint file (nor a DeepSpeed checkpoint "
            f"directory, which holds a 'latest' file); e.g. {checkpoint_in_dir(path)}"
        )
    elif not path.is_file():
        raise CheckpointError(f"{option}={path}: file not found")
    else:
        try:
            checkpoint = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
            detail = " ".join(str(err).split())[:200]
            raise CheckpointError(
                f"{option}={path}: not a readable torch checkpoint ({type(err).__name__}: {detail})"
            ) from err
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not meta or not meta.get("config"):
        raise CheckpointError(
            f"{option}={path}: no '{CHECKPOINT_KEY}' section; was it written by vla_hydra.train?"
        )
    config = OmegaConf.create(meta["config"])
    _refuse_unimportable_packages(config, path, option)
    spec = EnvSpec.from_dict(meta["env_spec"])
    try:
        algo = instantiate(config.algo, _partial_=True)(spec=spec, model=instantiate(config.model))
        algo.load_state_dict(checkpoint["state_dict"])
    except (InstantiationException, TypeError, RuntimeError, KeyError) as err:
        # a checkpoint another version of vla_hydra wrote (a renamed class or argument, other weight
        # names), or an edited one: its config no longer builds, or its weights do not fit, the networks
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if isinstance(cause, VlaHydraError):
            raise
        detail = " ".join(str(cause).split())[:200]
        raise CheckpointError(
            f"{option}={path}: its policy cannot be rebuilt from the config and weights it carries "
            f"({type(cause).__name__}: {detail}); was it written by another version of vla_hydra?"
        ) from err
    algo.ref_returns = meta.get("ref_returns")
    algo.algo_choice, algo.dataset_name = meta.get("algo_choice"), meta.get("dataset_name")
    algo.run_config = meta["config"]  # a checkpoint saved from it again (export=) stays loadable
    algo.trained_steps = int(checkpoint.get("global_step", 0))
    algo.to(device).eval()
    return algo, instantiate(config.env), config


def _refuse_unimportable_packages(config, path: Path, option: str) -> None:
    """A checkpoint of a user's own algorithm, network or env (`algo._target_=my_pkg.algos.MyAlgo`,
    `env.id=my_pkg.envs:MyRobot-v0`) rebuilds only where that package imports: say so in one line, rather
    than suggest the checkpoint came from another version of vla_hydra."""
    import importlib.util

    from omegaconf import OmegaConf

    from vla_hydra.core.exceptions import CheckpointError

    env_id = OmegaConf.select(config, "env.id")
    named = {
        "algo": OmegaConf.select(config, "algo._target_"),
        "model": OmegaConf.select(config, "model._target_"),
        "env": env_id.rpartition(":")[0] if isinstance(env_id, str) else None,
    }
    for node, name in named.items():
        if not isinstance(name, str) or not name:
            continue
        package = name.split(".")[0]
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            what = f"env {env_id}" if node == "env" else f"{node} {name}"
            raise CheckpointError(
                f"{option}={path}: its {what} comes from package '{package}', which is not importable "
                f"here; install it or add its directory to PYTHONPATH"
            )


def _refuse_existing_export(output: str | Path) -> None:
    from vla_hydra.core.exceptions import ConfigError

    if Path(output).is_dir():
        raise ConfigError(
            f"export={output}: a directory; expected a file path, e.g. {Path(output) / 'policy.ckpt'}"
        )
    if Path(output).exists():
        raise ConfigError(f"export={output}: file exists; delete it or choose another path")
    from vla_hydra.core.io import check_writable

    check_writable(output, "export")


def export_policy(ckpt_path: str | Path, output: str | Path, algo=None) -> Path:
    """Write the inference checkpoint of a training checkpoint (weights + what load_policy needs, no
    optimizer, loop or RNG state: about a third of the size) to `output`, atomically; an existing
    file is refused. `algo`: the policy load_policy already returned for `ckpt_path`."""
    _refuse_existing_export(output)
    if algo is None:
        algo, _, _ = load_policy(ckpt_path)
    algo.save_inference_checkpoint(output, algo.trained_steps)
    return Path(output).resolve()


def _weights_sha1(path: Path) -> str:
    """The sha1 of a checkpoint file's bytes, or of a DeepSpeed checkpoint directory's files (their names
    and bytes): what identifies a behaviour policy's weights, wherever they lie."""
    import hashlib

    if not path.is_dir():
        return hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    digest = hashlib.sha1()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


class CheckpointPolicy:
    """A trained checkpoint as a plain obs -> env-action callable, e.g. the behaviour policy of
    `vla_hydra.collect` recipes or an expert for DAgger. `env_id` is the env it was trained in."""

    # what identifies it in dataset-recipe fingerprints: the weights and env, not where the file
    # lies (a moved checkout or another machine keeps its cached datasets)
    identifying_attributes = ("sha1", "env_id")

    def __init__(self, ckpt_path: str, device: str = "cpu", option: str = "ckpt_path"):
        # option: the config key naming the file, for errors (data.recipe.behavior_policy.ckpt_path)
        self.ckpt_path, self.device = str(ckpt_path), device
        # load_policy's one-line refusals (a missing file; a directory, unless a DeepSpeed checkpoint's)
        self._algo, self.env_factory, _ = load_policy(self.ckpt_path, device, option)
        self.env_id = self.env_factory.id
        # identifies the weights in dataset fingerprints/metadata (a retrained file makes a new dataset)
        self.sha1 = _weights_sha1(Path(self.ckpt_path))

    def __call__(self, obs):
        return self._algo.act(obs)

    # A Decision Transformer acts from its context and returns-to-go: whoever rolls the policy out
    # (collect, rollout_episodes) starts and advances them, as evaluation does; else every batch of
    # episodes would continue the last one's context at its first return-to-go.
    def begin_rollout(self, num_envs: int) -> None:
        if hasattr(self._algo, "begin_rollout"):
            self._algo.begin_rollout(num_envs)

    def observe_rollout_step(self, rewards, done, actions=None) -> None:
        if hasattr(self._algo, "observe_rollout_step"):
            self._algo.observe_rollout_step(rewards, done, actions)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from vla_hydra.core.io import write_json_atomic
    from vla_hydra.core.runtime import select_device, set_torch_threads
    from vla_hydra.envs.evaluation import rollout_episodes

    check_config_values(cfg)
    refuse_unread_additions(cfg)  # `+episode=3` evaluated 20 episodes, silently
    set_torch_threads(cfg.get("torch_threads"))
    if cfg.get("export"):
        _refuse_existing_export(cfg.export)  # before any work, not after the evaluation
    algo, env, config = load_policy(cfg.ckpt_path, select_device(cfg.device))
    _condition_on(algo, cfg.get("target_return"), cfg.ckpt_path)
    if cfg.get("video"):  # before the evaluation, not after it
        from vla_hydra.envs.video import check_can_render

        check_can_render(env, "video=true")
    release_warning_signal(hand_on=True)  # set up: a time-limit warning held since the job began acts now
    result = rollout_episodes(algo, env, cfg.episodes, cfg.seed, ref_returns=algo.ref_returns)
    results = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "algo": algo.run_label,
        "env": env.id,
        # what the checkpoint was trained on: the training run's data= name and seed, its update count
        "dataset": algo.dataset_name or (config.get("data", {}).get("name") if config.get("data") else None),
        "train_seed": config.get("seed"),
        "train_steps": algo.trained_steps,
        "seed": int(cfg.seed),
        **({"target_return": algo.target_return} if hasattr(algo, "target_return") else {}),
        **result.to_dict(),
    }
    out = Path(cfg.paths.output_dir) / "eval_results.json"
    write_json_atomic(out, results)  # before the video and export: a failure there loses no result
    if cfg.get("video"):
        from vla_hydra.envs.video import add_video_to_results

        add_video_to_results(algo, env, results, out, cfg.video_episodes, cfg.seed)
    if cfg.get("export"):
        results["exported"] = str(export_policy(cfg.ckpt_path, cfg.export, algo))
        log.info(f"exported: {results['exported']}")
        write_json_atomic(out, results)
    log.info(result.summary())  # logged, not printed: the run dir's eval.log keeps it too
    log.info(f"results: {out.resolve()}")
    return results


def _condition_on(algo, target_return: float | None, ckpt_path: str) -> None:
    """`target_return=`: a return-conditioned policy (algo=dt) is rolled out towards this return instead of
    the one its training run evaluated with (DT's returns-vs-target curves: `-m target_return=a,b,c`)."""
    if target_return is None:
        return
    from vla_hydra.core.exceptions import ConfigError

    if not hasattr(algo, "target_return"):
        raise ConfigError(
            f"target_return={target_return}: {ckpt_path} is a checkpoint of algo={algo.run_label}, which is "
            "not conditioned on a return (only algo=dt is); leave target_return unset"
        )
    trained = f"{algo.target_return:g}" if algo.target_return is not None else "its dataset's"
    log.info(
        f"rolled out towards return {float(target_return):g} (target_return=; its training run's: {trained})"
    )
    algo.target_return = float(target_return)


# config groups an eval_only run takes from the checkpoint, not from the command line
_SET_BY_THE_CHECKPOINT = ("algo", "model", "data", "env", "trainer", "callbacks")


def evaluate_training_run_checkpoint(cfg: DictConfig, output_dir: Path, start: float) -> dict[str, Any]:
    """vla_hydra.train's `eval_only=true` (experiment=eval): no training. The checkpoint brings its own
    algorithm, networks and env (the config it carries, as for `evaluate`), so one sweep re-evaluates
    checkpoints of any algorithms; results.json has the fields of a training run's, labelled with the
    run's algo, dataset and seed, so vla_hydra.report tables them."""
    import time

    from vla_hydra.cli.job import command_line_overrides
    from vla_hydra.cluster.resume import refuse_finished_run_dir
    from vla_hydra.core.checkpoints import check_run_checkpoint
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.core.io import write_json_atomic
    from vla_hydra.envs.evaluation import rollout_episodes

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
    if cfg.eval.get("video"):
        from vla_hydra.envs.video import check_can_render

        check_can_render(env, "eval.video=true")
    release_warning_signal(hand_on=True)
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
    out = output_dir / "results.json"
    write_json_atomic(out, results)
    if cfg.eval.get("video"):
        from vla_hydra.envs.video import add_video_to_results

        add_video_to_results(algo, env, results, out, cfg.eval.video_episodes, cfg.eval.seed)
    log.info(f"{results['algo']} checkpoint after {results['train_steps']} updates: {final.summary()}")
    log.info(f"results:    {out}")
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    run_cli(evaluate, cfg)


# the config groups conf/eval.yaml composes itself; every other group under conf/ is vla_hydra.train's,
# which an evaluation takes from the checkpoint
_EVAL_GROUPS = {"paths", "hydra", "local"}


def _eval_options() -> list[str]:
    """conf/eval.yaml's own keys: what an evaluation takes on its command line (read from the file, so the
    refusals below name exactly its options)."""
    import yaml

    keys = yaml.safe_load((Path(CONF_DIR) / "eval.yaml").read_text())
    return [key for key in keys if key not in ("defaults", "hydra", "task_name")]


def refuse_training_options_early(argv: list[str]) -> None:
    """`env=cartpole` failed with Hydra's advice to write `+env=cartpole`, which then evaluated in the
    checkpoint's env all the same: any training group on eval's command line is refused in one line.
    train.py's spelling of an eval option (`eval.video=true`) is refused with eval's own (`video=true`)."""
    training_groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()} - _EVAL_GROUPS
    options = _eval_options()
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue  # a flag (--cfg job, -m), not an override
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key.startswith("eval.") and key.removeprefix("eval.") in options:
            message = f"train.py's spelling; vla_hydra.eval takes {key.removeprefix('eval.')}={value}"
        elif key.split(".")[0] in training_groups or key.startswith("eval."):
            message = (
                "vla_hydra.eval rolls out the checkpoint with the env, algo and model it was trained with "
                f"(stored in it) and takes no training options; its options: {', '.join(options)}"
            )
        else:
            continue
        exit_with_error(f"{arg}: {message}")


def main() -> None:
    from vla_hydra.cli.overrides import read_argv_as_meant
    from vla_hydra.cli.run_dirs import refuse_occupied_eval_dir_early

    read_argv_as_meant()
    refuse_training_options_early(sys.argv[1:])
    refuse_occupied_eval_dir_early(sys.argv[1:])
    with one_line_hydra_errors("eval"):
        _hydra_main()


if __name__ == "__main__":
    main()
