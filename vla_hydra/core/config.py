"""Config-side helpers, import-light (omegaconf only): resolvers and turning config dicts into lists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The conf/ tree next to the package (editable install / source checkout). Absolute, so the entry
# points find it both under `python -m` and as console scripts.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose_config(
    config_name: str = "train", overrides: list[str] | None = None, return_hydra_config: bool = False
) -> DictConfig:
    """The config `python -m vla_hydra.<config_name> <overrides>` would run with, composed through Hydra's
    compose API (for tests, benchmarks, notebooks and scripts; no run directory is made)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name=config_name, overrides=overrides or [], return_hydra_config=return_hydra_config
        )


# Files shipped inside the package (e.g. behaviour-policy checkpoints): `${vla.asset:<relative path>}`.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("vla.isatty"):
        OmegaConf.register_new_resolver("vla.isatty", lambda: sys.stdout.isatty())
    if not OmegaConf.has_resolver("vla.asset"):
        OmegaConf.register_new_resolver("vla.asset", lambda relative: str(ASSETS_DIR / relative))


register_resolvers()


def instantiate_dict_values(cfg: DictConfig | None, option: str, expected: type) -> list[Any]:
    """Instantiate each entry of the config dict `option` (callbacks, logger); entries that are null or
    build None are skipped, so any entry can be switched off with `callbacks.<name>=null`. An entry that
    builds something other than an `expected` is a one-line error naming it (Lightning failed on it
    later with an OmegaConf message about a missing key)."""
    from hydra.utils import instantiate

    from vla_hydra.core.exceptions import ConfigError

    objects = []
    for name, value in (cfg or {}).items():
        if value is not None and "_target_" in value:
            obj = instantiate(value)
            if obj is not None and not isinstance(obj, expected):
                raise ConfigError(
                    f"{option}.{name}._target_={value._target_}: built a {type(obj).__name__}, expected a "
                    f"{expected.__module__.split('.')[0]} {expected.__name__}"
                )
            if obj is not None:
                objects.append(obj)
    return objects


# -- value checks ------------------------------------------------------------------------------------
# Hyper-parameter names mean the same thing in every algo/data/model/env config, so their valid ranges
# are stated once here, by key name, and checked before anything is built: a bad value is a one-line
# ConfigError naming the option instead of a traceback, a hang (0 updates per step) or a silent NaN run
# (batch size 0). Values that are interpolations are checked where they are defined.
_POSITIVE_INT_KEYS = {
    "batch_size", "updates_per_step", "steps_per_epoch", "total_timesteps", "num_steps", "num_minibatches",
    "update_epochs", "context_length", "num_envs", "episodes", "video_episodes", "reference_episodes",
    "group_size", "num_groups", "steps_per_iteration", "updates_per_iteration", "policy_freq",
    "policy_frequency", "target_network_frequency", "buffer_size", "cql_n_actions", "num_layers",
    "num_heads", "embedding_dim", "max_episode_steps", "every_n_updates", "torch_threads",
    "parallel_envs",
    # cluster=slurm (checked by the launcher before submitting)
    "time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism",
    # hparams_search=*_optuna (checked by the sweeper before the study is opened)
    "n_trials", "n_jobs",
}  # fmt: skip
# update/step limits where -1 means "none" (online algorithms end on their env-step budget instead)
_STEP_LIMIT_KEYS = {"max_steps", "max_updates"}
_SEED_KEYS = {"seed"}
_POSITIVE_INT_LIST_KEYS = {
    "hidden_dims",
    "critic_hidden_dims",
    "value_hidden_dims",
    "discriminator_hidden_dims",
}
_LEARNING_RATE_KEYS = {
    "lr", "actor_lr", "critic_lr", "value_lr", "alpha_lr", "policy_lr", "q_lr", "discriminator_lr",
}  # fmt: skip
_NON_NEGATIVE_KEYS = {
    "weight_decay", "ent_coef", "vf_coef", "kl_coef", "learning_starts", "max_grad_norm", "grad_clip",
    "policy_noise", "noise_clip", "cql_alpha", "gradient_penalty_coef", "warmup_updates", "signal_delay_s",
    "max_num_timeout",
    # cluster=slurm: sbatch's own refusal ("Invalid --mem specification") did not name the option
    "mem_gb", "gpus_per_node",
    "alpha", "beta",  # TD3+BC's BC weight, SAC's entropy coefficient; IQL's inverse temperature
}  # fmt: skip
# Adam's (beta1, beta2): a wrong length was an IndexError inside torch's optimizer at fit start
_BETAS_KEYS = {"betas"}
# per-episode levels a collection recipe cycles through
_NON_NEGATIVE_LIST_KEYS = {"action_noise_std"}
_PROBABILITY_LIST_KEYS = {"random_action_prob"}
# real numbers without a range (any sign); a word here would fail deep inside a build or a float()
_NUMBER_KEYS = {
    "target_return", "return_scale", "reward_norm_scale", "reward_scale", "reward_bias", "advantage_eps",
    "alpha_multiplier",
    "max_weight", "log_std_init", "log_std_min", "log_std_max", "log_std_offset",
    "random", "expert",  # env.ref_returns
}  # fmt: skip
# switches: Hydra reads `true`/`false` as booleans, any other word (`overwrite=no`) as a string that
# Python would take as true. (Lightning's `deterministic` and `fast_dev_run` also take other values.)
_BOOL_KEYS = {
    "anneal_lr", "auto_requeue", "auto_resume", "autotune", "backup_entropy", "broadcast_buffers",
    "checkpoint_replay_buffer", "clip_value_loss", "compile_losses", "cpu_offload", "critic_orthogonal_init",
    "default_hp_metric", "enable_model_summary", "eval_only", "enable_progress_bar", "find_unused_parameters",
    "layer_norm", "normalize_advantages", "normalize_observations", "normalize_reward", "normalize_rewards",
    "offload_optimizer", "offload_parameters", "orthogonal_init", "overwrite", "print_config",
    "scale_by_std", "video", "wait",
}  # fmt: skip
# (low, high, low included, high included)
_INTERVAL_KEYS = {
    "discount": (0.0, 1.0, True, True),
    "gamma": (0.0, 1.0, True, True),
    "gae_lambda": (0.0, 1.0, True, True),
    "tau": (0.0, 1.0, False, True),
    "expectile": (0.0, 1.0, False, False),
    "beta_decay": (0.0, 1.0, True, True),
    "beta0": (0.0, 1.0, True, True),  # DAgger's first expert-mixing probability
    "target_kl": (0.0, float("inf"), False, False),  # PPO's early stop (null: none)
    "cql_temp": (0.0, float("inf"), False, False),  # CQL's logsumexp divides by it: 0 gave NaN losses
    "dropout": (0.0, 1.0, True, False),
    "clip_coef": (0.0, float("inf"), False, False),
}

_CHECKED_KEYS = (
    _POSITIVE_INT_KEYS
    | _STEP_LIMIT_KEYS
    | _SEED_KEYS
    | _POSITIVE_INT_LIST_KEYS
    | _BETAS_KEYS
    | _LEARNING_RATE_KEYS
    | _NON_NEGATIVE_KEYS
    | _NON_NEGATIVE_LIST_KEYS
    | _PROBABILITY_LIST_KEYS
    | _BOOL_KEYS
    | _NUMBER_KEYS
    | set(_INTERVAL_KEYS)
)


def is_number(value: Any) -> bool:
    """An int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expected(key: str, value: Any) -> str | None:
    """What `key` should hold, when `value` is not that; None when it is fine or not a checked key."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key in _STEP_LIMIT_KEYS:
        return None if is_int and value >= -1 else "an integer >= 0, or -1 for no limit"
    if key in _SEED_KEYS:
        # numpy seeds modulo 2**32: seed=4294967296 trained exactly as seed=0
        return None if is_int and 0 <= value < 2**32 else "an integer in [0, 4294967295]"
    if value is None:
        return None  # optional settings (target_kl: null, ...)
    if key in _BOOL_KEYS:
        return None if isinstance(value, bool) else "true or false"
    if key in _NUMBER_KEYS:
        return None if is_number(value) else "a number"
    if key in _POSITIVE_INT_KEYS:
        return (
            None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1
            else "an integer >= 1"
        )
    if key in _POSITIVE_INT_LIST_KEYS:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and v >= 1 for v in value)
        return None if ok else "a list of integers >= 1 (layer widths)"
    if key in _BETAS_KEYS:
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        ok = ok and all(is_number(v) and 0 <= v < 1 for v in value)
        return None if ok else "two numbers in [0, 1) (Adam's beta1, beta2)"
    if key in _NON_NEGATIVE_LIST_KEYS | _PROBABILITY_LIST_KEYS:
        probability = key in _PROBABILITY_LIST_KEYS
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        ok = ok and all(is_number(v) and v >= 0 and (v <= 1 or not probability) for v in value)
        return (
            None
            if ok
            else f"a non-empty list of {'probabilities in [0, 1]' if probability else 'numbers >= 0'}"
        )
    if key in _LEARNING_RATE_KEYS:
        return None if is_number(value) and value > 0 else "a learning rate > 0"
    if key in _NON_NEGATIVE_KEYS:
        return None if is_number(value) and value >= 0 else "a number >= 0"
    if key in _INTERVAL_KEYS:
        low, high, low_in, high_in = _INTERVAL_KEYS[key]
        ok = is_number(value) and (low <= value if low_in else low < value)
        ok = ok and (value <= high if high_in else value < high)
        return (
            None if ok else f"a number in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        )
    return None


def _check_node(node: DictConfig, prefix: str) -> None:
    _check_target_arguments(node, prefix)
    for key in node:
        if (
            not isinstance(key, str)
            or (key == "hydra" and not prefix)  # Hydra's own settings
            or OmegaConf.is_interpolation(node, key)
        ):
            continue
        if OmegaConf.is_missing(node, key):  # `???`: some code may read it with .get() and see None
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError(f"{prefix}{key}: required, not set (pass {prefix}{key}=<value>)")
        value = node[key]
        if isinstance(value, DictConfig):
            _check_node(value, f"{prefix}{key}.")
            continue
        if OmegaConf.is_list(value):  # objects built from a list (env.wrappers): each item's _target_
            for index, item in enumerate(value):
                if isinstance(item, DictConfig):
                    _check_node(item, f"{prefix}{key}[{index}].")
        if key not in _CHECKED_KEYS:
            continue
        if OmegaConf.is_list(value):
            value = OmegaConf.to_container(value, resolve=True)
        check_value(f"{prefix}{key}", value)


# keys Hydra's instantiate consumes itself
_HYDRA_INSTANTIATE_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}


def import_target(target_path: str, option: str) -> Any:
    """What a `_target_` names, or a one-line ConfigError naming the option (`algo._target_`)."""
    import logging

    from hydra.utils import get_object

    from vla_hydra.core.exceptions import ConfigError

    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # it logs the failure in 3 lines of its own before raising
    try:
        return get_object(target_path)
    except Exception as err:  # ImportError, AttributeError, or the module's own import-time error
        raise ConfigError(
            f"{option}={target_path}: cannot be imported ({_import_failure(target_path)})"
        ) from err
    finally:
        hydra_log.setLevel(level)


def _import_failure(target_path: str) -> str:
    """Why `target_path` does not import, in a few words: the module that is missing, the name its
    module lacks (with the closest one it has), or the error the module raised while importing."""
    import difflib
    import importlib

    parts = target_path.split(".")
    for end in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        module_name = ".".join(parts[:end])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name + ".").startswith(err.name + "."):
                continue  # this prefix is not a module: try a shorter one
            return f"importing {module_name} failed: {err}"  # it imports a package that is missing
        except Exception as err:  # noqa: BLE001 - the module's own import-time error, named
            return f"importing {module_name} raised {type(err).__name__}: {err}"
        obj = module
        for depth, name in enumerate(parts[end:]):
            if not hasattr(obj, name):
                owner = ".".join(parts[: end + depth])
                close = difflib.get_close_matches(name, [n for n in dir(obj) if not n.startswith("_")], n=1)
                return f"{owner} has no '{name}'" + (f"; did you mean {owner}.{close[0]}?" if close else "")
            obj = getattr(obj, name)
        return f"{target_path} imports, but its lookup failed"  # get_object failed where this did not
    return f"no module named '{parts[0]}' (is its package installed, or its folder on PYTHONPATH?)"


def _check_target_arguments(node: DictConfig, prefix: str) -> None:
    """A node that builds an object (`_target_`) holds only arguments its constructor takes: a key added
    with `+algo.lrr=1` is named in one line here instead of failing deep inside the build with a
    TypeError. Targets that accept **kwargs are not checked."""
    import difflib
    import inspect

    from vla_hydra.core.exceptions import ConfigError

    if "_target_" not in node or OmegaConf.is_interpolation(node, "_target_"):
        return
    target_path = node["_target_"]
    if not isinstance(target_path, str):
        return
    target = import_target(target_path, f"{prefix}_target_")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in node:
        if isinstance(key, str) and key not in _HYDRA_INSTANTIATE_KEYS and key not in parameters:
            close = difflib.get_close_matches(key, list(parameters), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"{prefix}{key}: {target_path} takes no argument '{key}'{hint}")


def check_value(option: str, value: Any) -> None:
    """One value, named by its full option path (`data.recipe.episodes`), against the rule for its key;
    for objects built outside a composed config (e.g. a CollectionRecipe made in Python)."""
    from vla_hydra.core.exceptions import ConfigError

    problem = _expected(option.rsplit(".", 1)[-1], value)
    if problem:
        raise ConfigError(f"{option}={value}: expected {problem}")


def check_config_values(cfg: DictConfig, prefix: str = "") -> None:
    """Raise a one-line ConfigError for the first known hyper-parameter outside its valid range, or the
    first argument an object's constructor does not take (the whole config but Hydra's own settings).
    `prefix`: where `cfg` sits in the whole config (`cluster.`), for the option names in errors."""
    _check_node(cfg, prefix)
