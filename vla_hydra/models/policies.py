"""Stochastic policies for on-policy RL (PPO, GRPO, GAIL's generator): one class for discrete and
continuous actions with the generic interface those algorithms use:

    sample(obs) -> (action, log_prob)      log_prob(obs, action)      entropy(obs)      forward(obs)

Observations are normalised; continuous actions live in the algorithms' [-1, 1] space (a diagonal
Gaussian with a state-independent learned log std, unbounded samples that the env wrapper clips, as
CleanRL's PPO); discrete actions are class indices of a categorical distribution. `forward` is the
deterministic action used for evaluation (the mean, or the most likely class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vla_hydra.models.actors import _HALF_LOG_2PI, normal_log_prob
from vla_hydra.models.mlp import FlattenEncoder, mlp, orthogonal_init_


class StochasticPolicy(nn.Module):
    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete: bool = False,
        hidden_dims: Sequence[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
        orthogonal_init: bool = True,
    ):
        super().__init__()
        self.discrete, self.action_dim = discrete, action_dim
        self.encoder = FlattenEncoder(observation_shape)
        self.net = mlp(self.encoder.out_dim, action_dim, hidden_dims, activation)
        if orthogonal_init:
            # small output gain: near-uniform logits / near-zero means at the start
            orthogonal_init_(self.net, output_gain=0.01)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def _head(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action: argmax class (discrete) or the mean clipped to [-1, 1]."""
        out = self._head(obs)
        return out.argmax(-1) if self.discrete else out.clamp(-1.0, 1.0)

    def _log_prob_from_head(self, out: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return F.log_softmax(out, -1).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        return normal_log_prob(action, out, self.log_std.expand_as(out))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action, log_prob) with action (*batch,) class indices or (*batch, action_dim)."""
        out = self._head(obs)
        if self.discrete:
            log_p = F.log_softmax(out, -1)
            # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is an exact categorical sample (and on CPU
            # about 2x cheaper than softmax + multinomial for a small batch)
            action = (log_p - torch.empty_like(log_p).exponential_().log()).argmax(-1)
            return action, log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        else:
            action = out + torch.randn_like(out) * self.log_std.exp()
        return action, self._log_prob_from_head(out, action)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self._log_prob_from_head(self._head(obs), action)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one forward pass (PPO's update needs both)."""
        out = self._head(obs)
        return self._log_prob_from_head(out, action), self._entropy_from_head(out)

    def _entropy_from_head(self, out: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            logp = F.log_softmax(out, -1)
            return -(logp.exp() * logp).sum(-1)
        # Gaussian entropy: sum over dims of 0.5 + 0.5 log(2 pi) + log std
        return (0.5 + _HALF_LOG_2PI + self.log_std).sum(-1).expand(out.shape[:-1])

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        return self._entropy_from_head(self._head(obs))
