"""A real single-node SLURM for the cluster tests, started by the project's own script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def jobs_under(root: Path) -> list[str]:
    """The SLURM jobs still queued or running that were submitted from `root` (their working dir) or below:
    one line each, `<job id> <state> <reason> <working dir>`. Every test submits from its own tmp_path, so
    this tells one test's jobs from another's (the tests run as one user: `squeue --me` lists them all)."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i %T %r %Z"], capture_output=True, text=True, timeout=60)
    return [line for line in listed.stdout.splitlines() if Path(line.split()[-1]).is_relative_to(root)]


@pytest.fixture(autouse=True)
def cancel_the_jobs_a_slurm_test_leaves(request):
    """A SLURM test's jobs end with the test: one that outlived it (a detached job finishing, a job whose test
    failed before its cleanup, a requeued job waiting for its BeginTime) ran later, beside another test's,
    and showed up in that test's checks."""
    yield
    root = request.node.funcargs.get("tmp_path")  # where each SLURM test submits from
    if "slurm" not in request.fixturenames or root is None:
        return
    left = jobs_under(root)
    if left:
        subprocess.run(["scancel", *(line.split()[0] for line in left)], capture_output=True, timeout=60)


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
