"""Cross-check of algo=td3bc against an independent TD3+BC written the way CORL's td3_bc.py is.

The reference (benchmarks/corl_style.py) shares no code with vla_hydra's TD3+BC: plain nn.Sequential
networks, two separate critics, separate Adam optimizers, and CORL's update order (critic step first, then on every
second update the actor step against the freshly updated critic). Both train on the same D4RL-format
file for the same number of updates and are evaluated on the same seeded episodes, so a gap between
them that persists across seeds points at the implementation and a shared trend points at the data.

    python benchmarks/td3bc_crosscheck.py --data hopper_sac_medium_replay --env hopper \
        [--seeds 0 1 2] [--updates 50000] [--eval-every 10000] [--out /tmp/td3bc_crosscheck]

One JSON line per evaluation (appended to benchmarks/results/td3bc_crosscheck.jsonl), then a table.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import check_run_dirs, emit, run_header  # noqa: E402
from benchmarks.corl_style import BATCH, CorlTD3BC, batch_at, load_d4rl_tensors  # noqa: E402
from vla_hydra.envs.evaluation import rollout_episodes  # noqa: E402
from vla_hydra.envs.factory import normalized_score  # noqa: E402

EVAL_SEED = 100000  # eval.seed in conf/train.yaml


def reference_run(path: Path, env_cfg, seed: int, updates: int, eval_every: int, episodes: int):
    """CORL-style TD3+BC (benchmarks/corl_style.py); yields (updates, eval return mean) every eval_every
    updates."""
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    env = instantiate(env_cfg)
    spec = env.spec()
    low, high = (torch.as_tensor(b, dtype=torch.float32) for b in (spec.action_low, spec.action_high))
    data = load_d4rl_tensors(path, spec.action_low, spec.action_high)
    mean, std = data["obs_mean"], data["obs_std"]
    agent = CorlTD3BC(data["observations"].shape[1], data["actions"].shape[1])

    def policy(raw_obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            a = agent.act((torch.as_tensor(raw_obs, dtype=torch.float32) - mean) / std)
        return ((a + 1) / 2 * (high - low) + low).numpy()

    n = data["observations"].shape[0]
    for it in range(1, updates + 1):
        # torch indices (not CORL's numpy ones), as in this cross-check's first results in the README
        agent.update(batch_at(data, torch.randint(0, n, (BATCH,))))
        if it % eval_every == 0:  # the same episodes (seeds) as train.py's evaluations
            yield it, rollout_episodes(policy, env, episodes, seed=EVAL_SEED).return_mean


def vla_hydra_run(args, seed: int, out: Path):
    """algo=td3bc through train.py; (updates, eval return mean) from its periodic evaluations."""
    run_dir = out / f"vla_hydra_seed{seed}"
    cmd = [
        sys.executable, "-m", "vla_hydra.train", "algo=td3bc", f"data={args.data}", f"env={args.env}",
        f"seed={seed}", f"trainer.max_steps={args.updates}", f"eval.episodes={args.episodes}",
        # the curve is the periodic evaluations': as many episodes as the reference's evaluations
        f"callbacks.policy_eval.episodes={args.episodes}",
        f"eval.every_n_updates={args.eval_every}", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"vla_hydra td3bc failed:\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    history = json.loads((run_dir / "results.json").read_text())["eval_history"]
    return [(h["step"], h["eval/return_mean"]) for h in history if h["step"] > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hopper_sac_medium_replay")
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=50000)
    parser.add_argument("--eval-every", type=int, default=10000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/td3bc_crosscheck"))
    args = parser.parse_args()
    # the run dirs train.py would refuse (an earlier run's), before any training: the first seed's
    # reference would otherwise run, and its lines be appended, before the first refusal
    check_run_dirs(parser, [args.out / f"vla_hydra_seed{seed}" for seed in args.seeds])
    torch.set_num_threads(1)

    from hydra.utils import instantiate

    from vla_hydra.core.config import compose_config

    cfg = compose_config("train", [f"data={args.data}", f"env={args.env}", "algo=td3bc"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # collected from its recipe on first use, as train.py does
    datamodule.setup("fit")  # its metadata: the file's own reference returns
    path = datamodule.path
    env = instantiate(cfg.env)
    # the references train.py scores with (the env's published ones, else the file's); None: raw returns
    references = datamodule.reference_returns(env.ref_returns, env.time_limit)

    def normalized(ret: float) -> float | None:
        return normalized_score(ret, references)

    header = run_header(1, data=args.data, updates=args.updates)
    finals: dict[str, list[float]] = {"reference": [], "vla_hydra": []}
    for seed in args.seeds:
        for impl in ("reference", "vla_hydra"):
            start = time.perf_counter()
            if impl == "reference":
                curve = list(reference_run(path, cfg.env, seed, args.updates, args.eval_every, args.episodes))
            else:
                curve = vla_hydra_run(args, seed, args.out)
            for step, ret in curve:
                emit("td3bc_crosscheck", {**header, "impl": impl, "seed": seed, "updates": step,
                                          "return_mean": ret, "normalized": normalized(ret)})  # fmt: skip
            finals[impl].append(normalized(curve[-1][1]) if references else curve[-1][1])
            print(f"# {impl} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    score = "normalized" if references else "return (no reference returns to normalize with)"
    print(f"\n| implementation | {score} at {args.updates} updates (seeds {args.seeds}) | mean ± std |")
    print("|---|---|---|")
    for impl, values in finals.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " / ".join(f"{v:.1f}" for v in values)
        print(f"| {impl} | {cells} | {statistics.mean(values):.1f} ± {spread:.1f} |")


if __name__ == "__main__":
    main()
