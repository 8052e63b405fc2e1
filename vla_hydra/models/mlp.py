"""MLP building block and the actor/critic heads built from it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def check_activation(activation: str) -> None:
    """A one-line error for an unknown activation name (model.activation, the critics' activation)."""
    if activation not in _ACTIVATIONS:
        from vla_hydra.core.exceptions import ConfigError

        raise ConfigError(f"activation={activation}: expected one of {', '.join(sorted(_ACTIVATIONS))}")


def mlp(
    in_dim: int,
    out_dim: int,
    hidden_dims: Sequence[int],
    activation: str = "relu",
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    check_activation(activation)
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out))
        if layer_norm:
            layers.append(nn.LayerNorm(d_out))
        layers.append(_ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class FlattenEncoder(nn.Module):
    """Observation encoder for flat (Box) observations. Dict-observation encoders (images, proprio,
    language) replace it and expose the same `out_dim`."""

    def __init__(self, observation_shape: Sequence[int]):
        super().__init__()
        self.obs_ndim = len(observation_shape)
        self.out_dim = int(torch.tensor(list(observation_shape)).prod().item())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.flatten(start_dim=obs.dim() - self.obs_ndim)


class DeterministicActor(nn.Module):
    """obs -> action in [-1, 1] (tanh). Actions are rescaled to env bounds outside the network.
    `squash=False` returns the raw outputs instead (class logits, for discrete-action BC)."""

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        squash: bool = True,
    ):
        super().__init__()
        self.squash = squash
        self.encoder = FlattenEncoder(observation_shape)
        self.net = mlp(self.encoder.out_dim, action_dim, hidden_dims, activation, layer_norm, dropout)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(self.encoder(obs))
        return torch.tanh(out) if self.squash else out


def orthogonal_init_(
    net: nn.Sequential, hidden_gain: float = 2**0.5, output_gain: float = 1.0
) -> nn.Sequential:
    """Orthogonal weights, zero biases (the on-policy convention of PPO implementations): hidden layers
    with gain sqrt(2), the output layer with `output_gain` (0.01 for policy logits/means, 1 for values)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, gain=output_gain if i == len(linears) - 1 else hidden_gain)
        nn.init.zeros_(layer.bias)
    return net
