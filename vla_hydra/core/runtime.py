"""Process-wide runtime settings: device selection, seeding and torch threads, each in one place."""

from __future__ import annotations

import os
import random

# Set before torch is imported anywhere: with OpenMP's default busy-waiting, 2 threads on a small
# shared VM make small-model throughput collapse.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def select_device(requested: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Env seeds are passed explicitly at reset."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_torch_threads(num_threads: int | None) -> None:
    """Intra-op threads for torch; None keeps torch's default."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


def get_rng_states() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states, for checkpoints (plain types and tensors only,
    so `torch.load(weights_only=True)`, Lightning's default, accepts them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `get_rng_states` returned."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"].cpu() if hasattr(states["torch"], "cpu") else states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])
