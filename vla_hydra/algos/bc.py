"""Behaviour cloning: regress the dataset's actions (normalised to [-1, 1]) from normalised observations;
for Discrete(n) action spaces, classify them (cross-entropy over n logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vla_hydra.algos.base import PolicyAlgorithm, torch_optimizer
from vla_hydra.core.exceptions import ConfigError


def bc_mse_loss(predicted_actions: torch.Tensor, dataset_actions: torch.Tensor) -> torch.Tensor:
    """Mean over batch and action dims of (pi(s) - a)^2."""
    return F.mse_loss(predicted_actions, dataset_actions)


def bc_cross_entropy_loss(logits: torch.Tensor, dataset_actions: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -log softmax(logits)[a]; `dataset_actions` are class indices (any dtype)."""
    return F.cross_entropy(logits, dataset_actions.long())


class BC(PolicyAlgorithm):
    every_backward_uses_all_parameters = True
    supports_discrete = True
    batch_keys = ("observations", "actions")

    def __init__(
        self,
        spec,
        model,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        updates_per_step: int = 50,
        compile_losses: bool = False,
        stats=None,
    ):
        super().__init__(spec, updates_per_step, stats, compile_losses)
        self.lr, self.weight_decay = lr, weight_decay
        if not spec.discrete:
            self.actor = self.build_network(model, spec.observation_shape, spec.action_dim, use="model=mlp")
            return
        try:  # one logit per class: the network's raw outputs, no tanh
            self.actor = model(spec.observation_shape, spec.action_dim, squash=False)
        except TypeError as err:
            raise ConfigError(
                f"algo=bc: env {spec.env_id} has discrete actions, which need a network with class "
                "logits (model=mlp)"
            ) from err

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        out = self.actor(normalized_obs)
        return out.argmax(-1) if self.spec.discrete else out

    def losses(self, batch):
        predicted = self.actor(self.obs_normalizer(batch["observations"]))
        if self.spec.discrete:
            loss = bc_cross_entropy_loss(predicted, batch["actions"])
        else:
            loss = bc_mse_loss(predicted, self.action_scaler.normalize(batch["actions"]))
        return loss, {"bc_loss": loss.detach()}

    def update(self, batch, optimizers):
        loss, figures = self.loss_fn()(batch)
        torch_optimizer(optimizers).zero_grad(set_to_none=True)
        self.backprop(loss)
        self.step_optimizer(optimizers)
        return figures

    def configure_optimizers(self):
        # foreach: one fused kernel launch per parameter group instead of one per tensor.
        return torch.optim.Adam(
            self.actor.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
        )
