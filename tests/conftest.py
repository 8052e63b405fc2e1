"""Shared fixtures: a composed, shrunk training config (compose API) and a session-wide dataset cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

# Before anything imports torch: OMP_WAIT_POLICY=PASSIVE (set by this module) keeps small-model ops from
# collapsing under OpenMP spin-waiting on a shared 2-core machine.
import vla_hydra.core.runtime  # noqa: F401  (first torch import of the session: sets OMP_WAIT_POLICY)
from vla_hydra.core.config import compose_config  # noqa: F401  (also registers the configs' resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Small-model tests on a shared 2-core machine are fastest and steadiest with 1 thread (train()
    sets `torch_threads: 1` too)."""
    import torch

    torch.set_num_threads(1)


def session_root(tmp_path_factory) -> Path:
    """The temp dir of the whole test session: under pytest-xdist each worker's basetemp is a
    sub-directory of the controller's (`popen-gw<N>`)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_sessionfinish(session):
    """Services a test started for the session are stopped once, by the controller, after every worker."""
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: others may still use them
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    from tests.cluster.conftest import stop_slurm_started_by_tests

    stop_slurm_started_by_tests(session_root(factory))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Generated datasets are cached here for the whole test session (collected once on first use)."""
    return tmp_path_factory.mktemp("data")


def small_train_config(tmp_path: Path, data_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    cfg = compose_config(
        "train",
        [
            "trainer.max_steps=200",
            "eval.episodes=4",
            "eval.every_n_updates=100",
            "callbacks.policy_eval.episodes=2",
            "trainer.enable_progress_bar=false",
            *(overrides or []),
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


@pytest.fixture
def cfg_train(tmp_path, data_dir) -> DictConfig:
    return small_train_config(tmp_path, data_dir)


def run_module(
    module: str, *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` the way a user does; output captured (no TTY)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_python(
    code: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -c code` in a fresh interpreter (import side effects, files left in cwd; `env`: extra
    environment variables); output captured."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


def random_pendulum_batch(n: int) -> dict:
    """A minibatch shaped like the datamodule's for Pendulum-v1 (obs 3, torque in [-2, 2]), for update tests."""
    import torch

    return {
        "observations": torch.randn(n, 3),
        "actions": torch.rand(n, 1) * 4 - 2,
        "rewards": -torch.rand(n),
        "next_observations": torch.randn(n, 3),
        "terminals": torch.zeros(n),
        "timeouts": torch.zeros(n),
    }
