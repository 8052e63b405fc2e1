"""Logger factories whose behaviour depends on the user's machine."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_logged_in() -> bool:
    """True when wandb has credentials (env var or ~/.netrc). The key itself is never read out."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(
    save_dir: str, project: str = "vla_hydra", name: str | None = None, mode: str = "auto", **kwargs
):
    """WandbLogger that runs offline unless the user has logged in (mode=auto);
    mode=online|offline forces it."""
    from lightning.pytorch.loggers import WandbLogger

    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=(mode == "offline"), **kwargs)
