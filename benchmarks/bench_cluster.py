"""Cluster overheads, as a user runs them (CLI subprocesses), JSON lines:

1. sweep: wall time of an N-job BC sweep (`-m seed=0..N-1`) submitted to the local single-node SLURM
   (cluster=slurm, 1 CPU per job, so 2 jobs run at once on 2 cores) vs the same sweep run locally by
   Hydra's basic launcher (cluster=local, one job after another); ratio = slurm / local.
2. ddp: BC samples/s (gradient updates/s x batch x processes) with trainer=ddp on 2 CPU processes
   (gloo) vs 1 process, same per-process batch, 1 torch thread per process.
3. ddp_online: PPO on CartPole, env steps/s of all processes together (each rank runs its own 4 envs;
   the budget counts both ranks' steps) with trainer=ddp on 2 processes vs 1 process, same budget.

    python benchmarks/bench_cluster.py [--jobs 4] [--updates 1000] [--ddp-updates 3000] [--ppo-steps 51200] [--reps 1]

Needs root for the local SLURM (scripts/local_slurm.sh start); without it the sweep part is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import emit, run_header  # noqa: E402

NAME = "bench_cluster"
SMALL = ["eval.episodes=2", "callbacks.policy_eval=null", "trainer.enable_progress_bar=false"]


def train_cli(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vla_hydra.train", *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: bench_cluster: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def bench_sweep(work: Path, data_dir: Path, jobs: int, updates: int, reps: int) -> None:
    slurm = ["bash", str(ROOT / "scripts/local_slurm.sh")]
    # a SLURM this benchmark starts is stopped again at its end; one that was running is left running
    already_running = subprocess.run([*slurm, "status"], capture_output=True).returncode == 0
    status = subprocess.run([*slurm, "start"], capture_output=True, text=True)
    if status.returncode != 0:
        emit(
            NAME,
            {**run_header(threads=1), "bench": "sweep", "skipped": status.stderr.strip().splitlines()[-1:]},
        )
        return
    try:
        _time_sweeps(work, data_dir, jobs, updates, reps)
    finally:
        if not already_running:
            subprocess.run([*slurm, "stop"], capture_output=True)


def _time_sweeps(work: Path, data_dir: Path, jobs: int, updates: int, reps: int) -> None:
    seeds = ",".join(str(s) for s in range(jobs))
    common = [f"seed={seeds}", f"trainer.max_steps={updates}", f"paths.data_dir={data_dir}", *SMALL]
    walls: dict[str, list[float]] = {"local": [], "slurm": []}
    job_seconds: dict[str, list[float]] = {"local": [], "slurm": []}
    for rep in range(reps):
        for cluster in ("local", "slurm"):
            root = work / f"sweep-{cluster}-{rep}"
            walls[cluster].append(
                train_cli("-m", f"cluster={cluster}", f"paths.root_dir={root}", *common, cwd=work)
            )
            results = [json.loads(p.read_text()) for p in root.glob("logs/train/multiruns/*/*/results.json")]
            assert len(results) == jobs, f"{cluster}: {len(results)} of {jobs} results"
            job_seconds[cluster].append(sum(r["wall_seconds"] for r in results))
    local, slurm = statistics.median(walls["local"]), statistics.median(walls["slurm"])
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    emit(
        NAME,
        {
            **run_header(threads=1, slurm=version),
            "bench": "sweep",
            "jobs": jobs,
            "updates_per_job": updates,
            "reps": reps,
            "local_wall_s": round(local, 2),
            "slurm_wall_s": round(slurm, 2),
            "slurm_over_local": round(slurm / local, 3),
            # time inside train() summed over jobs; the rest is start-up, submission and polling
            "local_job_seconds_sum": round(statistics.median(job_seconds["local"]), 2),
            "slurm_job_seconds_sum": round(statistics.median(job_seconds["slurm"]), 2),
        },
    )


def bench_ddp(work: Path, data_dir: Path, updates: int, reps: int) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}
    batch = 256
    for rep in range(reps):
        for processes, trainer in ((1, "trainer=cpu"), (2, "trainer=ddp")):
            run = work / f"ddp{processes}-{rep}"
            train_cli(
                trainer, f"trainer.max_steps={updates}", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}",
                f"data.batch_size={batch}", *SMALL, cwd=work,
            )  # fmt: skip
            result = json.loads((run / "results.json").read_text())
            rates[processes].append(result["train_updates_per_s"] * batch * processes)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    emit(
        NAME,
        {
            **run_header(threads=1),
            "bench": "ddp",
            "algo": "bc",
            "updates": updates,
            "batch_per_process": batch,
            "reps": reps,
            "samples_per_s_1proc": round(one),
            "samples_per_s_ddp2": round(two),
            "ddp2_over_1proc": round(two / one, 3),
        },
    )


def bench_ddp_online(work: Path, data_dir: Path, env_steps: int, reps: int) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(reps):
        for processes, trainer in ((1, "trainer=cpu"), (2, "trainer=ddp")):
            run = work / f"ppo{processes}-{rep}"
            train_cli(
                "algo=ppo", "env=cartpole", trainer, f"algo.total_timesteps={env_steps}",
                f"paths.data_dir={data_dir}", f"hydra.run.dir={run}", *SMALL, cwd=work,
            )  # fmt: skip
            result = json.loads((run / "results.json").read_text())
            assert result["env_steps"] >= env_steps
            rates[processes].append(result["train_env_steps_per_s"])
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    emit(
        NAME,
        {
            **run_header(threads=1),
            "bench": "ddp_online",
            "algo": "ppo",
            "env": "CartPole-v1",
            "env_steps": env_steps,
            "reps": reps,
            "env_steps_per_s_1proc": round(one),
            "env_steps_per_s_ddp2": round(two),
            "ddp2_over_1proc": round(two / one, 3),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--updates", type=int, default=1000, help="BC updates per sweep job")
    parser.add_argument("--ddp-updates", type=int, default=3000)
    parser.add_argument("--ppo-steps", type=int, default=51200, help="PPO env steps per ddp_online run")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--only", choices=["sweep", "ddp", "ddp_online"], default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        # collect the dataset once, outside the timings
        train_cli(
            "debug=fdr", f"paths.data_dir={data_dir}", f"hydra.run.dir={work / 'warmup'}", *SMALL, cwd=work
        )
        if args.only in (None, "sweep"):
            bench_sweep(work, data_dir, args.jobs, args.updates, args.reps)
        if args.only in (None, "ddp"):
            bench_ddp(work, data_dir, args.ddp_updates, args.reps)
        if args.only in (None, "ddp_online"):
            bench_ddp_online(work, data_dir, args.ppo_steps, args.reps)


if __name__ == "__main__":
    main()
