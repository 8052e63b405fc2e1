"""The whole dataset as tensors on the training device; batches by uniform random indexing (as in CORL)."""

from __future__ import annotations

from collections.abc import Mapping

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

    def sample(self, batch_shape: tuple[int, ...], generator: torch.Generator | None = None) -> dict:
        """One gather for the whole (K, B) block of minibatches."""
        idx = torch.randint(self.size, batch_shape, device=self.device, generator=generator)
        return tree_map(lambda x: x[idx], self.data)

    def __len__(self) -> int:
        return self.size
