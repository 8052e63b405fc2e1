"""The whole dataset as tensors on the training device; batches by uniform random indexing (as in CORL)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import torch

from vla_hydra.data.batch import tree_map


def transitions_from_d4rl(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """D4RL arrays -> (s, a, r, s', terminal) transitions.

    Files without `next_observations` get them from the next row of the same episode. The last step
    of a timed-out episode has no successor in the file, so it is dropped; a terminal step keeps its
    own observation as a placeholder because terminal targets never bootstrap.
    """
    obs = arrays["observations"]
    terminals = arrays["terminals"].astype(bool)
    timeouts = arrays["timeouts"].astype(bool)
    keep = np.ones(len(obs), dtype=bool)
    if "next_observations" in arrays:
        next_obs = arrays["next_observations"]
    else:
        next_obs = np.concatenate([obs[1:], obs[-1:]], axis=0)
        next_obs[terminals] = obs[terminals]
        keep = ~(timeouts & ~terminals)
    return {
        "observations": obs[keep].astype(np.float32),
        "actions": arrays["actions"][keep].astype(np.float32),
        "rewards": arrays["rewards"][keep].astype(np.float32).reshape(-1),
        "next_observations": next_obs[keep].astype(np.float32),
        "terminals": terminals[keep].astype(np.float32),
        "timeouts": timeouts[keep].astype(np.float32),
    }


class TensorBuffer:
    """Fixed dataset of transitions held as device tensors."""

    def __init__(self, data: Mapping[str, np.ndarray | torch.Tensor], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.data = tree_map(lambda x: torch.as_tensor(x).to(self.device), dict(data))
        self.size = len(self.data["actions"])

    def to(self, device: torch.device | str) -> TensorBuffer:
        return self if torch.device(device) == self.device else TensorBuffer(self.data, device)

    def sample(
        self,
        batch_shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        keys: Collection[str] | None = None,
    ) -> dict:
        """One gather for the whole (K, B) block of minibatches: of every field, or of `keys` only (the
        same rows: the indices do not depend on which fields are gathered)."""
        idx = torch.randint(self.size, batch_shape, device=self.device, generator=generator)
        data = self.data if keys is None else {key: self.data[key] for key in keys}
        return tree_map(lambda x: x[idx], data)

    def __len__(self) -> int:
        return self.size


class ReplayBuffer:
    """Fixed-capacity ring of transitions held as device tensors (off-policy RL: SAC).

    `fields` maps each key to its per-transition shape, e.g. {"observations": (3,), "rewards": ()}.
    Storage is allocated once (torch.empty: pages are only touched as the ring fills); `add` writes a
    block of transitions at the write position, wrapping around and overwriting the oldest once full;
    `sample` is one uniform random gather over the filled part, as CleanRL/SB3 sample theirs.
    """

    def __init__(
        self,
        capacity: int,
        fields: Mapping[str, tuple[int, ...]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if int(capacity) < 1:
            raise ValueError(f"capacity={capacity}: expected a positive integer")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.data = {
            key: torch.empty((self.capacity, *shape), dtype=dtype, device=self.device)
            for key, shape in fields.items()
        }
        self.position = 0  # next write index
        self.size = 0  # filled entries, <= capacity
        self.added = 0  # entries ever added (kept across a resume): more than `size` once the ring overwrote

    def add(self, transitions: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Append a block of n transitions (every field with leading dim n)."""
        block = {key: torch.as_tensor(transitions[key]) for key in self.data}
        n = len(next(iter(block.values())))
        self.added += n
        if n > self.capacity:  # only the newest `capacity` would survive anyway
            block = {key: value[-self.capacity :] for key, value in block.items()}
            n = self.capacity
        end = self.position + n
        for key, value in block.items():
            store = self.data[key]
            value = value.to(device=self.device, dtype=store.dtype).reshape(n, *store.shape[1:])
            if end <= self.capacity:
                store[self.position : end] = value
            else:  # wrap around
                first = self.capacity - self.position
                store[self.position :] = value[:first]
                store[: n - first] = value[first:]
        self.position = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_shape: tuple[int, ...], generator: torch.Generator | None = None) -> dict:
        """A batch of uniformly drawn stored transitions, each field shaped (*batch_shape, ...)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, batch_shape, device=self.device, generator=generator)
        return {key: value[idx] for key, value in self.data.items()}

    def __len__(self) -> int:
        return self.size

    @property
    def overwritten(self) -> bool:
        """Whether the ring has dropped its oldest entries to make room."""
        return self.added > self.size

    def chronological(self, num_streams: int = 1) -> dict[str, np.ndarray]:
        """The stored transitions as numpy arrays, oldest first, grouped by stream.

        A vector env adds one row per env each step, so with a capacity that is a multiple of
        `num_streams` row i always belongs to env i % num_streams; grouping keeps each env's steps
        contiguous, as an episode-ordered (D4RL-style) file needs.
        """
        if self.capacity % num_streams:
            raise ValueError(f"capacity {self.capacity} is not a multiple of num_streams={num_streams}")
        # a full ring's oldest row is at the write position; a partial one starts at 0
        order = np.arange(self.size)
        if self.size == self.capacity:
            order = np.roll(order, -self.position)
        order = np.concatenate([order[order % num_streams == k] for k in range(num_streams)])
        index = torch.as_tensor(order, device=self.device)
        return {key: value[index].cpu().numpy() for key, value in self.data.items()}

    def state_dict(self) -> dict:
        """The filled part (on CPU) and the ring position: what a resumed run needs."""
        return {
            "capacity": self.capacity,
            "position": self.position,
            "size": self.size,
            "added": self.added,
            "data": {key: value[: self.size].cpu() for key, value in self.data.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        if set(state["data"]) != set(self.data):
            raise ValueError(f"replay buffer fields {sorted(state['data'])} != {sorted(self.data)}")
        saved_size = int(state["size"])
        data = dict(state["data"])
        if saved_size == int(state.get("capacity", saved_size)) and saved_size != self.capacity:
            # a full ring's oldest entry is at its saved write position: put the entries oldest first
            # (restored as they lay into a larger ring, the replay dataset written from it (chronological)
            # ran the newest rows before the oldest, splicing episodes together)
            data = {key: value.roll(-int(state["position"]), dims=0) for key, value in data.items()}
        self.size = min(saved_size, self.capacity)
        if saved_size > self.capacity:
            # a smaller ring (a lower algo.buffer_size on resume): the newest `capacity` entries, as `add`
            # keeps them (this used to end the resumed run in a traceback)
            data = {key: value[-self.capacity :] for key, value in data.items()}
        self.added = int(state.get("added", saved_size))  # states saved before 2026-11-27 lack it
        # entries lie oldest first from index 0 unless the ring keeps its saved layout (same capacity)
        same_layout = saved_size == self.capacity == int(state.get("capacity", saved_size))
        self.position = int(state["position"]) % self.capacity if same_layout else self.size % self.capacity
        for key, value in data.items():
            self.data[key][: self.size] = value.to(self.device, self.data[key].dtype)
