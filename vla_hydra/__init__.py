"""vla_hydra: Hydra-composed experiment framework for training robot policies.

Kept import-light on purpose: config-only paths (`--help`, `--cfg job`) must not pay for torch or
lightning imports.
"""

__version__ = "0.1.0"
