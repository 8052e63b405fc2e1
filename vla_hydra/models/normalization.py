"""Observation normalisation and action scaling as modules with buffers, so they travel in checkpoints."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
        std = torch.ones(shape) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.clone())
        # eps keeps near-constant features from exploding (same convention as CORL).
        self.register_buffer("std", std.clone() + eps)

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
