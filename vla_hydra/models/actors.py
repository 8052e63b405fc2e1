"""Stochastic actors for offline RL. Like DeterministicActor (models/mlp.py) they map normalised
observations to actions in [-1, 1]; `forward(obs)` is always the deterministic action used for
evaluation, so any actor can serve `normalized_action`.

- TanhGaussianActor (CQL, SAC-style): a = tanh(u), u ~ N(mean(s), std(s)); `sample` is
  reparameterised and returns the log-density of a (change of variables through tanh).
- GaussianActor (IQL as in CORL): N(tanh(mean(s)), exp(log_std)) with a state-independent log_std;
  only the log-density of dataset actions is needed (advantage-weighted regression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vla_hydra.models.mlp import FlattenEncoder, mlp

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# dataset actions at exactly +-1 would give atanh = inf
_ATANH_CLAMP = 1.0 - 1e-6


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2) of a diagonal Gaussian, summed over the last (action) dim."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)


def tanh_log_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), summed over the last dim.

    The softplus form stays finite where 1 - tanh(u)^2 underflows to 0 in float32 (|u| > ~9)."""
    return (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


class TanhGaussianActor(nn.Module):
    """obs -> tanh-squashed diagonal Gaussian over actions in [-1, 1].

    Defaults follow CORL's CQL actor: 256x3 ReLU MLP emitting (mean, log_std), log_std offset by -1
    (initial std ~ e^-1) and clamped to [-20, 2], last layer initialised near zero (xavier, gain 1e-2).
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        hidden_dims: Sequence[int] = (256, 256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        log_std_offset: float = -1.0,
    ):
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min, self.log_std_max, self.log_std_offset = log_std_min, log_std_max, log_std_offset
        self.encoder = FlattenEncoder(observation_shape)
        self.net = mlp(self.encoder.out_dim, 2 * action_dim, hidden_dims, activation, layer_norm)
        nn.init.xavier_uniform_(self.net[-1].weight, gain=1e-2)
        nn.init.zeros_(self.net[-1].bias)

    def mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh mean and (clamped) log std, each (*batch, action_dim)."""
        mean, log_std = self.net(self.encoder(obs)).chunk(2, dim=-1)
        return mean, (log_std + self.log_std_offset).clamp(self.log_std_min, self.log_std_max)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action tanh(mean) (evaluation)."""
        return torch.tanh(self.mean_log_std(obs)[0])

    def sample(self, obs: torch.Tensor, num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised actions and their log-densities.

        num_samples=None: action (*batch, action_dim), log_prob (*batch). num_samples=n: n samples per
        observation, action (*batch, n, action_dim), log_prob (*batch, n); the network runs once per
        observation, not once per sample.
        """
        mean, log_std = self.mean_log_std(obs)
        if num_samples is not None:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
            shape = (*mean.shape[:-2], num_samples, self.action_dim)
        else:
            shape = mean.shape
        eps = torch.randn(shape, dtype=mean.dtype, device=mean.device)
        pre_tanh = mean + torch.exp(log_std) * eps
        # N(u; mean, std) at u = mean + std * eps is -eps^2/2 - log std - log sqrt(2 pi)
        gaussian = (-0.5 * eps.square() - log_std - _HALF_LOG_2PI).sum(-1)
        return torch.tanh(pre_tanh), gaussian - tanh_log_det_jacobian(pre_tanh)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of given actions in [-1, 1] (clamped to +-(1 - 1e-6) before atanh)."""
        mean, log_std = self.mean_log_std(obs)
        pre_tanh = torch.atanh(action.clamp(-_ATANH_CLAMP, _ATANH_CLAMP))
        return normal_log_prob(pre_tanh, mean, log_std) - tanh_log_det_jacobian(pre_tanh)


class GaussianActor(nn.Module):
    """IQL's policy as in CORL: N(tanh(mlp(s)), exp(log_std)^2), log_std a free parameter per action
    dim (initialised 0, clamped to [-20, 2]). The Normal is not squashed: dataset actions in [-1, 1]
    are scored directly, and the deterministic action tanh(mlp(s)) is already in [-1, 1]."""

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        log_std_init: float = 0.0,
    ):
        super().__init__()
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.encoder = FlattenEncoder(observation_shape)
        self.net = mlp(self.encoder.out_dim, action_dim, hidden_dims, activation, layer_norm, dropout)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The Gaussian's mean, tanh(mlp(s)) (evaluation)."""
        return torch.tanh(self.net(self.encoder(obs)))

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log N(a; tanh(mlp(s)), exp(log_std)^2), summed over action dims."""
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        return normal_log_prob(action, self.forward(obs), log_std)
