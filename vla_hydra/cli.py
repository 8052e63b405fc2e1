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
        message = " ".join(str(cause).split())
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
