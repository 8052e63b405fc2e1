"""Imitation learning with the same number of expert samples: BC vs DAgger vs GAIL, seeded.

For each seed, an expert dataset of `--episodes` noiseless episodes of the Pendulum swing-up controller
(data=pendulum_expert, N = 200 * episodes transitions, recipe seed 2026 + seed) is collected; then
    BC:     algo=bc    on those N transitions, --bc-updates gradient updates
    DAgger: algo=dagger with algo.total_timesteps=N, i.e. N expert labels (no dataset)
    GAIL:   algo=gail  on the same N transitions, --gail-steps env steps of its own (env reward unused)
each through `python -m vla_hydra.train`, evaluated on the same held-out episodes (eval.seed, --eval-episodes).

    python benchmarks/il_vs_bc.py [--seeds 0 1 2] [--episodes 5] [--gail-steps 100000] [--out /tmp/il_vs_bc]

Prints one JSON line per run (appended to benchmarks/results/il_vs_bc.jsonl) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import check_run_dirs, emit, run_header  # noqa: E402


def commands(seed: int, episodes: int, out: Path, args) -> dict[str, list[str]]:
    data = [
        "data=pendulum_expert",
        f"data.recipe.episodes={episodes}",
        f"data.recipe.seed={2026 + seed}",
        f"data.path={out}/data/pendulum-expert-{episodes}ep-seed{seed}.hdf5",
    ]
    common = [
        f"seed={seed}",
        f"eval.episodes={args.eval_episodes}",
        "callbacks.policy_eval=null",
        "trainer.enable_progress_bar=false",
    ]
    return {
        "bc": ["algo=bc", *data, f"trainer.max_steps={args.bc_updates}", *common],
        "dagger": ["algo=dagger", f"algo.total_timesteps={200 * episodes}", *common],
        "gail": ["algo=gail", *data, f"algo.total_timesteps={args.gail_steps}", *common],
    }


def run(algo: str, overrides: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "vla_hydra.train", *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{algo} failed:\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "algo": algo,
        "seed": results["seed"],
        "eval_return_mean": results["eval_return_mean"],
        "eval_return_std": results["eval_return_std"],
        "env_steps": results["env_steps"],
        "dataset_transitions": results["dataset_transitions"],
        "train_steps": results["train_steps"],
        "wall_seconds": time.perf_counter() - start,
        "command": "python -m vla_hydra.train " + " ".join(overrides),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--episodes", type=int, default=5, help="expert episodes (N = 200 x episodes samples)"
    )
    parser.add_argument("--bc-updates", type=int, default=5000)
    parser.add_argument("--gail-steps", type=int, default=100_000)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--algos", nargs="+", default=["bc", "dagger", "gail"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/il_vs_bc"))
    args = parser.parse_args()
    # the run dirs train.py would refuse (an earlier run's), before any training rather than after some
    check_run_dirs(parser, [args.out / f"{algo}-seed{seed}" for seed in args.seeds for algo in args.algos])

    header = run_header(threads=1, bench="il_vs_bc", expert_samples=200 * args.episodes)
    rows = []
    for seed in args.seeds:
        for algo, overrides in commands(seed, args.episodes, args.out, args).items():
            if algo in args.algos:
                row = run(algo, overrides, args.out / f"{algo}-seed{seed}")
                rows.append(row)
                emit("il_vs_bc", {**header, **row})

    print(
        f"\n| algo | expert samples | env steps | eval return per seed ({args.eval_episodes} episodes) | mean ± std over seeds |"
    )
    print("|---|---|---|---|---|")
    for algo in args.algos:
        mine = [r for r in rows if r["algo"] == algo]
        returns = [r["eval_return_mean"] for r in mine]
        spread = statistics.stdev(returns) if len(returns) > 1 else 0.0
        env_steps = mine[0]["env_steps"] or "0 (offline)"
        per_seed = ", ".join(f"{x:.1f}" for x in returns)
        print(
            f"| {algo} | {200 * args.episodes} | {env_steps} | {per_seed} | {statistics.mean(returns):.1f} ± {spread:.1f} |"
        )


if __name__ == "__main__":
    main()
