"""Implicit Q-Learning (Kostrikov et al. 2021), defaults as in CORL's iql.py.

V(s) is fit by expectile regression to the target Q of dataset actions, Q(s, a) to r + gamma V(s'),
and the actor by advantage-weighted regression on dataset actions: no action outside the dataset is
ever evaluated.

All three losses depend only on the parameters at the start of the update (CORL computes next V and
the advantage before its V step) and each trains only its own network, so one backward of their sum
and one Adam step (a parameter group per network) equals CORL's three sequential steps; it also keeps
`trainer.global_step` = gradient updates (Lightning counts every optimizer step).
"""

from __future__ import annotations

import copy

import torch

from vla_hydra.algos.base import PolicyAlgorithm, torch_optimizer
from vla_hydra.algos.critic_losses import TD_BATCH_KEYS, per_critic_mse, td_target
from vla_hydra.algos.schedules import cosine_lr
from vla_hydra.data.stats import return_range_reward_scale
from vla_hydra.models.critics import EnsembleQNetwork, ValueNetwork, soft_update


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """mean(|tau - 1(diff < 0)| * diff^2): tau > 0.5 weighs under-estimates of the target more, so V
    tends to an upper expectile of Q over the dataset's actions."""
    weight = torch.abs(tau - (diff < 0).to(diff.dtype))
    return (weight * diff.square()).mean()


def exp_advantage_weights(advantage: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """exp(beta * A), clipped at max_weight (the advantage-weighted regression weights)."""
    return torch.exp(beta * advantage).clamp(max=max_weight)


def awr_log_prob_loss(weights: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """Advantage-weighted regression, stochastic actor: -mean(w * log pi(a|s)) (CORL's GaussianPolicy)."""
    return -(weights * log_prob).mean()


def awr_regression_loss(
    weights: torch.Tensor, predicted: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """Advantage-weighted regression, deterministic actor: mean(w * ||pi(s) - a||^2) (CORL's
    DeterministicPolicy, squared error summed over action dimensions)."""
    return (weights * (predicted - actions).square().sum(-1)).mean()


class IQL(PolicyAlgorithm):
    batch_keys = TD_BATCH_KEYS

    def __init__(
        self,
        spec,
        model,
        critic_hidden_dims=(256, 256),
        value_hidden_dims=(256, 256),
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        value_lr: float = 3e-4,
        discount: float = 0.99,
        tau: float = 0.005,
        expectile: float = 0.7,
        beta: float = 3.0,
        max_weight: float = 100.0,
        actor_lr_decay_updates: int = 1_000_000,
        normalize_reward: bool = True,
        reward_norm_scale: float = 1000.0,
        updates_per_step: int = 50,
        compile_losses: bool = False,
        stats=None,
        max_updates: int | None = None,
    ):
        super().__init__(spec, updates_per_step, stats, compile_losses)
        if max_updates is not None:  # the key's name in checkpoints written before 2026-11-26
            actor_lr_decay_updates = max_updates
        self.actor_lr, self.critic_lr, self.value_lr = actor_lr, critic_lr, value_lr
        self.discount, self.tau, self.expectile = discount, tau, expectile
        self.beta, self.max_weight = beta, max_weight
        self.actor_lr_decay_updates = int(actor_lr_decay_updates)
        self.actor = self.build_network(
            model, spec.observation_shape, spec.action_dim, use="model=gaussian (or model=mlp)"
        )
        # Gaussian actors are scored by log-likelihood; a deterministic one (model=mlp) by squared error
        self.stochastic_actor = hasattr(self.actor, "log_prob")
        self.critic = EnsembleQNetwork(spec.observation_shape, spec.action_dim, critic_hidden_dims)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNetwork(spec.observation_shape, value_hidden_dims)
        scale = return_range_reward_scale(stats, reward_norm_scale) if normalize_reward else 1.0
        # a buffer, so a checkpoint rebuilt without dataset stats keeps the training-time scale
        self.register_buffer("reward_scale", torch.tensor(scale, dtype=torch.float32))
        # updates done; the buffer travels in checkpoints, the int drives the lr schedule without syncs
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._num_updates = 0

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._num_updates = int(self.num_updates)  # resumed runs continue the lr schedule

    def losses(self, batch):
        """Value (expectile), critic (TD to r + gamma V(s')) and actor (advantage-weighted) losses, summed:
        each network's parameters get gradients from their own term only."""
        obs = self.obs_normalizer(batch["observations"])
        next_obs = self.obs_normalizer(batch["next_observations"])
        actions = self.action_scaler.normalize(batch["actions"])
        rewards = batch["rewards"] * self.reward_scale

        with torch.no_grad():
            next_v = self.value(next_obs)
            target_q = self.target_critic(obs, actions).min(0).values
            q_target = td_target(rewards, batch["terminals"], next_v, self.discount)

        advantage = target_q - self.value(obs)
        value_loss = expectile_loss(advantage, self.expectile)

        q = self.critic(obs, actions)  # (2, B)
        critic_loss = per_critic_mse(q, q_target).mean()  # the two critics' MSEs averaged (CORL)

        weights = exp_advantage_weights(advantage.detach(), self.beta, self.max_weight)
        if self.stochastic_actor:
            actor_loss = awr_log_prob_loss(weights, self.actor.log_prob(obs, actions))
        else:
            actor_loss = awr_regression_loss(weights, self.actor(obs), actions)
        figures = {
            "value_loss": value_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q.detach().mean(),
            "advantage_mean": advantage.detach().mean(),
            "weight_mean": weights.mean(),
        }
        return value_loss + critic_loss + actor_loss, figures

    def update(self, batch, optimizers):
        loss, figures = self.loss_fn()(batch)
        lr = cosine_lr(self.actor_lr, self._num_updates, self.actor_lr_decay_updates)
        optimizer = torch_optimizer(optimizers)
        optimizer.param_groups[2]["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        self.backprop(loss)
        self.step_optimizer(optimizers)
        soft_update(self.target_critic, self.critic, self.tau)
        self._num_updates += 1
        self.num_updates.add_(1)  # in place: no nn.Module attribute assignment
        return figures

    def configure_optimizers(self):
        # one Adam, a parameter group per network (lr per group; group 2's lr follows the schedule)
        return torch.optim.Adam(
            [
                {"params": self.value.parameters(), "lr": self.value_lr},
                {"params": self.critic.parameters(), "lr": self.critic_lr},
                {"params": self.actor.parameters(), "lr": self.actor_lr},
            ],
            foreach=True,
        )
