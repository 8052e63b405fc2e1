"""Hydra's composition and set-up errors, and a `_target_` missing required arguments, as one `error:` line.

Hydra prints these over several lines (the override, a hint, OmegaConf's key/type block, the config
search path, a HYDRA_FULL_ERROR note). The entry points print them as one `error:` line instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vla_hydra.cli.entry import _entry_point_state, exit_with_error
from vla_hydra.cli.overrides import (
    _argv_overrides,
    _one_edit_apart,
    _refuse_argparse_style_options,
    keys_named,
)

_AMBIGUOUS = re.compile(r"Ambiguous value for argument '([^=]+)=(.*)'")


def hydra_error_line(err: BaseException) -> str | None:
    """One line for an error Hydra raised while composing the config or parsing the command line; None
    for anything else (the job's own errors, bugs)."""
    from hydra.errors import (
        CompactHydraException,
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    from vla_hydra.core.exceptions import VlaHydraError

    if isinstance(err, ValueError) and str(err).startswith(_NULL_GROUP):
        return _null_group_line()
    if isinstance(err, VlaHydraError) or not isinstance(err, CompactHydraException):
        return None  # vla_hydra's errors are one line already (cluster JobFailed: `error: job #1 ...`)
    text = str(err)
    if isinstance(err, MissingConfigException) and err.options is not None:
        group, _, choice = str(err.missing_cfg_file).rpartition("/")
        return f"{group}={choice}: no such choice; {group}= choices: {', '.join(err.options)}"
    if isinstance(err, OverrideParseException):
        problem = text.splitlines()[0] if text else "syntax error"
        return (
            f"{err.override}: cannot parse this override ({problem}; "
            "see https://hydra.cc/docs/advanced/override_grammar/basic/)"
        )
    if isinstance(err, ConfigCompositionException):
        appended = re.search(r"To append to your config use \+(\S+)", text)
        cause = err.__cause__
        if appended and isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return _unknown_key_line(appended.group(1), cause)
        merging = re.match(r"Error merging override (\S+)", text)
        if merging and isinstance(cause, OmegaConfBaseException):
            # a typed node of Hydra's own (hydra.sweeper.n_trials=abc): say what it takes, not only "Error
            # merging override"
            return f"{merging.group(1)}: {str(cause).splitlines()[0]}"
        ambiguous = _AMBIGUOUS.match(text)
        if ambiguous:
            key, value = ambiguous.groups()
            return (
                f"{key}={value}: a comma-separated value; add -m (--multirun) to sweep over it, "
                f"or write {key}=[{value}] for a list"
            )
    return " ".join(text.split())


# Hydra's ValueError (a traceback) for `logger=null`: a group override that is null
_NULL_GROUP = "Config group override must be a string or a list. Got NoneType"


def _null_group_line() -> str:
    """`logger=null` (how some templates switch a group off): Hydra takes no null for a config group;
    `~logger` leaves it out."""
    from vla_hydra.core.config import CONF_DIR

    for override in _argv_overrides():
        key, _, value = override.partition("=")
        group = key.lstrip("+~")
        if value.strip() == "null" and (Path(CONF_DIR) / group).is_dir():
            return (
                f"{override}: a config group takes one of its choices, not null; leave it out with ~{group}"
            )
    return "a config group override is null; a group takes one of its choices, or leave it out with ~<group>"


# what CleanRL / Stable-Baselines3 / CORL call an option -> what vla_hydra's configs call it (the first
# one the node has); their names are not close enough as strings for difflib to suggest ours
_NAMES_HERE = {
    "learning_rate": ("lr",),
    "norm_adv": ("normalize_advantages",),
    "clip_vloss": ("clip_value_loss",),
    "clip_range": ("clip_coef",),
    "n_steps": ("num_steps",),
    "n_epochs": ("update_epochs",),
    "gamma": ("discount",),
    "discount": ("gamma",),
    "policy_frequency": ("policy_freq",),
    "policy_freq": ("policy_frequency",),
    "iql_tau": ("expectile",),
    "qf_lr": ("critic_lr", "q_lr"),
    "vf_lr": ("value_lr",),
}


def _unknown_key_line(override: str, cause: Any) -> str:
    """`algo.lrr=1: algo (vla_hydra.algos.bc.BC) has no option 'lrr'; did you mean algo.lr=1?`: the
    closest existing key of the same node, with the value the user gave."""
    import difflib

    value = override.split("=", 1)[1] if "=" in override else ""
    parent, _, key = str(cause.full_key).rpartition(".")
    node = getattr(cause, "parent_node", None)
    known = [k for k in (node.keys() if node is not None else []) if isinstance(k, str) and k != "hydra"]
    target = node.get("_target_") if node is not None else None
    where = (parent or "the config") + (f" ({target})" if isinstance(target, str) else "")
    line = f"{override}: {where} has no option '{key}'"
    named_as_here = [k for k in _NAMES_HERE.get(key, ()) if k in known]
    close = named_as_here[:1] or difflib.get_close_matches(key, known, n=1)
    if close:
        line += f"; did you mean {f'{parent}.' if parent else ''}{close[0]}={value}?"
    elif not parent and node is not None:
        # a top-level key that exists deeper (`max_steps=5` for trainer.max_steps, collect's `episodes=3`)
        deeper = keys_named(node, key)
        if deeper:
            line += f"; did you mean {deeper[0]}={value}?"
    elsewhere = _choices_with_key(parent, key)
    swept = _swept_choices(parent)
    if swept and all(f"{parent}={choice}" in elsewhere for choice in swept):
        # a sweep over the group (-m algo=ppo,grpo): Hydra composes the sweep once with the group's
        # default choice first, and that one lacks the option every swept choice has
        return (
            f"{override}: in a sweep over {parent}={','.join(swept)}, Hydra first composes the default "
            f"{parent}= choice, which has no option '{key}'; write ++{override.lstrip('+')} (every swept "
            "choice has it)"
        )
    if (
        isinstance(target, str)
        # a one-letter slip of an existing option (lrr for lr) is a typo: not worth importing the target
        and not (close and _one_edit_apart(key, close[0]))
        and _target_takes(target, key)
    ):
        # e.g. trainer.gradient_clip_val: Lightning's Trainer takes it, the yaml just does not list it
        # (saying it has no such option, or suggesting trainer.max_steps for max_time, was wrong); also
        # where other choices list it (env.num_envs with a user's env yaml that lists only its id)
        line = f"{override}: {where} takes '{key}', but this config does not set it; add it with +{override}"
        if elsewhere:
            line += f" ({' and '.join(elsewhere)} {'sets' if len(elsewhere) == 1 else 'set'} it)"
        return line
    if elsewhere:  # e.g. cluster.wait under cluster=submitit_local: the option belongs to another choice
        line += f"; {' and '.join(elsewhere)} {'has' if len(elsewhere) == 1 else 'have'} it"
    elif target is None and not known:
        # a free-form map (cluster.additional_parameters): new keys are how it is used. Not elsewhere: a new
        # key in a node that builds an object fails in its constructor, and one in a settings node
        # (eval, paths) is read by nothing, so `+` would only silence the typo
        line += f" (+{override} adds it as a new key)"
    return line


def _target_takes(target: str, key: str) -> bool:
    """Whether the constructor a config node's `_target_` names takes the argument `key`."""
    import inspect

    from hydra._internal.utils import _locate

    try:
        parameters = inspect.signature(_locate(target)).parameters
    except Exception:  # noqa: BLE001 - not importable, or no signature: say nothing about it
        return False
    return key in parameters and parameters[key].kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )


def _swept_choices(group: str) -> list[str]:
    """The choices a command-line sweep override gives `group` (`algo=ppo,grpo` -> [ppo, grpo])."""
    if not group or "." in group:
        return []
    for override in _argv_overrides():
        name, _, value = override.partition("=")
        if name.lstrip("+~") == group and "," in value:
            return [choice.strip() for choice in value.split(",")]
    return []


def _choices_with_key(parent: str, key: str) -> list[str]:
    """`group=choice` for each config file of group `parent` (conf/<parent>/*.yaml) that sets `key`."""
    import yaml

    from vla_hydra.core.config import CONF_DIR

    if not parent or "." in parent:
        return []
    found = []
    for path in sorted((Path(CONF_DIR) / parent).glob("*.yaml")):
        try:
            text = path.read_text()
            data = yaml.safe_load(text) or {}
        except (OSError, yaml.YAMLError):
            continue
        node = data.get(parent) if "@package _global_" in text else data
        if isinstance(node, dict) and key in node:
            found.append(f"{parent}={path.stem}")
    return found


def _own_error_line(err: BaseException) -> str | None:
    """A vla_hydra error that reached Hydra's reporting (a sweeper re-raising a failed job's error) is
    printed as the one line it is, not with Hydra's HYDRA_FULL_ERROR hint."""
    from vla_hydra.core.exceptions import VlaHydraError

    if not isinstance(err, VlaHydraError):
        return None
    message = " ".join(str(err).split())
    return message.removeprefix("error: ")


def _yaml_syntax_line(err: BaseException) -> str | None:
    """A config file that is not valid YAML (a user's conf/cluster/<name>.yaml, conf/local/default.yaml):
    the file, line and column PyYAML names, not its parser's traceback through Hydra's composition."""
    import yaml

    mark = getattr(err, "problem_mark", None)
    if not isinstance(err, yaml.MarkedYAMLError) or mark is None:
        return None
    context = f" ({err.context})" if err.context else ""
    return (
        f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: {err.problem}{context}; not valid YAML"
    )


def _config_value_line(err: BaseException) -> str | None:
    """A value of the wrong type for a typed config node before the entry point runs (the launcher's
    `hydra.launcher.timeout_min: ${cluster.time_min}` given `cluster.time_min=abc`): one line naming
    the user's key when the value came through an interpolation."""
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(err, OmegaConfBaseException) or _entry_point_state["task_started"]:
        return None
    message = str(getattr(err, "msg", "") or err).splitlines()[0]
    if not getattr(err, "full_key", None):
        # resolving the launcher's typed config (`setup: ${cluster.setup}` given `cluster.setup=module
        # load x`, a string for a list): OmegaConf names no key, but its resolver's frame holds the node
        interpolated = _node_being_resolved(err)
        if interpolated:
            source, full_key = interpolated
            return f"{source}: {message} (it sets {full_key})"
        return f"{message} (a value Hydra's launcher or sweeper takes: check this command's cluster.* / hydra.* values)"
    source = re.match(r"While dereferencing interpolation '\$\{([^}]+)\}': (.*)", message)
    if source:
        return f"{source.group(1)}: {source.group(2)} (it sets {err.full_key})"
    return f"{err.full_key}: {message}"


def _node_being_resolved(err: BaseException) -> tuple[str, str] | None:
    """(the key an interpolation reads, the key it sets) for an error raised while OmegaConf.resolve set an
    interpolated node (omegaconf._impl._resolve_container_value), found in the error's traceback."""
    node, tb = None, err.__traceback__
    while tb is not None:  # the innermost such frame is the failing node
        if tb.tb_frame.f_code.co_name == "_resolve_container_value":
            node = tb.tb_frame.f_locals.get("node", node)
        tb = tb.tb_next
    try:
        source = re.fullmatch(r"\$\{([^}]+)\}", str(node._value())) if node is not None else None
        return (source.group(1), node._get_full_key(None)) if source else None
    except Exception:  # noqa: BLE001 - omegaconf internals changed: fall back to the general line
        return None


def _multirun_composition_error(config_name: str) -> BaseException | None:
    """Hydra picks multirun mode for `experiment=`/`hparams_search=` sweeps by composing the config in that
    mode first; when that fails it falls back to a single run and reports the sweep's comma values as
    ambiguous instead. The error of that first composition (e.g. an override one swept algo lacks)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    if not GlobalHydra.instance().is_initialized():
        return None
    overrides = _argv_overrides()
    try:
        GlobalHydra.instance().hydra.compose_config(
            config_name, overrides, run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False
        )
    except Exception as err:  # noqa: BLE001 - whatever stopped the sweep's composition
        return err
    return None


def _run_dir_write_line(err: BaseException) -> str | None:
    """Hydra creating the run dir, its log file or its saved config before the entry point runs
    (hydra.run.dir=<a file>, a read-only dir): one line naming the path; None for any other error.
    Python's logging wraps the log file's OSError in a ValueError ("Unable to configure handler")."""
    cause = err.__cause__
    if isinstance(err, ValueError) and isinstance(cause, OSError) and cause.filename:
        err = cause
    if not isinstance(err, OSError) or not err.filename:
        return None
    problem = "a file of that name exists" if isinstance(err, FileExistsError) else err.strerror
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    what = "create the directory" if "mkdir" in frames else "write"
    return (
        f"cannot {what} {err.filename}: {problem} (runs go to hydra.run.dir / hydra.sweep.dir, under "
        "paths.root_dir or $VLA_HYDRA_ROOT)"
    )


def _missing_arguments_line(err: BaseException) -> str | None:
    """A `_target_` built without arguments its constructor requires (a `_target_=` swapped on the command
    line): one line naming the config node and the arguments, None for any other error."""
    cause = err.__cause__
    found = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: (.*)", str(cause))
    key = re.search(r"full_key: (\S+)", str(err))
    target = re.search(r"Error in call to target '([^']+)'", str(err))
    if not (isinstance(cause, TypeError) and found and key and target):
        return None
    if key.group(1) == "model":  # the algorithm completes the network with the env's shapes
        return (
            f"model: {target.group(1)} needs {found.group(1)}, which the algorithm passes from the env; "
            "add `_partial_: true` to the model config (as conf/model/*.yaml have)"
        )
    return (
        f"{key.group(1)}: {target.group(1)} needs {found.group(1)}; add them with "
        f"+{key.group(1)}.<name>=<value>"
    )


@contextmanager
def one_line_hydra_errors(config_name: str) -> Iterator[None]:
    """While an entry point runs under @hydra.main: Hydra's composition and override errors end the
    command with one `error:` line on stderr and exit code 1 (HYDRA_FULL_ERROR=1 still shows Hydra's
    full report). Hydra reports errors through `run_and_report`; this wraps the function it is given."""
    import hydra._internal.utils as hydra_utils

    _refuse_argparse_style_options(config_name)
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None:  # another Hydra version: keep its own reports
        yield
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def one_line() -> Any:
            try:
                return func()
            except Exception as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                if _AMBIGUOUS.match(str(err)):  # Hydra's fallback when a sweep failed to compose
                    err = _multirun_composition_error(config_name) or err
                line = (
                    hydra_error_line(err)
                    or _config_value_line(err)
                    or _own_error_line(err)
                    or _yaml_syntax_line(err)
                )
                if line is None and not _entry_point_state["task_started"]:
                    line = _run_dir_write_line(err)
                if line is None:
                    raise
                exit_with_error(line)

        return original(one_line)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    except ValueError as err:  # raised by Hydra's argument handling, before run_and_report
        if (
            not str(err).startswith("Only one of --run, --multirun")
            or os.environ.get("HYDRA_FULL_ERROR") == "1"
        ):
            raise
        exit_with_error(
            "-m (--multirun) cannot be combined with --cfg/--info/-r: Hydra shows one job's config; "
            "drop -m and give each swept option one value (seed=0, not seed=0,1)"
        )
    finally:
        hydra_utils.run_and_report = original
