"""PPO env steps/s: train.py's Lightning path vs a plain PyTorch loop running the same iteration (same
networks, vector envs, rollout and update) with no Lightning, alternated in one process; plus the env
steps PPO needs to solve CartPole-v1 through train.py.

    python benchmarks/bench_ppo.py [--steps 50000] [--rounds 3] [--solve-seeds 1] [--threads 1]

"Solved" = first periodic evaluation (10 episodes) with mean return >= 475 (CleanRL's budget: 500k
steps). JSON lines to stdout, appended to benchmarks/results/bench_ppo.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from benchmarks.common import bench_config, emit, run_header  # noqa: E402
from vla_hydra.train import train  # noqa: E402

SOLVED_RETURN = 475.0


def config(out: Path, steps: int, threads: int, extra: list[str] | None = None):
    return bench_config(
        "ppo",
        out,
        ROOT / "data",
        updates=-1,
        threads=threads,
        data="rollouts",
        extra=["env=cartpole", f"algo.total_timesteps={steps}", *(extra or [])],
    )


def plain_loop_env_steps_per_s(cfg) -> tuple[float, float]:
    """The PPO iteration driven by a bare Python loop: envs, optimizer and iterations, nothing else."""
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    algo._direct_backward = True  # no trainer: plain loss.backward()
    optimizer = algo.configure_optimizers()
    algo.envs = env.make_training_vector()
    algo.obs, _ = algo.envs.reset(seed=[cfg.seed + i for i in range(env.num_envs)])
    try:
        algo.train_iteration(optimizer)  # warm-up iteration (allocations), not timed
        start_steps, start, start_cpu = int(algo.env_steps), time.perf_counter(), time.process_time()
        while int(algo.env_steps) < algo.total_timesteps:
            algo.train_iteration(optimizer)
        steps = int(algo.env_steps) - start_steps
        return steps / (time.perf_counter() - start), steps / (time.process_time() - start_cpu)
    finally:
        algo.envs.close()


def solve_config(out: Path, seed: int, threads: int):
    """The default `algo=ppo env=cartpole` run (CleanRL's 500k budget), evaluated every 20 iterations."""
    from omegaconf import open_dict

    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        [
            "algo=ppo",
            "env=cartpole",
            f"seed={seed}",
            f"torch_threads={threads}",
            "eval.every_n_updates=320",  # 20 iterations x 16 updates = every 10240 env steps
            "trainer.enable_progress_bar=false",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def steps_to_solve(results: dict) -> int | None:
    for entry in results["eval_history"]:
        if entry["eval/return_mean"] >= SOLVED_RETURN:
            return entry["env_steps"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="env steps per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--solve-seeds", type=int, default=1, help="seeds of the 500k-step solve run (0 = skip)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = run_header(args.threads, bench="ppo_cartpole")
    lightning, plain, lightning_cpu, plain_cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):

            def run_lightning(r=r):
                cfg = config(
                    Path(tmp) / f"l{r}", args.steps, args.threads, ["callbacks.model_checkpoint=null"]
                )
                _, results = train(cfg)
                lightning.append(results["train_env_steps_per_s"])
                lightning_cpu.append(results["train_env_steps_per_cpu_s"])

            def run_plain(r=r):
                wall, cpu = plain_loop_env_steps_per_s(config(Path(tmp) / f"p{r}", args.steps, args.threads))
                plain.append(wall)
                plain_cpu.append(cpu)

            # alternate which path goes first, so neither always runs on a warmer (or busier) machine
            for run in (run_lightning, run_plain) if r % 2 == 0 else (run_plain, run_lightning):
                run()
        for metric, ours, reference in (
            ("env_steps_per_s", lightning, plain),
            ("env_steps_per_cpu_s", lightning_cpu, plain_cpu),
        ):
            emit(
                "bench_ppo",
                {
                    **header,
                    "metric": metric,
                    "env_steps": args.steps,
                    "lightning_median": statistics.median(ours),
                    "plain_median": statistics.median(reference),
                    "ratio": statistics.median(ours) / statistics.median(reference),
                    "lightning_runs": ours,
                    "plain_runs": reference,
                },
            )
        for seed in range(args.solve_seeds):
            _, results = train(solve_config(Path(tmp) / f"solve{seed}", seed, args.threads))
            emit(
                "bench_ppo",
                {
                    **header,
                    "metric": "steps_to_solve",
                    "seed": seed,
                    "steps_to_solve": steps_to_solve(results),
                    "wall_seconds": results["wall_seconds"],
                    "final_eval_return": results["eval_return_mean"],
                },
            )


if __name__ == "__main__":
    main()
