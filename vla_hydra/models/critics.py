"""Critics for offline/online RL: Q(s, a) and V(s) networks, and the one home for target-network updates.

Critics take normalised observations and actions in [-1, 1] (the algorithms' internal action space).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vla_hydra.models.mlp import _ACTIVATIONS, FlattenEncoder, check_activation, mlp, orthogonal_init_


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of parameters: target <- (1 - tau) * target + tau * source.

    One fused foreach call over all parameters (the nets here have no running-statistics buffers).
    Under DeepSpeed ZeRO-3 each parameter outside a forward pass is an empty placeholder for its
    partition, so the update would silently do nothing: there both networks are gathered first and
    rank 0's result is partitioned back.
    """
    targets, sources = list(target.parameters()), list(source.parameters())
    if targets and hasattr(targets[0], "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters(targets + sources, modifier_rank=0):
            torch._foreach_lerp_(targets, sources, tau)
        return
    torch._foreach_lerp_(targets, sources, tau)


class QNetwork(nn.Module):
    """One critic: Q(s, a) -> scalar, an MLP over [encoded obs, action]."""

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
    ):
        super().__init__()
        self.encoder = FlattenEncoder(observation_shape)
        self.net = mlp(self.encoder.out_dim + action_dim, 1, hidden_dims, activation, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self.encoder(obs), action], dim=-1)).squeeze(-1)


class EnsembleQNetwork(nn.Module):
    """`num_critics` independent Q-networks with stacked weights, evaluated in one forward call.

    forward(obs, action) -> (num_critics, *batch). `action` may carry one extra sample dimension,
    (*batch, n, action_dim), for n candidate actions per observation (CQL): the observation part of
    the first layer is then computed once per observation instead of once per candidate.

    Measured (2 critics, forward + backward; CPU: this project's 2-core CPU, 1 thread, shared, 25th
    percentiles; GPU: one H100):
      256x2, batch 256:             CPU per-critic addmm 3.8 ms, bmm 3.9 ms, ModuleList 3.6 ms;
                                    H100 bmm 1.40 ms, per-critic 2.31 ms
      256x3, batch 256 x 31 (CQL):  CPU per-critic addmm 178 ms, bmm 195 ms, ModuleList 182 ms;
                                    H100 bmm 1.30 ms, per-critic 3.08 ms
    So batching does not pay on the CPU (compute-bound; its bmm kernel is slower than addmm) and
    forward runs a per-critic addmm loop on CPU and one bmm per layer on CUDA. The weights stay
    stacked either way: one tensor per layer for Adam's foreach step and the Polyak update.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        num_critics: int = 2,
        activation: str = "relu",
        orthogonal_init: bool = False,
    ):
        super().__init__()
        check_activation(activation)
        if not hidden_dims:  # forward splits the first hidden layer into obs and action parts
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError(
                f"algo.critic_hidden_dims={list(hidden_dims)}: expected at least one hidden layer width"
            )
        self.encoder = FlattenEncoder(observation_shape)
        self.observation_shape = tuple(observation_shape)
        self.obs_dim, self.action_dim, self.num_critics = self.encoder.out_dim, action_dim, num_critics
        self.activation_name = activation
        self.activation = _ACTIVATIONS[activation]()
        dims = [self.obs_dim + action_dim, *hidden_dims, 1]
        # weights (N, in, out) so a layer is baddbmm(bias, x, W); biases (N, 1, out) broadcast over rows
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_critics, d_in, d_out))
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=False)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_critics, 1, d_out)) for d_out in dims[1:])
        self.reset_parameters(orthogonal_init)
        # None: one bmm per layer for all critics on CUDA, per-critic addmm on CPU; True/False forces it
        self.batched_matmul: bool | None = None
        # Under FSDP (set by training.sharding.prepare_fsdp) detached weights are copied: views of the
        # gathered weights can be freed by FSDP before the backward pass that needs them
        self.copy_detached_params = False

    @torch.no_grad()
    def reset_parameters(self, orthogonal_init: bool = False) -> None:
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            fan_in = weight.shape[1]
            for i in range(self.num_critics):
                if orthogonal_init:
                    # CORL's CQL init: orthogonal hidden layers (gain sqrt 2), near-zero last layer
                    w = torch.empty(weight.shape[2], fan_in)
                    nn.init.orthogonal_(w, gain=1e-2 if layer == last else math.sqrt(2))
                    weight[i].copy_(w.T)
                    bias[i].zero_()
                else:
                    # nn.Linear's default init, per critic
                    bound = 1.0 / math.sqrt(fan_in)
                    weight[i].uniform_(-bound, bound)
                    bias[i].uniform_(-bound, bound)

    def forward(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        detach_params: bool = False,
        critic: int | None = None,
    ) -> torch.Tensor:
        """Q-values (num_critics, *batch[, n]); with `critic=i` only critic i runs, (*batch[, n]).

        detach_params: gradients flow to the inputs only (an actor's loss through the critic must
        not train the critic)."""
        weights, biases = list(self.weights), list(self.biases)
        if critic is not None:
            weights, biases = (
                [w[critic : critic + 1] for w in weights],
                [b[critic : critic + 1] for b in biases],
            )
        if detach_params and self.copy_detached_params:
            weights, biases = [w.detach().clone() for w in weights], [b.detach().clone() for b in biases]
        elif detach_params:
            weights, biases = [w.detach() for w in weights], [b.detach() for b in biases]
        num_critics = weights[0].shape[0]
        feat = self.encoder(obs)
        batch_shape = feat.shape[:-1]
        feat = feat.reshape(-1, self.obs_dim)
        multi = action.dim() == len(batch_shape) + 2
        n = action.shape[-2] if multi else 1
        act = action.reshape(feat.shape[0] * n, self.action_dim)
        # first layer split into obs and action parts, [s, a] W = s W_s + a W_a, so that with n
        # candidate actions per observation the observation part is computed once per observation
        w_obs, w_act = weights[0][:, : self.obs_dim], weights[0][:, self.obs_dim :]
        batched = feat.is_cuda if self.batched_matmul is None else self.batched_matmul
        if batched:
            # one kernel per layer for all critics (launch-bound regime)
            h_obs = torch.baddbmm(biases[0], feat.expand(num_critics, -1, -1), w_obs)
            h = self._add_obs_part(torch.matmul(act, w_act), h_obs, n)
            for w, b in zip(weights[1:-1], biases[1:-1], strict=True):
                h = self.activation(torch.baddbmm(b, h, w))
            q = torch.baddbmm(biases[-1], h, weights[-1])
        else:
            # CPU: per-critic addmm beats bmm (see the class docstring)
            qs = []
            for i in range(num_critics):
                h_obs = torch.addmm(biases[0][i], feat, w_obs[i])
                h = self._add_obs_part(act @ w_act[i], h_obs, n)
                for w, b in zip(weights[1:-1], biases[1:-1], strict=True):
                    h = self.activation(torch.addmm(b[i], h, w[i]))
                qs.append(torch.addmm(biases[-1][i], h, weights[-1][i]))
            q = torch.stack(qs)
        q = q.view(num_critics, *batch_shape, *((n,) if multi else ()))
        return q[0] if critic is not None else q

    def _add_obs_part(self, h_act: torch.Tensor, h_obs: torch.Tensor, n: int) -> torch.Tensor:
        """First-layer pre-activation: action part (..., B*n, H) + observation part (..., B, H)."""
        if n > 1:
            h_act = h_act.unflatten(-2, (-1, n)) + h_obs.unsqueeze(-2)
            return self.activation(h_act.flatten(-3, -2))
        return self.activation(h_act + h_obs)

    def critic(self, index: int) -> QNetwork:
        """Critic `index` as a standalone QNetwork (a copy of its weights), e.g. for inspection/tests."""
        hidden = [w.shape[2] for w in self.weights[:-1]]
        net = QNetwork(self.observation_shape, self.action_dim, hidden, self.activation_name)
        linears = [m for m in net.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[index].T)
                lin.bias.copy_(b[index, 0])
        return net


class ValueNetwork(nn.Module):
    """V(s) -> scalar (IQL's state value, PPO's critic with orthogonal_init=True)."""

    def __init__(
        self,
        observation_shape: Sequence[int],
        hidden_dims: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
        orthogonal_init: bool = False,
    ):
        super().__init__()
        self.encoder = FlattenEncoder(observation_shape)
        self.net = mlp(self.encoder.out_dim, 1, hidden_dims, activation, layer_norm)
        if orthogonal_init:
            orthogonal_init_(self.net, output_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs)).squeeze(-1)
