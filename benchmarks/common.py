"""What every benchmark shares: the run header (date, machine, versions, threads, device) and the
JSON-lines output (stdout + benchmarks/results/<name>.jsonl).

Environment variables (tests/benchmarks sets both, so a test run writes nothing into the repository):
- VLA_BENCH_RESULTS_DIR: where the <name>.jsonl files are appended (default benchmarks/results/);
- VLA_HYDRA_DATA_DIR: the dataset cache the benchmarks read and collect into (default <repo>/data/),
  the same variable conf/paths/default.yaml reads for train.py."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    return Path(os.environ.get("VLA_BENCH_RESULTS_DIR") or ROOT / "benchmarks" / "results")


def data_dir() -> Path:
    """The dataset cache: VLA_HYDRA_DATA_DIR (as train.py) or the repository's data/."""
    return Path(os.environ.get("VLA_HYDRA_DATA_DIR") or ROOT / "data")


def run_header(threads: int, device: str = "cpu", **extra) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        **extra,
    }


def emit(name: str, line: dict) -> None:
    """Print one JSON line and append it to <results_dir()>/<name>.jsonl (benchmarks/results/ by default)."""
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(line)
    print(text, flush=True)
    with open(directory / f"{name}.jsonl", "a") as f:
        f.write(text + "\n")


def check_run_dirs(parser, run_dirs: list[Path]) -> None:
    """Exit with the parser's usage error where train.py would refuse a run dir (it holds an earlier
    finished or interrupted run): a benchmark that runs several trainings checks all of them first."""
    from vla_hydra.cluster.resume import refuse_finished_run_dir, refuse_unfinished_run_dir
    from vla_hydra.core.exceptions import CheckpointError

    for run_dir in run_dirs:
        try:
            refuse_finished_run_dir(run_dir)
            refuse_unfinished_run_dir(run_dir)
        except CheckpointError as error:
            parser.error(f"{error} (choose another --out)")


def bench_config(
    algo: str,
    out: Path,
    data_dir: Path,
    updates: int,
    threads: int,
    device: str = "cpu",
    data: str = "pendulum_mixed",
    extra: list[str] | None = None,
):
    """The training config a benchmark times: `updates` gradient updates, periodic env evaluation off."""
    from vla_hydra.core.config import compose_config

    cfg = compose_config(
        "train",
        [
            f"algo={algo}",
            f"data={data}",
            "trainer=gpu" if device == "cuda" else "trainer=cpu",
            f"trainer.max_steps={updates}",
            "callbacks.policy_eval=null",
            "trainer.enable_progress_bar=false",
            "eval.episodes=2",
            f"torch_threads={threads}",
            *(extra or []),
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.data_dir = str(data_dir)
    return cfg
