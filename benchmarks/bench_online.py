"""Online RL speed: env steps/s through train.py's Lightning path vs a plain PyTorch loop of the same
algorithm (same networks, env, update) measured alternately in one process, and env steps to solve.

    python benchmarks/bench_online.py [--algos sac] [--rounds 2] [--threads 1] [--device cpu|cuda]
                                      [--skip-solve]

One function per algorithm (`BENCHES`); each emits JSON lines to stdout, appended to
benchmarks/results/bench_online.jsonl.

SAC (Pendulum-v1, CleanRL defaults unless noted):
- `sac_env_steps_per_s`: `--sac-steps` env steps with `--sac-learning-starts` random ones first (both
  paths identical), periodic evaluation off; per wall second and per CPU second of the process (the
  latter is what to compare on a machine shared with other jobs). The plain loop is CleanRL's shape: act, step the env,
  store in the replay buffer, one update round per env step, using the module's own `explore_step`
  and `update` with no Trainer around them.
- `sac_steps_to_solve`: the default config (learning_starts 5000) evaluated every `--solve-eval-every`
  updates (10 episodes); stops at the first evaluation with mean return >= -250 (budget 20k steps).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from benchmarks.common import bench_config, emit, run_header  # noqa: E402
from vla_hydra.train import train  # noqa: E402

NAME = "bench_online"
PENDULUM_SOLVED = -250.0


class StopWhenSolved(L.Callback):
    """Stops training after the first periodic evaluation whose mean return reaches `threshold`."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from vla_hydra.training.callbacks import PolicyEvaluation

        for callback in trainer.callbacks:
            if isinstance(callback, PolicyEvaluation) and callback.history:
                if callback.history[-1]["eval/return_mean"] >= self.threshold:
                    trainer.should_stop = True


class ProcessTime(L.Callback):
    """CPU seconds of this process over the fit loop (first training batch to train end): unlike wall
    time it barely moves when other jobs share the CPU. The latest fit's figures are class attributes."""

    seconds: float | None = None
    env_steps: int = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._start, self._start_steps = time.process_time(), int(pl_module.env_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        ProcessTime.seconds = time.process_time() - self._start
        ProcessTime.env_steps = int(pl_module.env_steps) - self._start_steps


def online_config(algo: str, env: str, out: Path, threads: int, device: str, extra: list[str]):
    """train.py's config for an online run: budget in env steps, no gradient-update limit."""
    return bench_config(
        algo,
        out,
        ROOT / "data",
        updates=-1,
        threads=threads,
        device=device,
        data="rollouts",
        extra=[f"env={env}", *extra],
    )


def sac_plain_loop_env_steps_per_s(cfg, device: str) -> float:
    """CleanRL-shaped loop around the same SAC module: no Trainer, no callbacks, no logging."""
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model), stats=None)
    algo.to(device)
    algo._direct_backward = True  # no trainer: plain loss.backward()
    optimizer = algo.configure_optimizers()
    algo.envs = env.make_training_vector()
    algo.obs, _ = algo.envs.reset(seed=[cfg.seed + i for i in range(algo.num_envs)])
    algo.replay_buffer = algo.make_replay_buffer()
    start, cpu_start = time.perf_counter(), time.process_time()
    steps = 0
    while steps < algo.total_timesteps:
        algo.explore_step(random_actions=steps < algo.learning_starts)
        steps += algo.num_envs
        if steps > algo.learning_starts and len(algo.replay_buffer) >= algo.batch_size:
            algo.update(algo.replay_buffer.sample((algo.batch_size,)), optimizer)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    algo.envs.close()
    return steps / elapsed, steps / cpu


def bench_sac(args, common: dict, work: Path) -> None:
    extra = [
        f"algo.total_timesteps={args.sac_steps}",
        f"algo.learning_starts={args.sac_learning_starts}",
        *args.override,
    ]
    extra.append("+callbacks.process_time._target_=benchmarks.bench_online.ProcessTime")
    plain, lightning, plain_cpu, lightning_cpu = [], [], [], []
    for r in range(args.rounds):
        cfg = online_config("sac", "pendulum", work / f"sac{r}", args.threads, args.device, extra)
        wall, cpu = sac_plain_loop_env_steps_per_s(cfg, args.device)
        plain.append(wall)
        plain_cpu.append(cpu)
        lightning.append(train(cfg)[1]["train_env_steps_per_s"])
        # Hydra instantiated benchmarks.bench_online.ProcessTime, not this script's __main__ copy
        timed = importlib.import_module("benchmarks.bench_online").ProcessTime
        lightning_cpu.append(timed.env_steps / timed.seconds)
    emit(
        NAME,
        {
            **common,
            "bench": "sac_env_steps_per_s",
            "env": cfg.env.id,
            "env_steps": args.sac_steps,
            "learning_starts": args.sac_learning_starts,
            "update_rounds": args.sac_steps - args.sac_learning_starts,
            "batch_size": int(cfg.algo.batch_size),
            "updates_per_step": int(cfg.algo.updates_per_step),
            "rounds": args.rounds,
            "plain_loop_median": statistics.median(plain),
            "lightning_median": statistics.median(lightning),
            "ratio_lightning_over_plain": statistics.median(lightning) / statistics.median(plain),
            "plain_loop_all": plain,
            "lightning_all": lightning,
            # env steps per CPU-second of the process: robust to other jobs on a shared machine
            "plain_loop_cpu_median": statistics.median(plain_cpu),
            "lightning_cpu_median": statistics.median(lightning_cpu),
            "ratio_cpu_lightning_over_plain": statistics.median(lightning_cpu) / statistics.median(plain_cpu),
            "plain_loop_cpu_all": plain_cpu,
            "lightning_cpu_all": lightning_cpu,
        },
    )
    if args.skip_solve:
        return
    cfg = online_config(
        "sac",
        "pendulum",
        work / "sac_solve",
        args.threads,
        args.device,
        [
            "algo.total_timesteps=20000",
            f"+callbacks.policy_eval={{_target_: vla_hydra.training.callbacks.PolicyEvaluation, "
            f"env: '${{env}}', every_n_updates: {args.solve_eval_every}, episodes: 10, seed: '${{eval.seed}}'}}",
            f"+callbacks.stop_when_solved={{_target_: benchmarks.bench_online.StopWhenSolved, "
            f"threshold: {PENDULUM_SOLVED}}}",
            *args.override,
        ],
    )
    _, results = train(cfg)
    solved = [h for h in results["eval_history"] if h["eval/return_mean"] >= PENDULUM_SOLVED]
    emit(
        NAME,
        {
            **common,
            "bench": "sac_steps_to_solve",
            "env": cfg.env.id,
            "threshold": PENDULUM_SOLVED,
            "budget": 20000,
            "learning_starts": int(cfg.algo.learning_starts),
            "eval_every_n_updates": args.solve_eval_every,
            "env_steps_to_solve": solved[0]["env_steps"] if solved else None,
            "wall_seconds_to_solve": results["wall_seconds"] if solved else None,
            "final_eval_return_mean": results["eval_return_mean"],
            "eval_history": [
                (h["env_steps"], round(h["eval/return_mean"], 1)) for h in results["eval_history"]
            ],
        },
    )


# one entry per online algorithm
BENCHES = {"sac": bench_sac}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default=",".join(BENCHES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sac-steps", type=int, default=3000, help="env steps per timed SAC run")
    parser.add_argument("--sac-learning-starts", type=int, default=1000)
    parser.add_argument("--solve-eval-every", type=int, default=500, help="updates between evaluations")
    parser.add_argument("--skip-solve", action="store_true", help="speed only, no steps-to-solve run")
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = run_header(args.threads, args.device)
    work = Path(tempfile.mkdtemp(prefix="vla_bench_online_"))
    for algo in args.algos.split(","):
        if algo not in BENCHES:
            parser.error(f"--algos: no benchmark for {algo!r}; choose from {sorted(BENCHES)}")
        BENCHES[algo](args, common, work)


if __name__ == "__main__":
    main()
