"""BC training throughput through train.py's Lightning path vs a plain PyTorch loop, plus CLI start-up.

Both paths use the same network (conf/model/mlp.yaml), the same dataset tensors, batch size, optimizer
and thread count, measured alternately in this one process; the ratio is what matters on a noisy box.

    python benchmarks/bench_bc.py [--updates 5000] [--rounds 3] [--threads 1] [--skip-cli] [--cli-repeats N]

Prints JSON lines and appends them to benchmarks/results/bench_bc.jsonl.
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
# isort: off
import vla_hydra.core.runtime  # noqa: E402, F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: on
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from benchmarks.common import bench_config, data_dir, emit, run_header  # noqa: E402
from vla_hydra.algos.bc import bc_mse_loss  # noqa: E402
from vla_hydra.train import train  # noqa: E402


def lightning_config(tmp: Path, data_dir: Path, updates: int, threads: int, device: str = "cpu"):
    return bench_config("bc", tmp, data_dir, updates, threads, device)


def plain_loop_updates_per_s(cfg, updates: int, device: str = "cpu") -> tuple[float, float]:
    """The same BC update written as a plain PyTorch loop (CORL style), timed end to end: updates per wall
    second and per second of this process's CPU time."""
    env = instantiate(cfg.env)
    spec = env.spec()
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    algo = instantiate(cfg.algo, _partial_=True)(
        spec=spec, model=instantiate(cfg.model), stats=datamodule.stats()
    )
    algo.to(device)
    actor, normalize_obs, scaler = algo.actor, algo.obs_normalizer, algo.action_scaler
    optimizer = torch.optim.Adam(actor.parameters(), lr=cfg.algo.lr, foreach=True)
    data = datamodule.buffer.data
    obs, actions = data["observations"].to(device), data["actions"].to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = cfg.data.batch_size

    def update() -> None:
        idx = torch.randint(len(obs), (batch,), generator=generator, device=device)
        loss = bc_mse_loss(actor(normalize_obs(obs[idx])), scaler.normalize(actions[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # warm-up, not timed: the first updates allocate Adam's state; train.py's figure likewise times from
    # the end of its first Lightning step (as bench_offline.py's plain loop)
    for _ in range(20):
        update()
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(updates):
        update()
    if device == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - start), updates / (time.process_time() - start_cpu)


def command_seconds(args: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--skip-cli", action="store_true", help="only the updates/s comparison")
    parser.add_argument(
        "--cli-repeats",
        type=int,
        default=None,
        help="runs of each CLI measurement (default: 5 of --cfg job, 3 of import lightning and of launch)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = run_header(args.threads, args.device)
    lines = []
    work = Path(tempfile.mkdtemp(prefix="vla_bench_"))
    dataset_dir = data_dir()

    per_step = int(lightning_config(work, dataset_dir, args.updates, args.threads).algo.updates_per_step)
    if args.updates < 2 * per_step:  # train.py times from the end of its first step
        parser.error(f"--updates {args.updates}: needs at least {2 * per_step} (2 × algo.updates_per_step)")
    plain, lightning, plain_cpu, lightning_cpu = [], [], [], []
    for r in range(args.rounds):
        cfg = lightning_config(work / f"run{r}", dataset_dir, args.updates, args.threads, args.device)
        wall, cpu = plain_loop_updates_per_s(cfg, args.updates, args.device)
        plain.append(wall)
        plain_cpu.append(cpu)
        results = train(cfg)[1]
        lightning.append(results["train_updates_per_s"])
        lightning_cpu.append(results["train_updates_per_cpu_s"])
    lines.append(
        {
            "bench": "bc_updates_per_s",
            "batch_size": 256,
            "updates": args.updates,
            "rounds": args.rounds,
            "updates_per_step": int(cfg.algo.updates_per_step),
            "plain_torch_median": statistics.median(plain),
            "lightning_median": statistics.median(lightning),
            "ratio_lightning_over_plain": statistics.median(lightning) / statistics.median(plain),
            "plain_torch_all": plain,
            "lightning_all": lightning,
            # per CPU-second of this process: robust to other load on a shared machine
            "plain_torch_per_cpu_s_median": statistics.median(plain_cpu),
            "lightning_per_cpu_s_median": statistics.median(lightning_cpu),
            "ratio_per_cpu_s": statistics.median(lightning_cpu) / statistics.median(plain_cpu),
            "plain_torch_per_cpu_s_all": plain_cpu,
            "lightning_per_cpu_s_all": lightning_cpu,
        }
    )

    if args.skip_cli:
        return _emit_all(lines, common)
    cfg_job = command_seconds(["-m", "vla_hydra.train", "--cfg", "job"], args.cli_repeats or 5)
    reference = command_seconds(["-c", "import lightning"], args.cli_repeats or 3)
    lines.append(
        {
            "bench": "cli_cfg_job_seconds",
            "median": statistics.median(cfg_job),
            "all": cfg_job,
            "reference_import_lightning_median": statistics.median(reference),
            "ratio_over_import_lightning": statistics.median(cfg_job) / statistics.median(reference),
        }
    )

    first_steps = []
    for r in range(args.cli_repeats or 3):
        out = work / f"startup{r}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "vla_hydra.train",
                "trainer.max_steps=100",
                "eval.episodes=2",
                "callbacks.policy_eval=null",
                f"paths.data_dir={dataset_dir}",
                f"hydra.run.dir={out}",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        first_steps.append(json.loads((out / "results.json").read_text())["time_to_first_step_s"])
    lines.append(
        {
            "bench": "launch_to_first_step_seconds",
            "median": statistics.median(first_steps),
            "all": first_steps,
            "reference_import_lightning_median": statistics.median(reference),
            "ratio_over_import_lightning": statistics.median(first_steps) / statistics.median(reference),
        }
    )

    _emit_all(lines, common)


def _emit_all(lines: list[dict], common: dict) -> None:
    for line in lines:
        emit("bench_bc", {**common, **line})


if __name__ == "__main__":
    main()
