"""Dataset statistics that algorithms may need (observation normalisation, reward scaling by return range)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class DatasetStats:
    """Computed once from the dataset; what an algorithm keeps of it travels in its checkpoint buffers."""

    obs_mean: torch.Tensor | None = None
    obs_std: torch.Tensor | None = None
    episode_return_min: float | None = None
    episode_return_max: float | None = None
    num_transitions: int = 0


def episode_returns(rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Sum of rewards per episode, episodes ending at terminal or timeout rows (D4RL files end with one).
    Rows after the last such row (a cut episode) count in no episode. CORL's return range cuts at
    terminals and every 1000 steps instead of timeouts: the same episodes in the locomotion files, not
    in medium-replay files, whose timeouts can fall between those 1000-step marks."""
    ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool))
    starts = np.concatenate([[0], ends[:-1] + 1])
    sums = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    return sums[ends + 1] - sums[starts]


def return_range_reward_scale(stats: DatasetStats | None, scale: float = 1000.0) -> float:
    """IQL/CORL locomotion reward normalisation factor: scale / (max episode return - min episode
    return). 1.0 when the dataset's returns are unknown or all equal."""
    if stats is None or stats.episode_return_min is None or stats.episode_return_max is None:
        return 1.0
    span = stats.episode_return_max - stats.episode_return_min
    return scale / span if span > 0 else 1.0
