"""Compare sweeps: aggregate the run dirs of one or more sweeps into a table a paper/README can use.

    python -m vla_hydra.report logs/train/multiruns/<time>                  # report into that dir
    python -m vla_hydra.report <sweep A> <sweep B> --out reports/bc_vs_iql

Every `results.json` under the given dirs (written by `vla_hydra.train`, one per run) is one run;
runs are grouped by (dataset, algo, configuration: runs that differ in more than the seed get a group
each; re-evaluations of checkpoints (eval_only) one apart from the runs that trained them), an online run's dataset being "<env id> (online)" unless it
learned from a dataset too (GAIL's expert data). Per group: number of runs and their seeds, mean ± sample std
(ddof=1) over runs of the final normalized score and of the final evaluation return, mean train
steps and mean wall time (a continued run's over all its legs); a seed counted twice in a group is noted.
Prints the table and writes, into `--out` (default: the first dir; files of these names that an earlier
report did not write there are refused, not replaced):

    report.md            markdown table, caption, and the command lines that rerun each group
                         (rebuilt from the runs' .hydra/overrides.yaml)
    report.csv           one row per group, full precision
    learning_curves.png  one subplot per dataset, one line per algo: mean over runs of the periodic
                         evaluations (normalized score, or return when there is none) ± std band, over
                         gradient updates, or over env steps where every run is online

Imports stay light (no torch/lightning); matplotlib is imported only to draw the figure.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import shlex
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_hydra.cli.entry import run_cli
from vla_hydra.cli.run_dirs import continue_command_of
from vla_hydra.core.checkpoints import RUN_DIR_CHECKPOINT
from vla_hydra.core.config import is_number
from vla_hydra.core.exceptions import VlaHydraError
from vla_hydra.core.io import atomic_path

RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "eval_results.json"  # vla_hydra.eval's (not tabled)
ENTRY_POINT = "python -m vla_hydra.train"
SCORE_KEY, RETURN_KEY = "eval/normalized_score", "eval/return_mean"
# online runs' evaluations also carry the env steps taken: their curves are drawn over those
STEP_KEY, ENV_STEPS_KEY = "step", "env_steps"
MAX_SKIPPED_LISTED = 3  # run dirs without results named one by one in the notes
MISSING = "—"
REPORT_TITLE = "# Sweep report"  # report.md's first line: marks the --out files as a report's


@dataclass
class Run:
    path: Path  # its results.json
    dataset: str
    algo: str
    env: str | None
    seed: int
    train_steps: int
    wall_seconds: float  # over all legs of a continued run where results.json knows them
    return_mean: float
    score: float | None
    history: list[dict[str, Any]]
    overrides: list[str] | None  # .hydra/overrides.yaml, None when the run dir has none
    settings: dict[str, str] | None = None  # .hydra/config.yaml flattened to dotted keys, None without one
    # the overrides of the config `settings` come from: a re-evaluation's (eval_only) are its trained run's
    config_overrides: list[str] | None = None
    env_steps: int | None = None  # online runs: the env steps the run took
    # the values of the settings that are interpolations, where they resolve outside Hydra (`trainer.max_steps:
    # ${oc.select:algo.max_updates,10000}` -> "10000"; not `${hydra:runtime.output_dir}`)
    resolved: dict[str, str] = field(default_factory=dict)


@dataclass
class Group:
    dataset: str
    algo: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)

    @property
    def score(self) -> tuple[float, float | None] | None:
        """Mean and sample std of the normalized score; None unless every run has one."""
        scores = [r.score for r in self.runs]
        return mean_std(scores) if all(s is not None for s in scores) else None

    @property
    def return_(self) -> tuple[float, float | None]:
        return mean_std([r.return_mean for r in self.runs])

    @property
    def train_steps_mean(self) -> float:
        return mean_std([r.train_steps for r in self.runs])[0]

    @property
    def env_steps_mean(self) -> float | None:
        """Online runs' env steps (their budget's unit), None unless every run of the group has them."""
        steps = [r.env_steps for r in self.runs]
        return mean_std(steps)[0] if all(s is not None for s in steps) else None

    @property
    def wall_seconds_mean(self) -> float:
        return mean_std([r.wall_seconds for r in self.runs])[0]

    @property
    def commands(self) -> list[str]:
        known = [r.overrides for r in self.runs if r.overrides is not None]
        return sweep_commands(known) if known else []


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1, as papers report over seeds); std is None for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# ---------------------------------------------------------------------------------------------- reading


_KINDS = {
    "str": ("a non-empty string", lambda v: isinstance(v, str) and v != ""),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", is_number),
    "list": ("a list", lambda v: isinstance(v, list)),
}


def _field(data: dict, path: Path, key: str, kind: str, optional: bool = False) -> Any:
    """data[key], checked; an optional key may be absent or null."""
    value = data.get(key)
    if value is None and optional:
        return None
    if key not in data:
        raise VlaHydraError(f"{path}: missing key '{key}'")
    expected, check = _KINDS[kind]
    if not check(value):
        raise VlaHydraError(f"{path} [{key}]: expected {expected}, got {value!r}")
    return value


def _wall_seconds(data: dict, path: Path) -> float:
    """A run's wall time: over all its legs (a run continued from a checkpoint), else its last leg's
    (results.json of older versions, or a continuation of a checkpoint that did not record it)."""
    all_legs = _field(data, path, "wall_seconds_all_legs", "number", optional=True)
    return all_legs if all_legs is not None else _field(data, path, "wall_seconds", "number")


def _read_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        overrides = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise VlaHydraError(f"{path}: not readable YAML ({' '.join(str(err).split())})") from err
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise VlaHydraError(f"{path}: expected a YAML list of override strings, got {overrides!r}")
    # a run continued in its own dir (`ckpt_path=<run dir>/checkpoints/last.ckpt`, Hydra keeping only the
    # last leg's overrides): how it was resumed, not what it ran; rerunning it starts afresh
    return [o for o in overrides if not _continues_own_checkpoint(o, run_dir)]


def _continues_own_checkpoint(override: str, run_dir: Path) -> bool:
    """Whether the override is a `ckpt_path=` of the run dir's own checkpoint (as resume.refuse_another_runs_dir
    tells one: `last`, or a path inside the dir)."""
    key, value = _split(override)
    if key.lstrip("+~") != "ckpt_path" or value is None:
        return False
    return value == "last" or Path(value).expanduser().resolve().is_relative_to(run_dir.resolve())


# keys of the composed config that differ between runs without making them different experiments:
# where a run was launched (cluster=, its launcher plugins and pre-emption callbacks) and its paths, and
# how it was watched (its name and tags, loggers, progress display, how often it was evaluated along the
# way, logged or checkpointed, videos); a run continued with another eval interval got a row of its own
_NOT_SETTINGS = (
    "seed",
    "ckpt_path",
    "paths.",
    "cluster.",
    "trainer.plugins",
    "callbacks.preemption",
    "callbacks.resume_state",
    "task_name",
    "tags",
    "logger.",
    "extras.",
    "eval.every_n_updates",
    "eval.video",
    "callbacks.policy_eval.",
    "callbacks.model_checkpoint.",
    "callbacks.progress_bar",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
)


def _read_settings(run_dir: Path) -> tuple[dict[str, str], dict[str, str]] | None:
    """The run's composed config (.hydra/config.yaml) as {dotted key: value text}, interpolations
    unresolved (so `${seed}` and `${paths.output_dir}` compare equal across runs), and the values of those
    interpolations that resolve without Hydra's runtime (see _compared_settings); None if unreadable."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            key = prefix[:-1]
            if not (key in _NOT_SETTINGS or key.startswith(_NOT_SETTINGS)):
                flat[key] = json.dumps(node, default=str)

    walk(config, "")
    return flat, _resolve_interpolations(config, [k for k, text in flat.items() if "${" in text])


def _resolve_interpolations(config: dict, keys: list[str]) -> dict[str, str]:
    """{key: its value's JSON text} for the keys whose interpolation resolves from the run's config alone
    (OmegaConf's resolvers and vla_hydra's). Left out: Hydra's `${hydra:...}`, and anything under `paths`
    (`${paths.data_dir}/x.hdf5`), whose `oc.env` and relative dirs are this process's, not the run's."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    resolved = {}
    try:
        cfg = OmegaConf.create({key: value for key, value in config.items() if key != "paths"})
    except OmegaConfBaseException:
        return resolved
    for key in keys:
        try:
            node = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException:
            continue
        resolved[key] = json.dumps(value, default=str)
    return resolved


def _trained_run_dir(results_path: Path, data: dict) -> Path | None:
    """The run dir whose config describes this run's experiment: its own, or for a re-evaluation
    (`eval_only=true ckpt_path=...`, whose own config is the eval command's defaults: algo=bc, ...) the
    dir that trained its checkpoint (<run dir>/checkpoints/last.ckpt); None when that dir is gone."""
    if not data.get("eval_only"):
        return results_path.parent
    checkpoint = data.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint:
        return None
    for parent in Path(checkpoint).parents[:3]:
        if (parent / ".hydra" / "config.yaml").is_file():
            # the nearest run dir can be an evaluation's (`vla_hydra.eval ... export=<its dir>/policy.ckpt`),
            # whose config says nothing of how the policy was trained
            return parent if _is_training_config(parent) else None
    return None


def _is_training_config(run_dir: Path) -> bool:
    """Whether the run dir's .hydra/config.yaml is a training run's: it has an algo, and is neither
    vla_hydra.eval's (no algo) nor an `eval_only=true` re-evaluation's."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and "algo" in config and not config.get("eval_only")


def load_run(path: Path) -> Run:
    """Read and validate one results.json (and its run's overrides); bad files name the file and the problem."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise VlaHydraError(f"{path}: cannot read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise VlaHydraError(f"{path}: not valid JSON (not UTF-8 text)") from err
    except json.JSONDecodeError as err:
        raise VlaHydraError(
            # json's "Unterminated string starting at" names a position itself
            f"{path}: not valid JSON ({err.msg.removesuffix(' at')} at line {err.lineno} column {err.colno})"
        ) from err
    if not isinstance(data, dict):
        raise VlaHydraError(f"{path}: expected a JSON object, got {type(data).__name__}")
    history = _field(data, path, "eval_history", "list", optional=True) or []
    for i, entry in enumerate(history):
        if not (
            isinstance(entry, dict) and is_number(entry.get("step")) and is_number(entry.get(RETURN_KEY))
        ):
            raise VlaHydraError(
                f"{path} [eval_history][{i}]: expected an object with numeric 'step' and '{RETURN_KEY}', got {entry!r}"
            )
        if entry.get(SCORE_KEY) is not None and not is_number(entry[SCORE_KEY]):
            raise VlaHydraError(
                f"{path} [eval_history][{i}][{SCORE_KEY}]: expected a number, got {entry[SCORE_KEY]!r}"
            )
    env = _field(data, path, "env", "str", optional=True)
    dataset = _field(data, path, "dataset", "str")
    if data.get("env_steps") is not None and env and dataset == "online":
        # online runs learn from their own experience (data=rollouts): group and title them by env;
        # an online run with a dataset (GAIL's expert data) stays with the other runs on that dataset
        dataset = f"{env} (online)"
    config_dir = _trained_run_dir(path, data)
    read = _read_settings(config_dir) if config_dir else None
    settings, resolved = read if read is not None else (None, {})
    if settings is not None and data.get("eval_only"):
        # a re-evaluation of a checkpoint is not another seed of the run that trained it: beside that
        # run (`report logs`) it is a row of its own, not a second run of one seed in the same mean
        settings["eval_only"] = "true"
    run = Run(
        path=path,
        dataset=dataset,
        algo=_field(data, path, "algo", "str"),
        env=env,
        seed=_field(data, path, "seed", "int"),
        train_steps=_field(data, path, "train_steps", "int"),
        wall_seconds=float(_wall_seconds(data, path)),
        return_mean=float(_field(data, path, "eval_return_mean", "number")),
        score=_field(data, path, "normalized_score", "number", optional=True),
        history=history,
        overrides=_read_overrides(path.parent),
        settings=settings,
        resolved=resolved,
        config_overrides=_read_overrides(config_dir) if config_dir else None,
        env_steps=data["env_steps"] if is_number(data.get("env_steps")) else None,
    )
    if history and history[-1]["step"] <= run.train_steps:
        # the final evaluation (the table's figure, over eval.episodes) ends the curve, at the step the table
        # reports; a periodic evaluation at that step (over fewer episodes) gives way to it
        final = {"step": run.train_steps, RETURN_KEY: run.return_mean}
        if run.env_steps is not None:
            final[ENV_STEPS_KEY] = run.env_steps
        if run.score is not None:
            final[SCORE_KEY] = run.score
        earlier = history[:-1] if history[-1]["step"] == run.train_steps else history
        run.history = [*earlier, final]
    return run


def find_runs(sweep_dirs: Sequence[str | Path]) -> tuple[list[Run], list[Path]]:
    """All runs under the dirs (recursively, each results.json once) and the job dirs that have no results.json
    (a training job that failed or is still running)."""
    files: dict[Path, None] = {}
    incomplete: dict[Path, None] = {}
    started: list[Path] = []  # training run dirs without results.json
    for given in sweep_dirs:
        if not str(given).strip():  # `report "$SWEEP"` with SWEEP unset: not the current dir and all below it
            raise VlaHydraError(
                f"sweep dir {str(given)!r}: empty; expected a sweep or run dir, e.g. logs/train/multiruns/<time>"
            )
        root = Path(given).expanduser().absolute()
        if not root.exists():
            raise VlaHydraError(f"sweep dir {root}: no such directory")
        if not root.is_dir():
            raise VlaHydraError(f"sweep dir {root}: not a directory")
        found = sorted(p.resolve() for p in root.rglob(RESULTS_FILE) if p.is_file())
        files.update(dict.fromkeys(found))
        # a training job dir has .hydra/ and train.log from its start; results.json only at its end
        unfinished = [
            log_file.parent.resolve()
            for log_file in sorted(root.rglob("train.log"))
            if (log_file.parent / ".hydra").is_dir() and not (log_file.parent / RESULTS_FILE).is_file()
        ]
        started += unfinished
        # a sweep dir with nothing in it (e.g. aborted before its first job) is named too
        incomplete.update(dict.fromkeys(unfinished or ([] if found else [root.resolve()])))
    if not files:
        roots = [Path(d).expanduser().absolute() for d in sweep_dirs]
        # vla_hydra.eval's eval_results.json: one checkpoint's re-evaluation under its eval seed, not a run
        evaluations = any(next(root.rglob(EVAL_RESULTS_FILE), None) for root in roots)
        # a submitit sweep's jobs write .submitit/<job id>/ logs before their run dirs exist
        queued = [root / ".submitit" for root in roots if (root / ".submitit").is_dir()]
        raise VlaHydraError(
            f"sweep dir {', '.join(map(str, roots))}: no {RESULTS_FILE} found in it or any subdirectory "
            + (
                f"(it holds vla_hydra.eval's {EVAL_RESULTS_FILE}; to table re-evaluations of several checkpoints, "
                "run `python -m vla_hydra.train experiment=eval ckpt_path=<A>,<B>` and report its sweep dir)"
                if evaluations
                # a cluster.wait=false sweep reported before its jobs ended: its run dirs exist already
                else f"yet: its {len(started)} run dir(s) have none (the jobs failed or are still running)"
                if started
                else f"yet: its jobs have not started training (their logs: {queued[0]})"
                if queued
                else "(expected run dirs written by vla_hydra.train)"
            )
        )
    runs = [load_run(p) for p in files]
    return sorted(runs, key=lambda r: (r.dataset, r.algo, r.seed, str(r.path))), list(incomplete)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """One group per (dataset, algo) and configuration: runs of one algo on one dataset that differ in
    more than the seed (a grid over lr, two budgets) are one row each, labelled with the settings that
    differ (`bc [algo.lr=0.001]`), so no mean mixes configurations."""
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.algo), Group(run.dataset, run.algo)).runs.append(run)
    return [part for key in sorted(groups) for part in _split_by_settings(groups[key])]


def _split_by_settings(group: Group) -> list[Group]:
    varying = varying_overrides(group)
    if not varying:
        return [group]
    composed = all(r.settings is not None for r in group.runs)  # as varying_overrides compares them
    compared = {key: _compared_settings(group.runs, key) for key in varying} if composed else {}

    def value(i: int, run: Run, key: str) -> str:
        if not composed:
            return str(dict(map(_split, run.config_overrides or [])).get(key, "(unset)"))
        text = compared[key][i]
        return text[1:-1] if text.startswith('"') else text  # JSON strings without quotes

    parts: dict[tuple[str, ...], list[Run]] = {}
    for i, run in enumerate(group.runs):
        parts.setdefault(tuple(value(i, run, key) for key in varying), []).append(run)
    ordered = sorted(parts, key=lambda values: tuple(map(_value_order, values)))
    labels = _labels(group.algo, list(varying), ordered, _overridden_keys(group))
    return [Group(group.dataset, label, parts[values]) for label, values in zip(labels, ordered, strict=True)]


def _value_order(text: str) -> tuple:
    """Rows in the order of their settings' values: numbers and lists of numbers by value (as text,
    `[256, 256]` came before `[64, 64]` and 0.001 before 0.0003); anything else ((unset), an interpolation)
    as text, before them."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return (1, tuple(float(v) for v in value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, (float(value),), "")
    return (0, (), text)


LABEL_VALUE_CHARS, LABEL_CHARS = 24, 60  # a label is a table cell and a legend entry


def _shorten(text: str, width: int, middle: bool = False) -> str:
    """text cut to `width` characters with an ellipsis: at the end, or in the middle (a path's file name
    and a value's last digits tell most)."""
    if len(text) <= width:
        return text
    if middle:
        return f"{text[: (width - 1) // 2]}…{text[len(text) - width // 2 :]}"
    return f"{text[: width - 1]}…"


def _label_value(key: str, text: str) -> str:
    if "${" in text:
        # an interpolation's text (`${oc.select:algo.max_updates,10000}`) is not the value the run used
        return "(interpolated)"
    if key.endswith("_target_"):
        text = text.rsplit(".", 1)[-1]  # the class name, not its module path
    return _shorten(text, LABEL_VALUE_CHARS, middle=True)


def _labels(algo: str, keys: list[str], parts: list[tuple[str, ...]], typed: set[str]) -> list[str]:
    """`algo [key=value, ...]` per part (its values of the keys that differ within the group), kept short:
    only the fewest keys that tell the parts apart, those typed on a command line (what a sweep varies)
    first, the rest an ellipsis; long values cut in the middle, a long label at its end unless that
    would make two labels equal."""

    def distinct(indexes: list[int]) -> int:  # how many parts these keys' values tell apart
        return len({tuple(values[j] for j in indexes) for values in parts})

    chosen: list[int] = []
    for i in sorted(range(len(keys)), key=lambda i: keys[i] not in typed):
        if distinct(chosen) == len(parts):
            break
        if distinct([*chosen, i]) > distinct(chosen):
            chosen.append(i)
    more = ", …" if len(chosen) < len(keys) else ""
    texts = [
        ", ".join(f"{keys[i]}={_label_value(keys[i], values[i])}" for i in chosen) + more for values in parts
    ]
    cut = [_shorten(text, LABEL_CHARS) for text in texts]
    return [f"{algo} [{text}]" for text in (cut if len(set(cut)) == len(cut) else texts)]


# ------------------------------------------------------------------------------------- command lines


def _split(override: str) -> tuple[str, str | None]:
    key, sep, value = override.partition("=")
    return (key, value) if sep else (override, None)


def sweep_commands(override_lists: Sequence[Sequence[str]]) -> list[str]:
    """The fewest command lines that rerun exactly these runs: one `-m` sweep when the runs are the full
    grid (cartesian product) of their per-key values, otherwise one command per distinct set of overrides."""
    distinct = list(dict.fromkeys(tuple(o) for o in override_lists))
    if len(distinct) == 1:
        return [" ".join([ENTRY_POINT, *map(shlex.quote, distinct[0])])]
    parsed = [[_split(o) for o in overrides] for overrides in distinct]
    keys = [k for k, _ in parsed[0]]
    same_keys = all([k for k, _ in p] == keys for p in parsed) and len(set(keys)) == len(keys)
    if same_keys and all(v is not None for p in parsed for _, v in p):
        values = [list(dict.fromkeys(p[i][1] for p in parsed)) for i in range(len(keys))]
        grid = {tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*values)}
        if grid == {tuple(p) for p in parsed}:
            tokens = [shlex.quote(f"{k}={','.join(vs)}") for k, vs in zip(keys, values, strict=True)]
            return [" ".join([ENTRY_POINT, "-m", *tokens])]
    return [" ".join([ENTRY_POINT, *map(shlex.quote, o)]) for o in distinct]


def _overridden_keys(group: Group) -> set[str]:
    """The config keys that the runs' command lines set (`+key=`, `~key` included)."""
    return {_split(o)[0].lstrip("+~") for r in group.runs for o in (r.config_overrides or [])}


def varying_overrides(group: Group) -> dict[str, list[str]]:
    """Settings other than the seed whose values differ between a group's runs (a mixed group): compared
    in the composed configs when every run has one (so `data=pendulum_mixed` typed out equals the
    default), else in the override strings."""
    if all(r.settings is not None for r in group.runs):
        configs = [r.settings for r in group.runs]
        overridden = _overridden_keys(group)
        varying = {}
        for key in dict.fromkeys(k for c in configs for k in c):
            # interpolations that stay ones (${cluster.nodes}) are not values; a key only some runs have comes
            # from a newer conf/ unless a run set it on the command line
            values = _compared_settings(group.runs, key)
            literal = dict.fromkeys(v for v in values if "${" not in v)
            if "(unset)" in literal and key not in overridden:
                del literal["(unset)"]
            if len(literal) > 1:
                varying[key] = list(literal)
        return varying
    values: dict[str, dict[str, None]] = {}
    known = [r.config_overrides for r in group.runs if r.config_overrides is not None]
    for overrides in known:
        for key, value in map(_split, overrides):
            values.setdefault(key, {})[str(value)] = None
    for key in values:  # a key missing from some runs also differs
        if any(key not in dict(map(_split, o)) for o in known):
            values[key]["(unset)"] = None
    return {k: list(v) for k, v in values.items() if k != "seed" and len(v) > 1}


def _compared_settings(runs: Sequence[Run], key: str) -> list[str]:
    """Each run's value of a composed-config key as runs are compared: its text, or for an interpolation
    the value it resolves to when every run with that text resolves it to one value. So the default budget
    (`${oc.select:algo.max_updates,10000}`) differs from `trainer.max_steps=100` (they were one mean) and
    equals `trainer.max_steps=10000` typed out, while `${seed}` (another value per run) stays as it is."""
    texts = [(r.settings or {}).get(key, "(unset)") for r in runs]
    values: dict[str, set[str | None]] = {}
    for run, text in zip(runs, texts, strict=True):
        if "${" in text:
            values.setdefault(text, set()).add(run.resolved.get(key))
    return [
        next(iter(values[text]))
        if "${" in text and len(values[text]) == 1 and None not in values[text]
        else text
        for text in texts
    ]


# ------------------------------------------------------------------------------------- learning curves


@dataclass
class Curve:
    algo: str
    steps: list[float]
    mean: list[float]
    std: list[float] | None  # None with a single run
    n: int
    x: str = STEP_KEY  # what `steps` count: gradient updates (STEP_KEY) or env steps (ENV_STEPS_KEY)


def learning_curves(groups: Sequence[Group]) -> tuple[dict[str, tuple[str, list[Curve]]], list[str]]:
    """Per dataset: the metric plotted (normalized score if every evaluation of every run of the dataset has
    one, else return) and one curve per algo over the steps that all its runs evaluated; plus notes.
    Steps are gradient updates, or env steps where every evaluation in the dataset's runs has them (online
    algorithms, whose gradient updates per env step differ by orders of magnitude: SAC vs GRPO); runs are
    matched at the gradient updates they evaluated, each point placed at their mean env steps."""
    per_dataset: dict[str, tuple[str, list[Curve]]] = {}
    notes = []
    for dataset in sorted({g.dataset for g in groups}):
        members = [g for g in groups if g.dataset == dataset]
        entries = [e for g in members for r in g.runs for e in r.history]
        key = SCORE_KEY if entries and all(e.get(SCORE_KEY) is not None for e in entries) else RETURN_KEY
        x = ENV_STEPS_KEY if entries and all(is_number(e.get(ENV_STEPS_KEY)) for e in entries) else STEP_KEY
        curves = []
        for group in members:
            # a resumed run can evaluate a step twice: its last evaluation counts
            runs = [r for r in group.runs if r.history]
            series = [{e[STEP_KEY]: e[key] for e in r.history} for r in runs]
            if not series:
                notes.append(f"{dataset} / {group.algo}: no eval_history in its runs, no learning curve")
                continue
            steps = sorted(set.intersection(*(set(s) for s in series)))
            if not steps:
                notes.append(
                    f"{dataset} / {group.algo}: its runs share no evaluation step, no learning curve"
                )
                continue
            if len(series) < len(group.runs):
                notes.append(
                    f"{dataset} / {group.algo}: learning curve over {len(series)} of its {len(group.runs)} runs "
                    "(the others have no eval_history)"
                )
            stats = [mean_std([s[step] for s in series]) for step in steps]
            stds = [sd for _, sd in stats]
            if x == ENV_STEPS_KEY:
                # seeds evaluate at the same updates; their env steps there can differ (GRPO's episode
                # lengths): each point sits at the runs' mean env steps
                env_steps = [{e[STEP_KEY]: e[ENV_STEPS_KEY] for e in r.history} for r in runs]
                xs = [mean_std([s[step] for s in env_steps])[0] for step in steps]
            else:
                xs = steps
            curves.append(
                Curve(
                    group.algo,
                    xs,
                    [m for m, _ in stats],
                    None if stds[0] is None else stds,
                    len(series),
                    x,
                )
            )
        per_dataset[dataset] = (key, curves)
    return per_dataset, notes


LEGEND_WRAP = 48  # characters per legend line; labels are at most LABEL_CHARS + the algo + " (n=..)"
LEGEND_LINE_INCHES = 0.17  # one line of a fontsize="small" legend entry, with its spacing


def _legend_label(curve: Curve) -> str:
    return textwrap.fill(f"{curve.algo} (n={curve.n})", LEGEND_WRAP)


def plot_learning_curves(curves: dict[str, tuple[str, list[Curve]]], path: Path) -> None:
    # Figure + Agg canvas directly (no pyplot): no global backend state, works headless and in-process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(curves) or ["(no runs)"]
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    # each subplot's legend sits below it (inside the figure, never over a neighbour): a row of subplots
    # is as tall as its longest legend needs, or constrained layout would have no room to place them
    legend_lines = [
        sum(_legend_label(c).count("\n") + 1 for c in curves.get(dataset, ("", []))[1])
        for dataset in datasets
    ]
    row_lines = [max(legend_lines[r * ncols : (r + 1) * ncols]) for r in range(nrows)]
    height = sum(3.6 + (0.3 + LEGEND_LINE_INCHES * lines if lines else 0) for lines in row_lines)
    fig = Figure(figsize=(4.8 * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    algos = sorted({c.algo for _, cs in curves.values() for c in cs})
    colors = {algo: f"C{i % 10}" for i, algo in enumerate(algos)}  # one colour per algo across subplots
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        key, dataset_curves = curves.get(dataset, (RETURN_KEY, []))
        for c in dataset_curves:
            ax.plot(
                c.steps,
                c.mean,
                color=colors[c.algo],
                marker="." if len(c.steps) < 30 else None,
                label=_legend_label(c),
            )
            if c.std is not None:
                low = [m - s for m, s in zip(c.mean, c.std, strict=True)]
                high = [m + s for m, s in zip(c.mean, c.std, strict=True)]
                ax.fill_between(c.steps, low, high, color=colors[c.algo], alpha=0.2, linewidth=0)
        if dataset_curves:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
        else:
            ax.text(0.5, 0.5, "no evaluation history", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(dataset, fontsize="medium")
        on_env_steps = dataset_curves and all(c.x == ENV_STEPS_KEY for c in dataset_curves)
        ax.set_xlabel("env steps" if on_env_steps else "gradient updates")
        ax.set_ylabel("normalized score" if key == SCORE_KEY else "evaluation return")
        ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


# ---------------------------------------------------------------------------------------------- writing


def _fmt(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return MISSING
    mean, std = stat
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _fmt_steps(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


COLUMNS = [
    "dataset", "algo", "n", "seeds", "normalized score", "eval return", "train steps", "env steps", "wall time (s)"
]  # fmt: skip
NUMERIC = {"n", "normalized score", "eval return", "train steps", "env steps", "wall time (s)"}


def table_rows(groups: Sequence[Group]) -> list[list[str]]:
    return [
        [
            g.dataset,
            g.algo,
            str(len(g.runs)),
            ",".join(map(str, g.seeds)),
            _fmt(g.score),
            _fmt(g.return_),
            _fmt_steps(g.train_steps_mean),
            MISSING if g.env_steps_mean is None else _fmt_steps(g.env_steps_mean),
            f"{g.wall_seconds_mean:.1f}",
        ]
        for g in groups
    ]


def text_table(groups: Sequence[Group]) -> str:
    rows = [COLUMNS, *table_rows(groups)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row):
        cells = [
            c.rjust(w) if COLUMNS[i] in NUMERIC else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def caption(groups: Sequence[Group], sweep_dirs: Sequence[Path]) -> str:
    seeds = sorted({s for g in groups for s in g.seeds})
    return (
        "Final evaluation of each run (its `results.json`): normalized score "
        "(100 · (return − random) / (expert − random), D4RL's convention; "
        f"{MISSING} where the dataset has no reference returns) and evaluation return (mean over the run's "
        "final evaluation episodes), reported as mean ± sample standard deviation (ddof=1) over the n runs "
        "(seeds) of each (dataset, algo, configuration) group; a single run shows no std. Train steps are "
        f"gradient updates, env steps an online run's steps in its envs ({MISSING} for offline runs); wall "
        "time is per run (mean), over all legs of a run continued from a checkpoint "
        "(`wall_seconds_all_legs`; the last leg's alone where that is unknown), and a re-evaluation's "
        "(`eval_only`: the checkpoint's train steps) is its evaluation's alone. "
        f"Sweep dirs: {', '.join(f'`{d}`' for d in sweep_dirs)}. "
        f"Seeds found: {', '.join(map(str, seeds))}."
    )


def markdown(groups, sweep_dirs, notes, png_name: str) -> str:
    rows = table_rows(groups)
    align = ["---:" if c in NUMERIC else "---" for c in COLUMNS]
    lines = [
        REPORT_TITLE,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        caption(groups, sweep_dirs),
        "",
        "## Commands",
        "",
        "Rebuilt from each run's `.hydra/overrides.yaml` (Hydra's own `hydra.*` overrides such as "
        "`hydra.sweep.dir` are left out).",
        "",
    ]
    for g in groups:
        lines.append(f"**{g.dataset} / {g.algo}** ({len(g.runs)} run{'s' if len(g.runs) != 1 else ''}):")
        lines.append("")
        lines += (
            ["```bash", *g.commands, "```"] if g.commands else ["(no .hydra/overrides.yaml in its run dirs)"]
        )
        lines.append("")
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    lines += [
        "## Learning curves",
        "",
        f"![learning curves]({png_name})",
        "",
        "Mean over a group's runs of its periodic evaluations (normalized score, or return where the dataset "
        "has no reference returns) at the steps all its runs evaluated (gradient updates, or env steps where "
        "every run of the dataset is online); band: ± sample std (ddof=1).",
        "",
    ]
    return "\n".join(lines)


CSV_FIELDS = [
    "dataset",
    "algo",
    "env",
    "n_runs",
    "seeds",
    "normalized_score_mean",
    "normalized_score_std",
    "eval_return_mean",
    "eval_return_std",
    "train_steps_mean",
    "env_steps_mean",
    "wall_seconds_mean",
    "commands",
    "run_dirs",
]


def csv_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    def blank(x):
        return "" if x is None else repr(float(x))

    rows = []
    for g in groups:
        score = g.score or (None, None)
        envs = sorted({r.env for r in g.runs if r.env})
        rows.append(
            {
                "dataset": g.dataset,
                "algo": g.algo,
                "env": " ".join(envs),
                "n_runs": len(g.runs),
                "seeds": " ".join(map(str, g.seeds)),
                "normalized_score_mean": blank(score[0]),
                "normalized_score_std": blank(score[1]),
                "eval_return_mean": blank(g.return_[0]),
                "eval_return_std": blank(g.return_[1]),
                "train_steps_mean": blank(g.train_steps_mean),
                "env_steps_mean": blank(g.env_steps_mean),
                "wall_seconds_mean": blank(g.wall_seconds_mean),
                "commands": "; ".join(g.commands),
                "run_dirs": ";".join(str(r.path.parent) for r in g.runs),
            }
        )
    return rows


@dataclass
class Report:
    groups: list[Group]
    notes: list[str]
    table: str
    files: dict[str, Path]


def write_report(sweep_dirs: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Read the sweeps, write report.md / report.csv / learning_curves.png into `out` (default: first dir)."""
    if not sweep_dirs:
        raise VlaHydraError("no sweep dir given")
    if out is not None and not str(out).strip():
        raise VlaHydraError(
            f"--out {str(out)!r}: empty; expected a dir to write the report into (default: the first sweep dir)"
        )
    runs, incomplete = find_runs(sweep_dirs)
    groups = group_runs(runs)
    dirs = [Path(d).expanduser().resolve() for d in sweep_dirs]
    out_dir = Path(out).expanduser().resolve() if out is not None else dirs[0]

    notes = []
    for g in groups:
        missing = sum(r.score is None for r in g.runs)
        if 0 < missing < len(g.runs):
            notes.append(
                f"{g.dataset} / {g.algo}: {missing} of {len(g.runs)} runs have no normalized_score; return only"
            )
        notes += _repeated_seed_notes(g)
    if len(incomplete) <= MAX_SKIPPED_LISTED:
        notes += [
            f"skipped {d}: no {RESULTS_FILE} "
            + (
                f"(interrupted or still running; continue it with {continue_command_of(d)})"
                if (d / RUN_DIR_CHECKPOINT).exists()
                else "(the job failed or is still running)"
            )
            for d in incomplete
        ]
    else:  # e.g. `report logs/train` over many refused runs: one line, not one per dir
        listed = ", ".join(str(d) for d in incomplete[:MAX_SKIPPED_LISTED])
        notes.append(
            f"skipped {len(incomplete)} run dirs with no {RESULTS_FILE} (failed or still running): {listed}, "
            f"and {len(incomplete) - MAX_SKIPPED_LISTED} more"
        )
    curves, curve_notes = learning_curves(groups)
    notes += curve_notes

    files = {name: out_dir / name for name in ("report.md", "report.csv", "learning_curves.png")}
    _refuse_foreign_files(files)
    try:
        with atomic_path(files["report.md"]) as tmp:
            tmp.write_text(markdown(groups, dirs, notes, files["learning_curves.png"].name))
        with atomic_path(files["report.csv"]) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows(groups))
        plot_learning_curves(curves, files["learning_curves.png"])
    except OSError as err:
        where = err.filename or out_dir
        raise VlaHydraError(f"--out {out_dir}: cannot write {where} ({err.strerror or err})") from err
    return Report(groups=groups, notes=notes, table=text_table(groups), files=files)


def _repeated_seed_notes(group: Group) -> list[str]:
    """A seed run twice in one group (the same sweep rerun and both dirs reported, `report logs/train`): one
    mean counts the runs as independent samples, which they are not (a CPU run repeats itself exactly,
    shrinking the std)."""
    by_seed: dict[int, list[Run]] = {}
    for run in group.runs:
        by_seed.setdefault(run.seed, []).append(run)
    return [
        f"{group.dataset} / {group.algo}: seed {seed} counted {len(runs)} times in its mean and std "
        f"({', '.join(str(r.path.parent) for r in runs)}); report one of them for independent seeds"
        for seed, runs in sorted(by_seed.items())
        if len(runs) > 1
    ]


def _refuse_foreign_files(files: dict[str, Path]) -> None:
    """A report overwrites only its own outputs: its three files are written together, report.md first, so
    they are its own when report.md begins as it writes it; a user's report.md (or a figure of that name) in
    the --out dir is not replaced."""
    md = files["report.md"]
    try:
        ours = md.read_text(errors="replace").startswith(REPORT_TITLE)
    except OSError:
        ours = False  # absent (then neither file beside it is ours), or unreadable
    for path in files.values():
        if path.exists() and not ours:
            raise VlaHydraError(
                f"{path}: exists and was not written by vla_hydra.report (its report.md would begin with "
                f"'{REPORT_TITLE}'); not overwriting it: pass another --out, or move the file"
            )


class _OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one `error:` line and exit code 1, like every other bad input of vla_hydra."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (usage: {' '.join(self.format_usage().split()[1:])})", file=sys.stderr)
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="python -m vla_hydra.report",
        description="Aggregate the run dirs of one or more sweeps (every results.json below them) into a "
        "table grouped by (dataset, algo, configuration): mean ± sample std (ddof=1) over seeds. Writes "
        "report.md, report.csv and learning_curves.png.",
    )
    parser.add_argument(
        "sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep or run dirs, searched recursively"
    )
    parser.add_argument("--out", default=None, help="output dir (default: the first SWEEP_DIR)")
    return parser


def _report(args: argparse.Namespace) -> Report:
    report = write_report(args.sweep_dirs, args.out)
    print(report.table)
    print()
    print(
        "mean ± sample std (ddof=1) over the n runs (seeds) of each (dataset, algo, configuration); "
        "final evaluations"
    )
    for note in report.notes:
        print(f"note: {note}")
    for path in report.files.values():
        print(f"wrote {path}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    try:
        run_cli(_report, build_parser().parse_args(argv))
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader stopped early (`... | head`): the files are written by then; without this, a traceback.
        # stdout goes to /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # as a process killed by SIGPIPE exits in a shell


if __name__ == "__main__":
    main()
