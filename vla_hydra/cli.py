"""Shared entry-point plumbing: user errors become one line on stderr and exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException


def run_cli(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task(cfg)`; a VlaHydraError or a bad config value prints `error: <one line>` and exits 1."""
    from hydra.errors import InstantiationException

    from vla_hydra.core.exceptions import VlaHydraError

    try:
        return task(cfg)
    except (VlaHydraError, OmegaConfBaseException, InstantiationException) as err:
        # Hydra wraps errors raised while building a `_target_`: report the user-facing cause.
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if isinstance(err, InstantiationException) and not isinstance(cause, VlaHydraError):
            raise
        from omegaconf.errors import MissingMandatoryValue

        if isinstance(cause, MissingMandatoryValue) and getattr(cause, "full_key", None):
            message = f"{cause.full_key}: required, not set (pass {cause.full_key}=<value>)"
        else:
            message = " ".join(str(cause).split())
        print(f"error: {_sweep_job_prefix()}{message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def hydra_job_config():
    """Hydra's config of the running job (mode, launcher, choices, ...), or None when the entry point's
    function is called from Python (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _sweep_job_prefix() -> str:
    """In a local multirun, which job failed (Hydra's basic launcher stops the sweep at the first failing
    job and reports no more than the exception)."""
    from hydra.types import RunMode

    hydra_cfg = hydra_job_config()
    # cluster launchers (cluster=slurm) name the failed job in their own report
    if (
        hydra_cfg is None
        or hydra_cfg.mode != RunMode.MULTIRUN
        or "BasicLauncher" not in str(hydra_cfg.launcher.get("_target_"))
    ):
        return ""
    return f"job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}): "


def refuse_finished_run_dir_early(argv: list[str]) -> None:
    """Before Hydra writes `.hydra/` (or multirun.yaml) into an explicit `hydra.run.dir=` /
    `hydra.sweep.dir=` that holds finished runs: the same one-line refusal train() gives
    (resume.refuse_finished_run_dir), so not even the earlier runs' configs are replaced. Continuing a
    run (`ckpt_path=`) is allowed."""
    overrides = dict(arg.split("=", 1) for arg in argv if "=" in arg and not arg.startswith("-"))
    if any(key.lstrip("+~") == "ckpt_path" for key in overrides):
        return
    from pathlib import Path

    from vla_hydra.core.exceptions import CheckpointError

    run_dirs = []
    if overrides.get("hydra.run.dir") and "${" not in overrides["hydra.run.dir"]:
        run_dirs.append(Path(overrides["hydra.run.dir"]))
    if overrides.get("hydra.sweep.dir") and "${" not in overrides["hydra.sweep.dir"]:
        run_dirs += sorted(p.parent for p in Path(overrides["hydra.sweep.dir"]).glob("*/results.json"))
    finished = [d for d in run_dirs if (d / "results.json").is_file()]
    if finished:
        try:
            from vla_hydra.cluster.resume import refuse_finished_run_dir

            refuse_finished_run_dir(finished[0])
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
