"""The running Hydra job: its config, group choices, command-line overrides and log file.

Outside Hydra (an entry point's function called from tests or notebooks) there is none: no config, no
overrides, no choices.
"""

from __future__ import annotations


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


def _record_in_job_log(line: str) -> None:
    """The error line also goes to the run dir's log file (train.log, ...), so a failed run's dir says
    why it failed; not to the console again, which already has it on stderr."""
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("vla_hydra", logging.ERROR, __file__, 0, line, None, None))
