"""Trajectory segments for sequence models (Decision Transformer): the whole dataset as device tensors,
segments by random indexing (one gather per block, as CORL samples transitions).

Layout: the D4RL rows stay flat (N rows, episodes back to back) with one all-zero padding row appended
at index N. A segment starting at row `s` reads rows s, s+1, ..., s+T-1; rows past the end of s's
episode are redirected to the padding row and get mask 0. So segments are RIGHT-padded and never cross
an episode boundary. Right padding means that, under causal attention, no real step ever attends to a
padding token, so the model needs no padding mask, and evaluation can feed a shorter context (the first
steps of an episode) exactly as those steps appear in training segments that start at t=0.

Start rows are uniform over all N rows, i.e. uniform over (episode, t) pairs, which is the same as
picking an episode with probability proportional to its length and then a uniform start in it (CORL).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) row indices of each episode, `ends` exclusive; episodes end at terminal|timeout rows.

    Rows after the last terminal/timeout (a cut final episode, which vla_hydra's reader refuses for
    files) form one more episode, so every row belongs to exactly one episode.
    """
    done = np.asarray(terminals, bool).reshape(-1) | np.asarray(timeouts, bool).reshape(-1)
    n = len(done)
    ends = np.flatnonzero(done) + 1
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]])
    return starts.astype(np.int64), ends.astype(np.int64)


class TrajectoryBuffer:
    """Fixed dataset served as trajectory segments of `segment_length` steps.

    `sample(batch_shape)` returns tensors shaped (*batch_shape, T, ...):
        observations  raw observations (0 at padding)
        actions       env-unit actions (0 at padding)
        returns_to_go undiscounted sum of the episode's rewards from that step on (0 at padding)
        timesteps     int64 position of the step within its episode (0 at padding)
        mask          float 1 for real steps, 0 for padding (padding only ever follows real steps)
    """

    def __init__(
        self, arrays: Mapping[str, np.ndarray], segment_length: int, device: torch.device | str = "cpu"
    ):
        self.segment_length = int(segment_length)
        if self.segment_length < 1:
            raise ValueError(f"segment_length={segment_length}: must be >= 1")
        observations = np.asarray(arrays["observations"], dtype=np.float32)
        actions = np.asarray(arrays["actions"], dtype=np.float32)
        rewards = np.asarray(arrays["rewards"], dtype=np.float64).reshape(-1)
        n = len(observations)
        starts, ends = episode_bounds(arrays["terminals"], arrays["timeouts"])
        lengths = ends - starts
        row_start = np.repeat(starts, lengths)
        row_end = np.repeat(ends, lengths)
        # returns-to-go via prefix sums (float64, so long episodes lose nothing): R_t = S[end] - S[t]
        prefix = np.concatenate([[0.0], np.cumsum(rewards)])
        returns_to_go = prefix[row_end] - prefix[np.arange(n)]

        def padded(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.concatenate([x, np.zeros((1, *x.shape[1:]), x.dtype)]))

        self.data = {
            "observations": padded(observations),
            "actions": padded(actions),
            "returns_to_go": padded(returns_to_go.astype(np.float32)),
            "timesteps": padded(np.arange(n, dtype=np.int64) - row_start),
        }
        self.row_end = torch.as_tensor(row_end)  # exclusive end row of each row's episode
        self.offsets = torch.arange(self.segment_length)
        self.size = n
        self.num_episodes = len(starts)
        self.device = torch.device("cpu")
        if torch.device(device) != self.device:
            self._move(device)

    def _move(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.data = {k: v.to(self.device) for k, v in self.data.items()}
        self.row_end = self.row_end.to(self.device)
        self.offsets = self.offsets.to(self.device)

    def to(self, device: torch.device | str) -> TrajectoryBuffer:
        if torch.device(device) == self.device:
            return self
        moved = copy.copy(self)
        moved._move(device)
        return moved

    def sample(self, batch_shape: tuple[int, ...], generator: torch.Generator | None = None) -> dict:
        """One gather per key for the whole (*batch_shape) block of segments; no python loop per sample."""
        start = torch.randint(self.size, tuple(batch_shape), device=self.device, generator=generator)
        rows = start.unsqueeze(-1) + self.offsets  # (*batch, T)
        real = rows < self.row_end[start].unsqueeze(-1)
        rows = torch.where(real, rows, self.size)  # past the episode's end -> the zero padding row
        batch = {key: value[rows] for key, value in self.data.items()}
        batch["mask"] = real.to(torch.float32)
        return batch

    def __len__(self) -> int:
        return self.size
