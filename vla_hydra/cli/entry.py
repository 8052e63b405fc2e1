"""How an entry point runs its task: a user error becomes `error: <one line>` on stderr and exit code 1."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from vla_hydra.cli.interrupts import Terminated, _report_interruption, raise_on_sigterm
from vla_hydra.cli.job import _record_in_job_log, _sweep_job_prefix

# this process's entry-point state, the one copy every vla_hydra.cli module reads: "task_started", whether
# the entry point's own function has started (errors before it are Hydra's set-up: config, run directory,
# logging); "error_line", the line run_cli printed last; "continuation", what run_dirs kept of a continued
# run's earlier leg until its fit starts
_entry_point_state: dict[str, Any] = {"task_started": False}


def exit_with_error(message: str) -> NoReturn:
    """A refusal before anything runs: `error: <message>` as the command's one line on stderr, exit 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run_cli(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task(cfg)`; a VlaHydraError or a bad config value prints `error: <one line>` and exits 1."""
    from hydra.errors import InstantiationException

    from vla_hydra.cli.errors import _missing_arguments_line  # here: errors imports this module
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


def last_error_line() -> str | None:
    """The `error: ...` line run_cli printed last in this process (a cluster job's launcher passes it on)."""
    return _entry_point_state.get("error_line")
