"""Gradient updates/s per offline algorithm: train.py's Lightning path vs a plain PyTorch loop running the
same `update` (same networks, data, batch, optimizers) with no Lightning, measured alternately in one process.

    python benchmarks/bench_offline.py [--algos bc,td3bc,iql,cql,dt] [--updates 2000] [--rounds 3]
                                       [--data pendulum_mixed] [--device cpu|cuda] [--threads 1]

The plain loop is what a CORL-style script does: sample a random minibatch from device tensors, call the
update, repeat. JSON lines to stdout, appended to benchmarks/results/bench_offline.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
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
from benchmarks.corl_style import CORL_STYLE, load_d4rl_tensors, sample  # noqa: E402
from vla_hydra.train import train  # noqa: E402


def config(algo: str, data: str, out: Path, updates: int, threads: int, device: str, extra: list[str]):
    return bench_config(algo, out, data_dir(), updates, threads, device, data=data, extra=extra)


def plain_loop_updates_per_s(cfg, updates: int, device: str) -> tuple[float, float]:
    """(updates per wall second, per second of this process's CPU time) of the plain loop."""
    env = instantiate(cfg.env)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    algo = instantiate(cfg.algo, _partial_=True)(
        spec=env.spec(), model=instantiate(cfg.model), stats=datamodule.stats()
    )
    algo.to(device)
    algo._direct_backward = True  # no trainer: plain loss.backward()
    optimizers = algo.configure_optimizers()
    buffer = datamodule.buffer.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    batch_size = cfg.data.batch_size
    # the fields the update reads, as train.py's datamodule gathers them (its `batch_keys`; None: all)
    keys = getattr(algo, "batch_keys", None)
    fields = {} if keys is None else {"keys": keys}
    warmup = 20  # first updates allocate optimizer state; Lightning's figure skips nothing, so keep it small
    for _ in range(warmup):
        algo.update(buffer.sample((batch_size,), generator, **fields), optimizers)
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(updates):
        algo.update(buffer.sample((batch_size,), generator, **fields), optimizers)
    if device == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - start), updates / (time.process_time() - start_cpu)


def corl_style_updates_per_s(cfg, algo: str, updates: int, device: str) -> float:
    """The same algorithm as CORL's script writes it (benchmarks/corl_style.py) on the same dataset file,
    batch size and device: the speed a user switching from CORL compares against."""
    import numpy as np

    spec = instantiate(cfg.env).spec()
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    data = load_d4rl_tensors(datamodule.path, spec.action_low, spec.action_high, device)
    np.random.seed(0)
    torch.manual_seed(0)
    agent = CORL_STYLE[algo](data["observations"].shape[1], data["actions"].shape[1], device)
    batch_size = int(cfg.data.batch_size)
    for _ in range(20):  # warm-up, as the plain loop
        agent.update(sample(data, batch_size))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(sample(data, batch_size))
    if device == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - start)


# Default updates per timed run on a 2-core CPU: enough Lightning steps to amortise start-up, small enough
# that the slow algorithms (CQL ~5 updates/s, DT ~1 update/s at batch 256) finish in minutes.
DEFAULT_UPDATES = {"bc": 2000, "td3bc": 2000, "iql": 1500, "cql": 150, "dt": 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="bc,td3bc,iql,cql,dt")
    parser.add_argument("--data", default="pendulum_mixed")
    parser.add_argument("--updates", type=int, default=None, help="per run; default per algo (CPU-sized)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time train.py with algo.compile_losses=true (algos that support it), same rounds",
    )
    parser.add_argument(
        "--corl",
        action="store_true",
        help=f"also time the CORL-style script's update ({', '.join(CORL_STYLE)}; benchmarks/corl_style.py)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    available = {p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml")}
    common = run_header(args.threads, args.device, data=args.data)
    work = Path(tempfile.mkdtemp(prefix="vla_bench_offline_"))
    # every algo's --updates checked before the first is timed (train.py times from the end of its first step)
    for algo in [a for a in args.algos.split(",") if a in available]:
        updates = args.updates or DEFAULT_UPDATES.get(algo, 1000)
        cfg = config(algo, args.data, work, updates, args.threads, args.device, args.override)
        per_step = int(cfg.algo.updates_per_step)
        if updates < 2 * per_step:
            parser.error(
                f"--updates {updates}: {algo} needs at least {2 * per_step} (2 × algo.updates_per_step)"
            )
    for algo in args.algos.split(","):
        if algo not in available:
            emit(
                "bench_offline",
                {**common, "bench": "offline_updates_per_s", "algo": algo, "skipped": "no conf/algo"},
            )
            continue
        updates = args.updates or DEFAULT_UPDATES.get(algo, 1000)
        plain, lightning, compiled, corl = [], [], [], []
        plain_cpu, lightning_cpu = [], []  # per CPU-second: robust to other load on a shared machine
        for r in range(args.rounds):
            cfg = config(
                algo, args.data, work / f"{algo}{r}", updates, args.threads, args.device, args.override
            )
            wall, cpu = plain_loop_updates_per_s(cfg, updates, args.device)
            plain.append(wall)
            plain_cpu.append(cpu)
            results = train(cfg)[1]
            lightning.append(results["train_updates_per_s"])
            lightning_cpu.append(results["train_updates_per_cpu_s"])
            if args.corl and algo in CORL_STYLE:
                corl.append(corl_style_updates_per_s(cfg, algo, updates, args.device))
            if args.compile and "compile_losses" in cfg.algo:
                compiled_overrides = [*args.override, "algo.compile_losses=true"]
                cfg_compiled = config(
                    algo,
                    args.data,
                    work / f"{algo}{r}c",
                    updates,
                    args.threads,
                    args.device,
                    compiled_overrides,
                )
                # throughput is timed from the end of the first Lightning step: compilation is excluded
                compiled.append(train(cfg_compiled)[1]["train_updates_per_s"])
        line = {
            **common,
            "bench": "offline_updates_per_s",
            "algo": algo,
            "batch_size": int(cfg.data.batch_size),
            "updates": updates,
            "rounds": args.rounds,
            "updates_per_step": int(cfg.algo.updates_per_step),
            "plain_loop_median": statistics.median(plain),
            "lightning_median": statistics.median(lightning),
            "ratio_lightning_over_plain": statistics.median(lightning) / statistics.median(plain),
            "plain_loop_all": plain,
            "lightning_all": lightning,
            "plain_loop_per_cpu_s_median": statistics.median(plain_cpu),
            "lightning_per_cpu_s_median": statistics.median(lightning_cpu),
            "ratio_per_cpu_s": statistics.median(lightning_cpu) / statistics.median(plain_cpu),
            "plain_loop_per_cpu_s_all": plain_cpu,
            "lightning_per_cpu_s_all": lightning_cpu,
        }
        if corl:
            line["corl_style_median"] = statistics.median(corl)
            line["ratio_lightning_over_corl_style"] = statistics.median(lightning) / statistics.median(corl)
            line["corl_style_all"] = corl
        if compiled:
            line["lightning_compiled_median"] = statistics.median(compiled)
            line["ratio_compiled_over_plain"] = statistics.median(compiled) / statistics.median(plain)
            line["lightning_compiled_all"] = compiled
        emit("bench_offline", line)


if __name__ == "__main__":
    main()
