"""Explicit run/sweep dirs checked before Hydra writes into them; a continued run keeps its earlier config."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from vla_hydra.cli.entry import _entry_point_state, exit_with_error


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
                exit_with_error(_sweep_dir_holds_runs(sweep_dir, held[0]))
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
            if finished[0] != run_dir:  # a job dir of the sweep, whose own line said to add ckpt_path=
                exit_with_error(_sweep_dir_holds_runs(sweep_dir, finished[0]))
            refuse_finished_run_dir(finished[0])
        for job_dir in [run_dir] if run_dir is not None and run_dir.is_dir() else interrupted:
            refuse_run_dir_in_use(job_dir)  # first: a running run's dir is not an interrupted one
            if job_dir != run_dir:
                exit_with_error(_sweep_dir_holds_runs(sweep_dir, job_dir))
            refuse_unfinished_run_dir(job_dir)
    except CheckpointError as err:
        exit_with_error(str(err))


def _sweep_dir_holds_runs(sweep_dir: Path, run: Path) -> str:
    """A sweep into a dir that holds runs: a sweep's ckpt_path= would go to every job, so continuing one of
    them is a run of its own."""
    return (
        f"hydra.sweep.dir={sweep_dir}: holds runs ({run}); a sweep writes its own job dirs: choose a new dir "
        f"(continue one of its runs alone with {continue_command_of(run)})"
    )


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


# how a continuation's own command names its checkpoint and dir (an earlier leg's are replaced, not repeated)
_CONTINUATION_KEYS = ("ckpt_path", "hydra.run.dir", "hydra.mode")


def continue_command(run_dir: Path, checkpoint: str | Path, overrides: Sequence[str], multirun: bool) -> str:
    """The command that continues a stopped run in its own dir, to copy as it is: the run's overrides (without
    them `ckpt_path=` alone is refused as another algo=, or trains the default budget), then its checkpoint
    and dir. A sweep's job (`multirun`: its overrides may select a sweep, experiment=offline_rl or
    cluster=slurm, which would ignore hydra.run.dir and start a new sweep dir) runs alone."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _CONTINUATION_KEYS]
    own = [f"ckpt_path={checkpoint}", f"hydra.run.dir={run_dir}", *(["hydra.mode=RUN"] if multirun else [])]
    return " ".join(["python -m vla_hydra.train", *map(shlex.quote, [*kept, *own])])


def continue_command_of(run_dir: Path) -> str:
    """continue_command for a stopped run found on disk (a refusal of its dir, report's note): its overrides
    and Hydra mode as its `.hydra/` records them, none where that cannot be read."""
    from vla_hydra.core.checkpoints import RUN_DIR_CHECKPOINT

    run_dir = Path(run_dir)
    overrides = _hydra_record(run_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        overrides = []
    hydra = _hydra_record(run_dir / ".hydra" / "hydra.yaml")
    hydra = hydra.get("hydra") if isinstance(hydra, dict) else None
    multirun = isinstance(hydra, dict) and hydra.get("mode") == "MULTIRUN"
    return continue_command(run_dir, run_dir / RUN_DIR_CHECKPOINT, overrides, multirun)


def _hydra_record(path: Path) -> object:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


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
