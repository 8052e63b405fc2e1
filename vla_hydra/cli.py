"""Shared entry-point plumbing: user errors become one line on stderr and exit code 1."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

# whether the entry point's own function has started (errors before it are Hydra's set-up: config,
# run directory, logging)
_entry_point_state: dict[str, Any] = {"task_started": False}


def exit_with_error(message: str) -> NoReturn:
    """A refusal before anything runs: `error: <message>` as the command's one line on stderr, exit 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run_cli(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task(cfg)`; a VlaHydraError or a bad config value prints `error: <one line>` and exits 1."""
    from hydra.errors import InstantiationException

    from vla_hydra.core.exceptions import VlaHydraError

    _entry_point_state["task_started"] = True
    _entry_point_state.pop("error_line", None)
    previous_sigterm = raise_on_sigterm()
    try:
        return task(cfg)
    except KeyboardInterrupt:  # outside Lightning's loop (evaluation, collection): no traceback
        _report_interruption(None)
    except Terminated:
        _report_interruption(None, "SIGTERM")
    except SystemExit:  # Lightning ends a fit stopped by Ctrl-C or SIGTERM this way
        from vla_hydra.training.callbacks import InterruptionRecord

        if InterruptionRecord.last is None:
            raise
        _report_interruption(InterruptionRecord.last)
    except (VlaHydraError, OmegaConfBaseException, InstantiationException) as err:
        # Hydra wraps errors raised while building a `_target_`: report the user-facing cause.
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        missing_arguments = _missing_arguments_line(err)
        if isinstance(err, InstantiationException) and not (
            isinstance(cause, VlaHydraError) or missing_arguments
        ):
            raise
        from omegaconf.errors import MissingMandatoryValue

        if missing_arguments:
            message = missing_arguments
        elif isinstance(cause, MissingMandatoryValue) and getattr(cause, "full_key", None):
            message = f"{cause.full_key}: required, not set (pass {cause.full_key}=<value>)"
        else:
            message = " ".join(str(cause).split())
        line = f"error: {_sweep_job_prefix()}{message}"
        print(line, file=sys.stderr, flush=True)
        _record_in_job_log(f"error: {message}")
        _entry_point_state["error_line"] = line
        raise SystemExit(1) from None
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


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


def last_error_line() -> str | None:
    """The `error: ...` line run_cli printed last in this process (a cluster job's launcher passes it on)."""
    return _entry_point_state.get("error_line")


class Terminated(BaseException):
    """SIGTERM outside a fit (dataset collection, evaluation), raised so that `finally` blocks run: a
    collection's temporary file is removed instead of left beside the data."""


def _sigterm_to_exception(signum, frame) -> None:
    # Lightning's fit wraps the handlers it finds in its own and stops at the next step boundary, saving
    # last.ckpt (InterruptionRecord): raising here would cut a step short, so only raise when called directly
    if signal.getsignal(signal.SIGTERM) is _sigterm_to_exception:
        raise Terminated


def raise_on_sigterm():
    """Install _sigterm_to_exception where SIGTERM still has its default action (which kills without
    cleanup); a handler someone else installed (submitit's, in SLURM jobs) is left alone. Returns the
    handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return None
    return signal.signal(signal.SIGTERM, _sigterm_to_exception)


def _report_interruption(record: dict | None, signal_name: str = "Ctrl-C") -> None:
    """One line for a run stopped by Ctrl-C or SIGTERM, saying where to continue from; exit 130 / 143.
    `record`: the fit's InterruptionRecord, None when it was stopped outside a fit (by `signal_name`)."""
    from vla_hydra.cluster.launcher import requeued_by_slurm

    signal_name = record["signal"] if record else signal_name
    code = 143 if signal_name == "SIGTERM" else 130
    requeued = code == 143 and requeued_by_slurm()
    line = _interruption_line(record, signal_name, requeued)
    if requeued:
        # not a failure: the job starts again and continues (cluster.auto_resume); the ERROR "terminated"
        # line read as one in the run's train.log
        from vla_hydra.core.logging import get_logger

        get_logger("vla_hydra").warning(line)
        raise SystemExit(code)
    print(f"{_sweep_job_prefix()}{line}", file=sys.stderr, flush=True)
    _record_in_job_log(line)
    raise SystemExit(code)


def _interruption_line(record: dict | None, signal_name: str, requeued: bool) -> str:
    """What the interruption did and where the run continues from: a `ckpt_path=` to pass, or (a SIGTERM
    that SLURM follows with a requeue) what the requeued job starts from."""
    if requeued:
        head = "preempted (SIGTERM, requeued by SLURM)"
    else:
        head = f"{'interrupted' if signal_name == 'Ctrl-C' else 'terminated'} ({signal_name})"
    if record is None:
        return f"{head} outside training: the job starts again" if requeued else head
    if record["saved"]:
        what_next = (
            "the requeued job continues from it"
            if requeued
            else f"continue with ckpt_path={record['checkpoint']}"
        )
        where = f"saved {record['checkpoint']}: {what_next}"
    elif record["checkpoint"]:
        at = f" (update {record['checkpoint_step']})" if record.get("checkpoint_step") is not None else ""
        where = (
            f"the requeued job continues from its last checkpoint{at}"
            if requeued
            else f"continue from its last checkpoint{at} with ckpt_path={record['checkpoint']}"
        )
    else:
        where = "no checkpoint had been saved yet" + (": the requeued job starts over" if requeued else "")
    return f"{head} at update {record['step']}; {where}"


def _record_in_job_log(line: str) -> None:
    """The error line also goes to the run dir's log file (train.log, ...), so a failed run's dir says
    why it failed; not to the console again, which already has it on stderr."""
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("vla_hydra", logging.ERROR, __file__, 0, line, None, None))


def hydra_job_config():
    """Hydra's config of the running job (mode, launcher, choices, ...), or None when the entry point's
    function is called from Python (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def hydra_choice(group: str) -> str | None:
    """The option chosen for a config group in a Hydra run (`algo=ppo_continuous`: ppo and ppo_continuous
    are one class, two configs), for messages, results and reports; None when called from Python."""
    hydra_cfg = hydra_job_config()
    return hydra_cfg.runtime.choices.get(group) if hydra_cfg is not None else None


def command_line_overrides() -> list[tuple[str, str]]:
    """The running job's command-line overrides as (override, key) pairs, the key without a leading
    + / ++ / ~ (`env.num_envs=8` -> ("env.num_envs=8", "env.num_envs")); none outside Hydra."""
    hydra_cfg = hydra_job_config()
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    return [(override, override.split("=", 1)[0].lstrip("+~")) for override in overrides]


def _sweep_job_prefix() -> str:
    """In a local multirun, which job failed (its line is followed by the later jobs' logs, and the
    sweep's last line repeats the first failure's)."""
    from hydra.types import RunMode

    hydra_cfg = hydra_job_config()
    # cluster launchers (cluster=slurm) name the failed job in their own report
    if (
        hydra_cfg is None
        or hydra_cfg.mode != RunMode.MULTIRUN
        or not str(hydra_cfg.launcher.get("_target_")).endswith(("BasicLauncher", "SequentialLauncher"))
    ):
        return ""
    return f"job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}): "


def expand_home_in_argv() -> None:
    """`key=~/path` with its `~` written out, as bash does for an unquoted argument: zsh and a quoted
    argument pass the `~` on, which Hydra's override grammar cannot parse. Called first by the entry
    points, so Hydra and the early checks read the expanded path."""
    for i, arg in enumerate(sys.argv[1:], start=1):
        key, given, value = arg.partition("=")
        if given and (value == "~" or value.startswith("~/")):
            sys.argv[i] = f"{key}={os.path.expanduser(value)}"


def refuse_finished_run_dir_early(argv: list[str]) -> None:
    """Before Hydra writes `.hydra/` (or multirun.yaml) into an explicit `hydra.run.dir=` /
    `hydra.sweep.dir=` that holds finished runs: the same one-line refusal train() gives
    (resume.refuse_finished_run_dir), so not even the earlier runs' configs are replaced. Continuing a
    run (`ckpt_path=`) is allowed, and keeps the config of the run's earlier leg."""
    from vla_hydra.core.checkpoints import RUN_DIR_CHECKPOINT
    from vla_hydra.core.exceptions import CheckpointError

    overrides = _plain_overrides(argv)
    run_dir = _explicit_dir(overrides, "hydra.run.dir")
    ckpt_paths = [value for key, value in overrides.items() if key.lstrip("+~") == "ckpt_path"]
    writes = not any(arg in _INFO_FLAGS or arg.startswith("--cfg") for arg in argv)
    if writes and run_dir is not None and (run_dir / "eval_results.json").is_file():
        # vla_hydra.eval's dir: a training run replaced the evaluation's .hydra/ config with its own
        exit_with_error(
            f"hydra.run.dir={run_dir}: holds an evaluation (eval_results.json); a training run writes "
            "its own config there: choose another hydra.run.dir"
        )
    if ckpt_paths:
        sweep_dir = _explicit_dir(overrides, "hydra.sweep.dir")
        if sweep_dir is not None and writes:
            # a sweep (experiment=eval, -m ckpt_path=A,B) replaces its job dirs' .hydra/ and results: into
            # a sweep dir that holds runs it is refused as a fresh sweep is (continue one run alone instead)
            held = sorted(
                p.parent
                for p in [*sweep_dir.glob("*/results.json"), *sweep_dir.glob(f"*/{RUN_DIR_CHECKPOINT}")]
            )
            if held:
                exit_with_error(
                    f"hydra.sweep.dir={sweep_dir}: holds runs ({held[0]}); a sweep writes its own job "
                    f"dirs: choose a new dir (continue one of its runs alone with "
                    f"ckpt_path={held[0] / RUN_DIR_CHECKPOINT} hydra.run.dir={held[0]})"
                )
        if run_dir is not None and writes and run_dir.is_dir():
            try:  # a live run's config must not be replaced by a command that will be refused
                from vla_hydra.cluster.resume import refuse_another_runs_dir, refuse_run_dir_in_use

                refuse_another_runs_dir(run_dir, ckpt_paths[0])
                if (run_dir / ".hydra").is_dir():
                    refuse_run_dir_in_use(run_dir)
            except CheckpointError as err:
                exit_with_error(str(err))
            if (run_dir / ".hydra").is_dir():
                keep_config_of_earlier_leg(run_dir)
        return

    run_dirs = [run_dir] if run_dir is not None else []
    sweep_dir = _explicit_dir(overrides, "hydra.sweep.dir")
    interrupted: list[Path] = []
    if sweep_dir is not None:
        run_dirs += sorted(p.parent for p in sweep_dir.glob("*/results.json"))
        # an interrupted job's dir: the job of the same number would be refused, but only after Hydra had
        # replaced its .hydra/ config (what the run was) and the sweep's multirun.yaml. Not under
        # cluster=slurm, whose jobs continue a last.ckpt they find in their own dir (cluster.auto_resume)
        if (
            writes
            and overrides.get("cluster", "local") in ("local", "submitit_local")
            and overrides.get("cluster.auto_resume", "false").lower() != "true"
        ):
            interrupted = sorted(p.parents[1] for p in sweep_dir.glob(f"*/{RUN_DIR_CHECKPOINT}"))
    finished = [d for d in run_dirs if (d / "results.json").is_file()]
    if not finished and not interrupted and (run_dir is None or not run_dir.is_dir()):
        return  # nothing there yet (and --cfg job stays free of torch/lightning imports)
    try:
        from vla_hydra.cluster.resume import (
            refuse_finished_run_dir,
            refuse_run_dir_in_use,
            refuse_unfinished_run_dir,
        )

        if finished:
            refuse_finished_run_dir(finished[0])
        for job_dir in [run_dir] if run_dir is not None and run_dir.is_dir() else interrupted:
            refuse_run_dir_in_use(job_dir)  # first: a running run's dir is not an interrupted one
            refuse_unfinished_run_dir(job_dir)
    except CheckpointError as err:
        exit_with_error(str(err))


# Hydra flags that print and exit without writing a run dir
_INFO_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--resolve",
    "--shell-completion",
)


def _plain_overrides(argv: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in argv if "=" in arg and not arg.startswith("-"))


def _explicit_dir(overrides: dict[str, str], key: str) -> Path | None:
    """The directory an override names literally (None when absent or interpolated)."""
    value = overrides.get(key)
    return Path(value) if value and "${" not in value else None


# the files Hydra writes into <run dir>/.hydra/ at the start of every run into that dir
_HYDRA_RUN_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def keep_config_of_earlier_leg(run_dir: Path) -> None:
    """A run continued in its own dir (`ckpt_path=<run>/checkpoints/last.ckpt hydra.run.dir=<run>`): Hydra
    replaces `.hydra/` with the new command's config, and the run's original settings (its first
    trainer.max_steps, its command) were lost. They are kept as `.hydra/earlier/<n>/`, n = 1 for the
    first leg."""
    hydra_dir = Path(run_dir) / ".hydra"
    if not (hydra_dir / "overrides.yaml").is_file():
        return
    earlier = hydra_dir / "earlier"
    n = 1 + sum(1 for p in earlier.glob("*") if p.name.isdigit()) if earlier.is_dir() else 1
    kept = earlier / str(n)
    kept.mkdir(parents=True, exist_ok=True)
    for name in _HYDRA_RUN_FILES:
        if (hydra_dir / name).is_file():
            (kept / name).write_bytes((hydra_dir / name).read_bytes())
    log_sizes = {path: path.stat().st_size for path in Path(run_dir).glob("*.log")}
    _entry_point_state["continuation"] = (hydra_dir, kept, log_sizes)


def continuation_started() -> None:
    """train() calls this just before its fit: from here on, a continuation's config (Hydra's new
    `.hydra/`) is the run's, whatever happens next."""
    _entry_point_state.pop("continuation", None)


@contextmanager
def undo_refused_continuation() -> Iterator[None]:
    """A continuation that ends before its fit starts (refused: another algo's checkpoint, a bad value,
    a typo Hydra rejects; or interrupted) did not continue the run: put the run's `.hydra/` and log files
    back as they were, and drop the `.hydra/earlier/<n>/` copy keep_config_of_earlier_leg made."""
    import shutil

    try:
        yield
    except BaseException:
        pending = _entry_point_state.pop("continuation", None)
        if pending is not None:
            hydra_dir, kept, log_sizes = pending
            for name in _HYDRA_RUN_FILES:
                if (kept / name).is_file():
                    os.replace(kept / name, hydra_dir / name)  # a rename: never a half-written config
            shutil.rmtree(kept, ignore_errors=True)
            if kept.parent.is_dir() and not any(kept.parent.iterdir()):
                kept.parent.rmdir()
            for path in Path(hydra_dir.parent).glob("*.log"):
                if path in log_sizes:
                    if path.stat().st_size > log_sizes[path]:
                        os.truncate(path, log_sizes[path])
                else:
                    path.unlink()
        raise


def refuse_occupied_eval_dir_early(argv: list[str], task: str = "an evaluation") -> None:
    """`vla_hydra.eval ... hydra.run.dir=<dir>` into a dir that holds a training run (results.json,
    checkpoints/) or a finished evaluation (eval_results.json): Hydra would replace that run's saved config
    and the evaluation its results. Refused in one line before anything is written. (A failed
    evaluation's dir, with only its config and log, may be reused.) In a multirun (`-m`) the same holds
    for the job dirs of an explicit `hydra.sweep.dir=` (a training sweep's <sweep dir>/<job>/).
    vla_hydra.collect (`task`: "a collection") refuses the same dirs: it replaced a training run's
    .hydra/ config with its own."""
    overrides = _plain_overrides(argv)
    multirun = any(arg in ("-m", "--multirun") for arg in argv) or overrides.get("hydra.mode") == "MULTIRUN"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = _explicit_dir(overrides, key)
    if given is None or not given.is_dir():
        return
    writes = "eval_results.json" if task == "an evaluation" else "log"
    for run_dir in sorted(p for p in given.iterdir() if p.is_dir()) if multirun else [given]:
        held = [
            name for name in ("results.json", "checkpoints", "eval_results.json") if (run_dir / name).exists()
        ]
        if held:
            where = f" ({run_dir}: {', '.join(held)})" if multirun else f" ({', '.join(held)})"
            exit_with_error(
                f"{key}={given}: holds another run{where}; {task} writes its own config and "
                f"{writes}: choose a new dir (or leave {key} at its default)"
            )


# -- Hydra's own errors (composing the config, parsing overrides) --------------------------------------
# Hydra prints these over several lines (the override, a hint, OmegaConf's key/type block, the config
# search path, a HYDRA_FULL_ERROR note). The entry points print them as one `error:` line instead.


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


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter inserted, deleted, replaced, or two neighbours swapped (epsiodes for episodes)."""
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]]
        return len(diffs) == 1 or (swapped and a[diffs[1]] == b[diffs[0]])
    short, long = sorted((a, b), key=len)
    return len(long) - len(short) == 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


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


def _argv_overrides() -> list[str]:
    """The overrides on this process's command line, as Hydra parses them (before any composition)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(sys.argv[1:])[0].overrides or []


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
