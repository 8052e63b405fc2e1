"""Behaviour cloning: regress the dataset's actions (normalised to [-1, 1]) from normalised observations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vla_hydra.algos.base import PolicyAlgorithm


def bc_mse_loss(predicted_actions: torch.Tensor, dataset_actions: torch.Tensor) -> torch.Tensor:
    """Mean over batch and action dims of (pi(s) - a)^2."""
    return F.mse_loss(predicted_actions, dataset_actions)


class BC(PolicyAlgorithm):
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
        self.actor = model(spec.observation_shape, spec.action_dim)

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def losses(self, batch):
        predicted = self.actor(self.obs_normalizer(batch["observations"]))
        loss = bc_mse_loss(predicted, self.action_scaler.normalize(batch["actions"]))
        return loss, {"bc_loss": loss.detach()}

    def update(self, batch, optimizers):
        loss, figures = self.loss_fn()(batch)
        optimizers.zero_grad(set_to_none=True)
        self.backprop(loss)
        self.step_optimizer(optimizers)
        return figures

    def configure_optimizers(self):
        # foreach: one fused kernel launch per parameter group instead of one per tensor.
        return torch.optim.Adam(
            self.actor.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
        )
