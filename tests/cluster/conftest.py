"""A real single-node SLURM for the cluster tests, started by the project's own script."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT, compose_config, session_root

SLURM_SCRIPT = ROOT / "scripts" / "local_slurm.sh"
SLURM_STARTED_MARK = "slurm-started-by-tests"


def _slurm(command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SLURM_SCRIPT), command], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """Uses a running local SLURM (CI starts it in .ci/run) or starts one; one started here is stopped when
    the whole test session ends (tests/conftest.py), not when one xdist worker's tests end.

    Skips only when SLURM cannot be started here (no root/apt); under CI that is a failure."""
    from vla_hydra.core.io import exclusive_lock

    mark = session_root(tmp_path_factory) / SLURM_STARTED_MARK
    # xdist workers: the first starts it, the others wait here and find it running
    with exclusive_lock(mark.with_suffix(".lock")):
        if _slurm("status", timeout=60).returncode != 0:
            started = _slurm("start")
            if started.returncode != 0:
                reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
                if os.environ.get("CI"):
                    pytest.fail(f"local SLURM did not start: {reason}")
                pytest.skip(f"local SLURM cannot be started on this machine: {reason}")
            mark.touch()


def stop_slurm_started_by_tests(root) -> None:
    mark = root / SLURM_STARTED_MARK
    if mark.exists():
        _slurm("stop", timeout=120)
        mark.unlink()


@pytest.fixture(scope="session")
def pendulum_data(data_dir):
    """The default dataset, collected once before jobs that would otherwise each collect it."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    cfg = compose_config("train")
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
    instantiate(cfg.data).prepare_data()
    return data_dir
