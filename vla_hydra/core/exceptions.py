"""Errors a user can act on. Each message is one line naming the file/field/option and what was expected."""

from __future__ import annotations


class VlaHydraError(Exception):
    """Base class: caught by the entry points and printed as a single line with a non-zero exit."""


class ConfigError(VlaHydraError):
    """A config value is missing or invalid."""


class DatasetError(VlaHydraError):
    """A dataset file is missing, unreadable or inconsistent."""

    def __init__(self, path, field: str | None, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"dataset {where}: {problem}")


class CheckpointError(VlaHydraError):
    """A checkpoint is missing or was not written by vla_hydra."""


class OutputError(VlaHydraError):
    """A result, dataset or checkpoint cannot be written where it was asked to go."""
