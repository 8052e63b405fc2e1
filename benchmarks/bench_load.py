"""Dataset load time: a 1M-transition hopper-shaped D4RL file -> the device tensors training samples from.

Ours is `OfflineDataModule.setup()` (read_d4rl_hdf5 + validation + transitions_from_d4rl + TensorBuffer,
plus the observation statistics) followed by the move to the training device, i.e. exactly what
train.py does before the first step. The reference, measured in the same run on the same file, is the
usual D4RL route: read every array with h5py, then build transitions row by row in a Python loop the
way d4rl.qlearning_dataset does (timeout rows skipped, next observation = next row), then tensors.

Two files (obs 11, act 3, 1000-step episodes ending in timeouts): without next_observations (D4RL v0/v1
style) and with them (v2 style; the reference ignores them, as qlearning_dataset does).

    python benchmarks/bench_load.py [--transitions 1000000] [--repeats 5] [--threads 1] [--device cpu]

Prints JSON lines and appends them to benchmarks/results/bench_load.jsonl.
"""

from __future__ import annotations

import argparse
import shutil
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
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import emit, run_header  # noqa: E402
from vla_hydra.data.buffer import TensorBuffer, transitions_from_d4rl  # noqa: E402
from vla_hydra.data.d4rl_format import read_d4rl_hdf5, write_d4rl_hdf5  # noqa: E402
from vla_hydra.data.datamodule import OfflineDataModule  # noqa: E402

TARGET_S = 2.0
OBS_DIM, ACT_DIM, EPISODE = 11, 3, 1000


def hopper_like_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes of EPISODE steps, each ending in a timeout; next_observations[i] = observations[i+1]
    inside an episode and an unseen final state at its end (as a real rollout has)."""
    rng = np.random.default_rng(seed)
    episodes = -(-n // EPISODE)
    states = rng.standard_normal((episodes, EPISODE + 1, OBS_DIM), dtype=np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[EPISODE - 1 :: EPISODE] = True
    timeouts[-1] = True
    return {
        "observations": states[:, :-1].reshape(-1, OBS_DIM)[:n],
        "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(n, dtype=np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
        "next_observations": states[:, 1:].reshape(-1, OBS_DIM)[:n],
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    datamodule = OfflineDataModule(path=str(path))
    datamodule.setup("fit")
    buffer = datamodule.buffer.to(device)
    sync(device)
    return buffer.data


def reference(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """d4rl.get_dataset + d4rl.qlearning_dataset (timeouts present) + tensors, written out here."""
    with h5py.File(path, "r") as f:
        data = {key: f[key][:] for key in f if isinstance(f[key], h5py.Dataset)}
    observations, next_observations, actions, rewards, terminals = [], [], [], [], []
    for i in range(len(data["rewards"]) - 1):
        if data["timeouts"][i]:  # the successor row starts the next episode: skip the transition
            continue
        observations.append(data["observations"][i].astype(np.float32))
        next_observations.append(data["observations"][i + 1].astype(np.float32))
        actions.append(data["actions"][i].astype(np.float32))
        rewards.append(data["rewards"][i].astype(np.float32))
        terminals.append(bool(data["terminals"][i]))
    arrays = {
        "observations": np.array(observations),
        "actions": np.array(actions),
        "next_observations": np.array(next_observations),
        "rewards": np.array(rewards),
        "terminals": np.array(terminals, dtype=np.float32),
    }
    tensors = {key: torch.as_tensor(value).to(device) for key, value in arrays.items()}
    sync(device)
    return tensors


def timed(fn, *args, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous copy before the next run
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return times, result


def phases(path: Path) -> dict[str, float]:
    """One extra, untimed-in-the-median pass split into the steps of setup(), to see where time goes."""
    out, start = {}, time.perf_counter()
    arrays, _ = read_d4rl_hdf5(path)
    out["read_and_validate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    transitions = transitions_from_d4rl(arrays)
    out["transitions_s"] = time.perf_counter() - start
    start = time.perf_counter()
    TensorBuffer(transitions)
    out["tensor_buffer_s"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.transitions < 2:
        parser.error(
            f"--transitions {args.transitions}: needs at least 2 (1 transition per file, at the least)"
        )
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    common = run_header(args.threads, args.device, numpy=np.__version__, h5py=h5py.__version__)
    work = Path(tempfile.mkdtemp(prefix="vla_bench_load_"))
    lines = []
    try:
        arrays = hopper_like_arrays(args.transitions)
        for variant, with_next in [("no_next_observations", False), ("with_next_observations", True)]:
            path = work / f"hopper_like_{variant}.hdf5"
            write_d4rl_hdf5(
                path,
                {k: v for k, v in arrays.items() if with_next or k != "next_observations"},
                {"env_id": "Hopper-v5"},
            )
            ours_times, ours_data = timed(ours, path, device, repeats=args.repeats)
            ref_times, ref_data = timed(reference, path, device, repeats=args.repeats)
            # same transitions where the two definitions agree (every episode here ends in a timeout):
            # without next_observations both drop each episode's last row
            if not with_next:
                for key, value in ref_data.items():
                    assert torch.equal(ours_data[key], value.reshape(ours_data[key].shape)), key
            lines.append(
                {
                    "bench": "load_d4rl_hdf5_to_tensors",
                    "variant": variant,
                    "transitions_in_file": args.transitions,
                    "file_mb": round(path.stat().st_size / 2**20, 1),
                    "ours_transitions": len(ours_data["rewards"]),
                    "reference_transitions": len(ref_data["rewards"]),
                    "repeats": args.repeats,
                    "ours_median_s": statistics.median(ours_times),
                    "reference_median_s": statistics.median(ref_times),
                    "speedup_over_reference": statistics.median(ref_times) / statistics.median(ours_times),
                    "target_s": TARGET_S,
                    "meets_target": statistics.median(ours_times) <= TARGET_S,
                    "ours_all": ours_times,
                    "reference_all": ref_times,
                    "ours_phases_one_run": phases(path),
                }
            )
            del ours_data, ref_data
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in lines:
        emit("bench_load", {**common, **line})


if __name__ == "__main__":
    main()
