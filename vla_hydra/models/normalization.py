"""Observation normalisation and action scaling as modules with buffers, so they travel in checkpoints."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vla_hydra.core.runtime import all_gather_rows, process_group_size


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std with dataset statistics; identity when built without statistics."""

    def __init__(
        self,
        shape: Sequence[int],
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        eps: float = 1e-3,
    ):
        super().__init__()
        mean = torch.zeros(shape) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        # eps keeps near-constant features from exploding (same convention as CORL); without statistics
        # the identity is exact, so the policy sees the same inputs in training and evaluation
        std = torch.ones(shape) if std is None else torch.as_tensor(std, dtype=torch.float32) + eps
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class ActionScaler(nn.Module):
    """Maps env actions in [low, high] to [-1, 1] and back."""

    def __init__(self, low: Sequence[float], high: Sequence[float]):
        super().__init__()
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        return (2.0 * (action - self.low) / (self.high - self.low) - 1.0).clamp(-1.0, 1.0)

    def unnormalize(self, action: torch.Tensor) -> torch.Tensor:
        return self.low + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)


@torch.no_grad()
def batch_moments(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, biased variance) of the rows of `batch`, over the rows of every process when
    training runs in several (DDP/FSDP/DeepSpeed): each rank collects its own experience, and running
    statistics merged from its own rows alone would normalise differently on every rank while the
    weights they feed are shared. One all-gather per call when distributed (pooled in float64)."""
    count = torch.tensor(float(batch.shape[0]), dtype=torch.float64, device=batch.device)
    if batch.shape[0]:
        mean, var = batch.mean(0), batch.var(0, unbiased=False)
    else:  # a rank with nothing to add this time (its count weighs it out)
        mean = var = torch.zeros(batch.shape[1:], dtype=batch.dtype, device=batch.device)
    if process_group_size() == 1:
        return count, mean, var
    packed = torch.cat([count.reshape(1), mean.flatten().double(), var.flatten().double()])
    ranks = all_gather_rows(packed)
    counts, means, variances = ranks[:, :1], ranks[:, 1 : 1 + mean.numel()], ranks[:, 1 + mean.numel() :]
    total = counts.sum()
    pooled_mean = (counts * means).sum(0) / total
    pooled_var = (counts * (variances + (means - pooled_mean).square())).sum(0) / total
    return total, pooled_mean.reshape(mean.shape), pooled_var.reshape(var.shape)


@torch.no_grad()
def merge_running_moments(
    mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, batch: torch.Tensor
) -> None:
    """Merge a batch (rows along dim 0; under multi-process training, every rank's rows) into running
    mean/variance/count, in place (Chan et al.'s parallel formula: exact for any split of the data into
    batches)."""
    n, batch_mean, batch_var = batch_moments(batch)
    total = count + n
    delta = batch_mean.to(mean) - mean
    m2 = var * count.to(var) + batch_var.to(var) * n.to(var) + delta.square() * (count * n / total).to(var)
    mean.add_(delta * (n / total).to(mean))
    var.copy_(m2 / total.to(var))
    count.copy_(total)


class RunningObservationNormalizer(ObservationNormalizer):
    """Observation normalisation with statistics updated from the experience an online agent collects.

    Same interface as ObservationNormalizer (mean/std buffers, so checkpoints and inference treat both
    alike); `update(batch)` merges a batch into the running mean/variance (parallel-variance formula)
    and outputs are clipped to +-clip, as in CleanRL's/SB3's NormalizeObservation(+clip 10).
    """

    def __init__(self, shape: Sequence[int], clip: float = 10.0, eps: float = 1e-8):
        super().__init__(shape, eps=0.0)
        self.clip, self.eps = clip, eps
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        obs = obs.reshape(-1, *self.mean.shape).to(self.mean)
        merge_running_moments(self.mean, self.var, self.count, obs)
        self.std.copy_(torch.sqrt(self.var + self.eps))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs).clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (CleanRL/SB3 NormalizeReward), then
    clips. Learning signal only: evaluation returns are always raw env rewards."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.register_buffer("return_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("return_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        # per-env discounted return so far; not saved (envs restart on resume)
        self.register_buffer(
            "discounted_return", torch.zeros(num_envs, dtype=torch.float64), persistent=False
        )

    @torch.no_grad()
    def forward(self, rewards: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scaled rewards of one vector step; `done` (terminated or truncated) restarts the return, as
        SB3's VecNormalize does (gymnasium's NormalizeReward, which CleanRL uses, restarts it on
        termination only, so its return runs on across time-limit cuts: a slightly larger scale)."""
        ret = self.discounted_return * self.gamma + rewards.to(torch.float64)
        merge_running_moments(
            self.return_mean, self.return_var, self.count, ret.reshape(-1, *self.return_mean.shape)
        )
        self.discounted_return.copy_(ret * (~done).to(torch.float64))
        scaled = rewards / torch.sqrt(self.return_var + self.eps).to(rewards.dtype)
        return scaled.clamp(-self.clip, self.clip)
