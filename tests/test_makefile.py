"""The Makefile's clean targets, run by make in a copy of the checkout's layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _checkout(root: Path) -> None:
    shutil.copyfile(MAKEFILE, root / "Makefile")
    for f in [
        "logs/train/runs/r0/checkpoints/last.ckpt",
        "logs/train/runs/r0/results.json",
        "benchmarks/results/bench_bc.jsonl",
        "data/pendulum-mixed-v0.hdf5",
        ".pytest_cache/v",
        "vla_hydra/__pycache__/x.pyc",
    ]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")


def _make(root: Path, target: str) -> str:
    return subprocess.run(["make", target], cwd=root, check=True, capture_output=True, text=True).stdout


def test_clean_removes_caches_and_keeps_runs_and_results(tmp_path):
    _checkout(tmp_path)
    _make(tmp_path, "clean")
    assert not (tmp_path / ".pytest_cache").exists()
    assert not (tmp_path / "vla_hydra/__pycache__").exists()
    # a user's trained runs, benchmark history and datasets survive a cache clean
    assert (tmp_path / "logs/train/runs/r0/checkpoints/last.ckpt").exists()
    assert (tmp_path / "benchmarks/results/bench_bc.jsonl").exists()
    assert (tmp_path / "data/pendulum-mixed-v0.hdf5").exists()


def test_clean_runs_deletes_run_outputs_and_says_which(tmp_path):
    _checkout(tmp_path)
    out = _make(tmp_path, "clean-runs")
    assert "deleting logs/ (2 files)" in out
    assert "deleting benchmarks/results/ (1 files)" in out
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "benchmarks/results").exists()
    assert (tmp_path / "data/pendulum-mixed-v0.hdf5").exists()
