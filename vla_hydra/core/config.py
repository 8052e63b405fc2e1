"""Config-side helpers, import-light (omegaconf only): resolvers and turning config dicts into lists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The conf/ tree next to the package (editable install / source checkout). Absolute, so the entry
# points find it both under `python -m` and as console scripts.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Files shipped inside the package (e.g. behaviour-policy checkpoints): `${vla.asset:<relative path>}`.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("vla.isatty"):
        OmegaConf.register_new_resolver("vla.isatty", lambda: sys.stdout.isatty())
    if not OmegaConf.has_resolver("vla.asset"):
        OmegaConf.register_new_resolver("vla.asset", lambda relative: str(ASSETS_DIR / relative))


register_resolvers()


def instantiate_dict_values(cfg: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a config dict (callbacks, loggers); entries that are null or build None
    are skipped, so any entry can be switched off with `callbacks.<name>=null`."""
    from hydra.utils import instantiate

    objects = []
    for value in (cfg or {}).values():
        if value is not None and "_target_" in value:
            obj = instantiate(value)
            if obj is not None:
                objects.append(obj)
    return objects
