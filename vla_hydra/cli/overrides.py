"""The command line read as the user meant it: `~` expanded; `--options` and unread `+key`s refused."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from vla_hydra.cli.entry import exit_with_error


def read_argv_as_meant() -> None:
    """Called first by the entry points, so Hydra and the early checks read the command as meant:

    - `key=~/path` with its `~` written out, as bash does for an unquoted argument: zsh and a quoted
      argument pass the `~` on, which Hydra's override grammar cannot parse;
    - Hydra's switches (`-m`, `--multirun`, ...) before the overrides: `train algo=iql -m seed=0,1` (a flag
      typed between overrides) got Hydra's whole usage text and "unrecognized arguments", exit 2."""
    for i, arg in enumerate(sys.argv[1:], start=1):
        key, given, value = arg.partition("=")
        if given and (value == "~" or value.startswith("~/")):
            sys.argv[i] = f"{key}={os.path.expanduser(value)}"
    switches = [arg for arg in sys.argv[1:] if arg in _HYDRA_SWITCHES]
    sys.argv[1:] = switches + [arg for arg in sys.argv[1:] if arg not in _HYDRA_SWITCHES]


# Hydra's flags that take no value (moving one keeps the meaning of every argument)
_HYDRA_SWITCHES = ("-m", "--multirun", "-r", "--run", "--resolve", "-h", "--help", "--hydra-help")


def _refuse_argparse_style_options(config_name: str) -> None:
    """`--seed 1`, `--total-timesteps=10000` (how CleanRL's and SB3's scripts take options): Hydra's
    argument parser answered with its whole usage text and exit code 2. One line instead, with the
    key=value override of the config key of that name."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    argv = sys.argv[1:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a bad Hydra flag: Hydra reports it itself
            unknown = get_args_parser().parse_known_args(argv)[1]
    except SystemExit:
        return
    flags = [arg for arg in unknown if arg.startswith("-")]
    if not flags:
        return
    flag = flags[0]
    name, given, value = flag.lstrip("-").partition("=")
    after = argv[argv.index(flag) + 1 : argv.index(flag) + 2]
    if not given:
        value = after[0] if after and "=" not in after[0] and not after[0].startswith("-") else "<value>"
    key = name.replace("-", "_")
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    found = _config_keys_named(config_name, key, overrides)
    write = (
        f"write {found[0]}={value}"
        if found
        else f"write key=value (`--cfg job` shows the keys, e.g. algo.{key}={value})"
    )
    if key in ("env", "env_id") and config_name == "train" and value != "<value>":  # CleanRL's --env-id
        from vla_hydra.core.config import CONF_DIR
        from vla_hydra.envs.factory import env_choice_hint

        choice = (Path(CONF_DIR) / "env" / f"{value}.yaml").is_file()
        write = f"write {f'env={value}' if choice else env_choice_hint(value)}"
    exit_with_error(
        f"{flag}: vla_hydra.{config_name} takes Hydra overrides (key=value), not --options; {write}"
    )


def _config_keys_named(config_name: str, key: str, overrides: list[str]) -> list[str]:
    """The dotted paths of the config's keys named `key`, shallowest first (`seed` before `eval.seed`)."""
    from vla_hydra.core.config import compose_config

    for attempt in (overrides, []):
        try:
            return keys_named(compose_config(config_name, attempt), key)
        except Exception:  # noqa: BLE001 - the other overrides do not compose: try the defaults
            pass
    return []


def keys_named(cfg: Any, key: str) -> list[str]:
    """The dotted paths of `cfg`'s keys named `key` (Hydra's own settings aside), shallowest first."""
    from omegaconf import OmegaConf

    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for name, value in node.items() if isinstance(node, dict) else []:
            path = f"{prefix}{name}"
            if name == key:
                found.append(path)
            if isinstance(value, dict) and path != "hydra":
                walk(value, f"{path}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(found, key=lambda path: path.count("."))


# nodes whose entries are named objects a user adds to (+callbacks.my_callback={_target_: ...})
_NAMED_ENTRIES = ("callbacks", "logger")


def refuse_unread_additions(cfg: Any) -> None:
    """A `+key=value` that adds a key nothing reads, where the user evidently meant an existing one:
    `+max_steps=1000` (a top-level key; trainer.max_steps exists) or `+eval.episode=3` (eval.episodes
    exists) trained with the defaults, silently. Nodes that build an object are checked against its
    constructor instead (core.config); a top-level key of the user's own (`+my_lr=1e-3
    algo.lr=${my_lr}`) passes."""
    import difflib

    from omegaconf import OmegaConf

    # looked up on each call, where tests replace it
    from vla_hydra.cli.job import command_line_overrides
    from vla_hydra.core.config import CONF_DIR
    from vla_hydra.core.exceptions import ConfigError

    text = OmegaConf.to_yaml(cfg)  # unresolved: interpolations show as ${...}
    for override, key in command_line_overrides():
        if not override.startswith("+") or override.startswith("++"):
            continue
        parent, _, leaf = key.rpartition(".")
        if key.split(".")[0] == "hydra" or (not parent and (Path(CONF_DIR) / leaf).is_dir()):
            continue  # Hydra's settings; a config group added (+experiment=...)
        if "." in parent or parent in _NAMED_ENTRIES:
            continue  # deeper nodes are free-form maps (cluster.additional_parameters, env kwargs)
        value = override.split("=", 1)[1] if "=" in override else ""
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not OmegaConf.is_dict(node) or "_target_" in node or "${" + key in text:
            continue
        if not parent:
            meant = [path for path in keys_named(cfg, leaf) if path != leaf] or [
                # a slip of a top-level option (`vla_hydra.eval +episode=3` for episodes)
                k
                for k in cfg.keys()
                if isinstance(k, str) and k != leaf and _one_edit_apart(leaf, k)
            ][:1]
        else:
            others = [k for k in node.keys() if isinstance(k, str) and k != leaf]
            meant = [f"{parent}.{k}" for k in difflib.get_close_matches(leaf, others, n=1)]
        if meant:
            where = f"{parent} (a settings node)" if parent else "the config's top level"
            raise ConfigError(
                f"{override}: adds '{leaf}' to {where}, where nothing reads it; did you mean "
                f"{meant[0]}={value}?"
            )


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter inserted, deleted, replaced, or two neighbours swapped (epsiodes for episodes)."""
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]]
        return len(diffs) == 1 or (swapped and a[diffs[1]] == b[diffs[0]])
    short, long = sorted((a, b), key=len)
    return len(long) - len(short) == 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _argv_overrides() -> list[str]:
    """The overrides on this process's command line, as Hydra parses them (before any composition)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(sys.argv[1:])[0].overrides or []
