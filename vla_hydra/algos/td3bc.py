"""TD3+BC (Fujimoto & Gu 2021), defaults as in CORL's td3_bc.py.

TD3 (twin critics, target policy smoothing, delayed actor and target updates) whose actor loss adds
a behaviour-cloning term: -lambda Q(s, pi(s)) + (pi(s) - a)^2, lambda = alpha / mean|Q| so that the
trade-off does not depend on the scale of the rewards.

One Adam step per update (Lightning's global_step counts optimizer steps, and it must count gradient
updates): on actor updates the critic and actor gradients are taken at the same parameters, i.e. the
actor sees the critic from before this update's critic step (CORL steps the critic first). The actor
loss goes through the critic with detached critic parameters, so it trains the actor only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from vla_hydra.algos.base import PolicyAlgorithm, torch_optimizer
from vla_hydra.algos.critic_losses import TD_BATCH_KEYS, per_critic_mse, td_target
from vla_hydra.models.critics import EnsembleQNetwork, soft_update


def td3bc_actor_loss(q: torch.Tensor, pi: torch.Tensor, a: torch.Tensor, alpha: float) -> torch.Tensor:
    """-lambda * mean(Q(s, pi(s))) + mean((pi(s) - a)^2) with lambda = alpha / mean|Q(s, pi(s))| (no
    gradient through lambda)."""
    lmbda = alpha / q.abs().mean().detach()
    return -lmbda * q.mean() + F.mse_loss(pi, a)


def smoothed_target_action(target_action: torch.Tensor, noise_std: float, noise_clip: float) -> torch.Tensor:
    """TD3 target policy smoothing in [-1, 1]: a' + clip(N(0, std), -c, c), clipped to [-1, 1]."""
    noise = (torch.randn_like(target_action) * noise_std).clamp(-noise_clip, noise_clip)
    return (target_action + noise).clamp(-1.0, 1.0)


class TD3BC(PolicyAlgorithm):
    batch_keys = TD_BATCH_KEYS

    def __init__(
        self,
        spec,
        model,
        critic_hidden_dims=(256, 256),
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        discount: float = 0.99,
        tau: float = 0.005,
        alpha: float = 2.5,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_freq: int = 2,
        updates_per_step: int = 50,
        compile_losses: bool = False,
        stats=None,
    ):
        super().__init__(spec, updates_per_step, stats, compile_losses)
        self.actor_lr, self.critic_lr = actor_lr, critic_lr
        self.discount, self.tau, self.alpha = discount, tau, alpha
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, int(policy_freq)
        self.actor = self.build_network(model, spec.observation_shape, spec.action_dim, use="model=mlp")
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = EnsembleQNetwork(spec.observation_shape, spec.action_dim, critic_hidden_dims)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # updates done; the buffer travels in checkpoints, the int drives the policy delay without syncs
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._num_updates = 0
        self._last_actor_loss: torch.Tensor | None = None

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._num_updates = int(self.num_updates)  # resumed runs keep the policy-delay phase

    def losses(self, batch, update_actor: bool):
        """Critic TD loss, plus the actor's TD3+BC loss on policy-delay updates; figures to log."""
        obs = self.obs_normalizer(batch["observations"])
        next_obs = self.obs_normalizer(batch["next_observations"])
        actions = self.action_scaler.normalize(batch["actions"])
        with torch.no_grad():
            next_actions = smoothed_target_action(
                self.target_actor(next_obs), self.policy_noise, self.noise_clip
            )
            next_value = self.target_critic(next_obs, next_actions).min(0).values
            q_target = td_target(batch["rewards"], batch["terminals"], next_value, self.discount)

        q = self.critic(obs, actions)  # (2, B)
        critic_loss = per_critic_mse(q, q_target).sum()  # the two critics' MSEs summed (CORL)
        loss = critic_loss
        figures = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}
        if update_actor:
            pi = self.actor(obs)
            q_pi = self.critic(obs, pi, detach_params=True, critic=0)  # TD3 uses the first critic
            actor_loss = td3bc_actor_loss(q_pi, pi, actions, self.alpha)
            loss = loss + actor_loss
            figures["actor_loss"] = actor_loss.detach()
        return loss, figures

    def update(self, batch, optimizers):
        self._num_updates += 1
        self.num_updates.add_(1)  # in place: no nn.Module attribute assignment
        update_actor = self._num_updates % self.policy_freq == 0  # CORL: iterations 2, 4, ...
        loss, figures = self.loss_fn()(batch, update_actor)
        # actor grads stay None off-delay: Adam skips them
        torch_optimizer(optimizers).zero_grad(set_to_none=True)
        self.backprop(loss)
        self.step_optimizer(optimizers)
        if update_actor:
            soft_update(self.target_critic, self.critic, self.tau)
            soft_update(self.target_actor, self.actor, self.tau)
            self._last_actor_loss = figures["actor_loss"]
        if self._last_actor_loss is not None:
            # the latest actor loss every update, so per-step averages are not diluted by the delay
            figures["actor_loss"] = self._last_actor_loss
        return figures

    def update_delay_setting(self) -> str | None:
        return f"algo.policy_freq={self.policy_freq}" if self.policy_freq > 1 else None

    def configure_optimizers(self):
        # one Adam, a parameter group per network: one optimizer step per gradient update
        return torch.optim.Adam(
            [
                {"params": self.critic.parameters(), "lr": self.critic_lr},
                {"params": self.actor.parameters(), "lr": self.actor_lr},
            ],
            foreach=True,
        )
