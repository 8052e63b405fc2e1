"""Refusals before anything is built or trained: settings that do not go together, found when the run
starts rather than as a traceback in its first update or a result that silently ignored them. Each
raises a one-line ConfigError / OutputError naming the option."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vla_hydra.cli.job import hydra_choice, hydra_job_config
from vla_hydra.core.exceptions import ConfigError, OutputError


def check_algorithm_class(algo_cfg: DictConfig, algo_class) -> None:
    """`algo._target_` (the user's own algorithm too) names a PolicyAlgorithm subclass that train.py and
    vla_hydra.eval can build as `Algo(spec=, model=, stats=, **algo options)`: a plain LightningModule
    failed in Lightning's fit with a traceback, a constructor without `stats` in a TypeError."""
    import inspect

    target = algo_cfg.get("_target_")
    refuse_a_non_algorithm(algo_cfg, algo_class)
    missing = missing_methods(algo_class)
    if missing:
        raise ConfigError(
            f"algo._target_={target}: {algo_class.__name__} does not implement {', '.join(missing)}, which "
            "training calls (docs/extending.md)"
        )
    options = [k for k in algo_cfg if isinstance(k, str) and not (k.startswith("_") and k.endswith("_"))]
    try:
        inspect.signature(algo_class).bind(spec=None, model=None, stats=None, **dict.fromkeys(options))
    except TypeError as err:
        from vla_hydra.algos.online import OnlineAlgorithm

        if issubclass(algo_class, OnlineAlgorithm) and "env" not in options:
            raise ConfigError(
                f"algo._target_={target}: an online algorithm is built with the env= factory ({err}); add "
                "`env: ${env}` to its algo yaml, as conf/algo/ppo.yaml does"
            ) from err
        raise ConfigError(
            f"algo._target_={target}: its constructor cannot be called as {algo_class.__name__}(spec=, model=, "
            f"stats=, <the algo.* options>) ({err}); PolicyAlgorithm's contract: "
            "__init__(self, spec, model, <options>, stats=None)"
        ) from err


def refuse_a_non_algorithm(algo_cfg: DictConfig, algo_class=None) -> None:
    """`algo._target_` names a PolicyAlgorithm subclass (`algo_class`: the class, imported here if not
    given). Checked before the algo.* options are matched against its constructor: a network class there
    read `algo.lr: my_pkg.models.MyNet takes no argument 'lr'`."""
    from vla_hydra.algos.base import PolicyAlgorithm
    from vla_hydra.core.config import import_target

    target = algo_cfg.get("_target_")
    if algo_class is None:
        if not isinstance(target, str):
            return  # none: instantiating names it
        algo_class = import_target(target, "algo._target_")
    if not (isinstance(algo_class, type) and issubclass(algo_class, PolicyAlgorithm)):
        raise ConfigError(
            f"algo._target_={target}: not a subclass of vla_hydra.algos.base.PolicyAlgorithm (training, "
            "evaluation and checkpoints use its act(), update() and checkpoint contents); subclass it, or "
            "an algorithm of vla_hydra.algos"
        )


def missing_methods(algo_class) -> list[str]:
    """The methods a PolicyAlgorithm subclass must override and does not: each failed as a traceback
    (NotImplementedError in the first iteration or the step-0 evaluation, Lightning's "No
    `configure_optimizers()` method defined")."""
    import lightning as L

    from vla_hydra.algos.base import PolicyAlgorithm
    from vla_hydra.algos.online import OnlineAlgorithm

    required = [
        ("configure_optimizers()", L.LightningModule, "configure_optimizers"),
        ("normalized_action(normalized_obs)", PolicyAlgorithm, "normalized_action"),
    ]
    if issubclass(algo_class, OnlineAlgorithm):  # collects and updates in train_iteration, not update
        required.append(("train_iteration(optimizers)", OnlineAlgorithm, "train_iteration"))
    elif algo_class.training_step is PolicyAlgorithm.training_step:  # DT and the like override training_step
        required.append(("update(batch, optimizers)", PolicyAlgorithm, "update"))
    return [shown for shown, base, name in required if getattr(algo_class, name) is getattr(base, name)]


def build_algorithm(algo_cfg: DictConfig, spec, model, stats):
    """`Algo(spec=, model=, stats=, **algo options)` from `algo_cfg`. An algo.* option that a user's subclass
    passes on through **kwargs to a constructor that lacks it is one line naming the option (a TypeError
    from deep inside the constructor otherwise)."""
    import re

    from hydra.utils import instantiate

    try:
        return instantiate(algo_cfg, _partial_=True)(spec=spec, model=model, stats=stats)
    except TypeError as err:
        found = re.fullmatch(r"(\S+)\(\) got an unexpected keyword argument '(\w+)'", str(err))
        if not (found and found.group(2) in algo_cfg):
            raise
        raise ConfigError(
            f"algo.{found.group(2)}: {algo_cfg._target_} takes no argument '{found.group(2)}' (its **kwargs "
            f"pass it on to {found.group(1)}, which does not take it)"
        ) from err


def check_segment_length(cfg: DictConfig, algo_class) -> None:
    """Sequence algorithms (DT) train on segments of algo.context_length steps, the others on single
    transitions; data.segment_length follows algo.context_length unless overridden."""
    segment, context = cfg.data.get("segment_length"), cfg.algo.get("context_length")
    if not getattr(algo_class, "takes_sequences", False):
        if segment is not None:
            raise ConfigError(
                f"data.segment_length={segment}: algo={hydra_choice('algo') or algo_class.short_name()} trains "
                "on single transitions; expected null (segments are for algo=dt)"
            )
    elif segment != context:
        raise ConfigError(
            f"data.segment_length={segment}: algo=dt trains on segments of its algo.context_length={context}; "
            "leave data.segment_length unset (it follows algo.context_length)"
        )


def check_data_source(cfg: DictConfig, algo_class) -> None:
    """data=rollouts holds no data (it paces the online algorithms, which collect their own): an offline
    algo on it failed with a traceback in its first update. A dataset given to an online algo that reads
    none (algo=sac data=pendulum_mixed) was ignored, while results.json named it as the run's dataset."""
    from hydra.utils import get_object

    from vla_hydra.algos.online import OnlineAlgorithm
    from vla_hydra.data.rollouts import RolloutDataModule

    target = cfg.data.get("_target_")
    if not isinstance(target, str):
        return
    built_by = get_object(target)  # a class, or a function that picks one (data=d4rl, data=minari)
    rollouts = isinstance(built_by, type) and issubclass(built_by, RolloutDataModule)
    online = issubclass(algo_class, OnlineAlgorithm)
    data = hydra_choice("data") or cfg.data.get("name")
    algo = hydra_choice("algo") or algo_class.short_name()
    if rollouts and not online:
        raise ConfigError(
            f"data=rollouts: algo={algo} learns from a dataset, and data=rollouts holds none (it paces the "
            "online algorithms, which collect their own); choose one, e.g. data=pendulum_mixed"
        )
    if rollouts and online and algo_class.reads_dataset:
        # GAIL's expert side: refused here, not after the first evaluation as its first step started
        raise ConfigError(
            f"data=rollouts: algo={algo} needs expert transitions from data= (e.g. data=pendulum_expert, or "
            "data=hdf5 data.path=<D4RL-format file>), and data=rollouts holds none"
        )
    if not rollouts and online and not algo_class.reads_dataset:
        raise ConfigError(
            f"data={data}: algo={algo} learns only from the experience it collects in env= and would ignore "
            "this dataset; leave data= out (its config selects data=rollouts)"
        )


def refuse_local_multiprocess_sweep(cfg: DictConfig) -> None:
    """Lightning starts the extra processes of trainer=ddp/fsdp/deepspeed by re-running the command line:
    in a local multirun (-m, hparams_search=..., cluster=submitit_local) each of them would re-run the
    whole sweep. On SLURM, SLURM starts one task per device instead."""
    from hydra.types import RunMode

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
        # name the setting that asks for more than one process (devices=1 with num_nodes=2 named devices=1)
        setting = f"trainer.devices={devices}" if per_node > 1 else f"trainer.num_nodes={nodes}"
        raise ConfigError(
            f"{setting}: a local sweep (-m, hparams_search=, cluster=submitit_local) cannot "
            "run several processes per job; run the jobs one at a time without -m, or use cluster=slurm"
        )


def check_output_paths(cfg: DictConfig, callbacks: list, resuming: bool) -> None:
    """The files the callbacks will write, before training rather than at their first save (debug=fdr
    saves nothing, so nothing is checked there)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vla_hydra.core.io import check_creatable
    from vla_hydra.training.callbacks import PolicyEvaluation

    if cfg.trainer.get("fast_dev_run"):
        return
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            check_creatable(Path(callback.dirpath) / "last.ckpt", "callbacks.model_checkpoint.dirpath")
        if isinstance(callback, PolicyEvaluation) and callback.best_checkpoint:
            _check_best_checkpoint_path(Path(callback.best_checkpoint), resuming)


def _check_best_checkpoint_path(path: Path, resuming: bool) -> None:
    """callbacks.policy_eval.best_checkpoint: a file path that can be written, and, for a fresh run, not an
    existing file (another run's best policy, or an earlier job's of the same sweep, used to be replaced at
    the first evaluation). A resumed run replaces its earlier leg's file only with a better policy."""
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


def check_trainer_settings(trainer_cfg: DictConfig) -> None:
    """Every algorithm steps its own optimizers (Lightning's manual optimization), for which Lightning
    neither clips nor accumulates gradients: it refused these with a traceback as the fit started."""
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
