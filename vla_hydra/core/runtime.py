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
    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available:
            return torch.device("mps")
        return torch.device("cpu")
    from vla_hydra.core.exceptions import ConfigError

    expected = "expected auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ConfigError(f"device={requested}: not a torch device ({expected})") from err
    if device.type not in ("cpu", "cuda", "mps"):  # a torch device type (xpu, meta) nothing here runs on
        raise ConfigError(f"device={requested}: not a device vla_hydra runs on ({expected})")
    if device.type == "mps" and not mps_available:
        # else torch.load failed on it, and the checkpoint was called unreadable
        raise ConfigError(
            f"device={requested}: no Apple MPS device on this machine; use device=cpu (or auto)"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={requested}: no CUDA GPU on this machine; use device=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


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


def decorrelate_rngs(rank: int) -> None:
    """Give each process of a multi-process run (DDP, FSDP, DeepSpeed) its own random streams.

    Every rank seeds the same `seed` so that networks start identical; from the first training step on,
    identical streams would make every rank draw the same exploration noise, target-policy noise and
    sampled actions. All ranks hold the same RNG state when this is called; one draw from it plus the
    rank reseeds python, numpy and torch, so the streams differ by rank and repeat from run to run."""
    base = int(torch.randint(0, 2**31 - 1, ()).item())
    seed_everything(base + 1_000_003 * rank)


def process_group_size() -> int:
    """Processes in the default torch.distributed group (1 when not distributed)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` from every process, stacked: (world_size, *tensor.shape); (1, ...) when not distributed.
    A collective: every rank must call it the same number of times."""
    world_size = process_group_size()
    if world_size == 1:
        return tensor.unsqueeze(0)
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, tensor.contiguous())
    return torch.stack(gathered)


def all_gather_objects(obj) -> list:
    """`obj` (picklable) from every process, in rank order; [obj] when not distributed. A collective."""
    world_size = process_group_size()
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """`flag` or-ed over every process (just `flag` when not distributed); a collective. `device`: where
    the backend communicates (CUDA tensors for NCCL)."""
    if process_group_size() == 1:
        return flag
    return bool(all_gather_rows(torch.tensor(int(flag), device=device)).any())
