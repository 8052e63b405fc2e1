"""GAIL, Generative Adversarial Imitation Learning (Ho & Ermon 2016), with the project's PPO as generator.

A discriminator D(s, a) = sigmoid(f(s, a)) learns to tell expert transitions (label 1) from the
policy's (label 0); PPO maximises a reward built from D instead of the env's reward, which is never
used for learning (the training-episode log still records the env return, for curves).

Reward (`reward_type`):
  "gail" (default): r = -log(1 - D(s, a)) = softplus(f). Always positive, so on tasks with
      termination it is also a survival bonus; on fixed-horizon tasks (Pendulum) that does not matter.
  "airl": r = log D - log(1 - D) = f, the logit; signed, no survival bias.

Expert data come from `data=`: any D4RL-format dataset datamodule. The default `data=pendulum_expert`
is collected on first use from the scripted swing-up expert (`data=cartpole_expert` for discrete
CartPole, whose class-index actions the discriminator sees one-hot); a file of your own is
`data=hdf5 data.path=<file>`. The datamodule's minibatch blocks, `algo.updates_per_step` minibatches of
`data.batch_size` expert transitions per Lightning step, are exactly the expert side of that
iteration's discriminator updates; the dataset's observation statistics normalise policy and
discriminator inputs (fixed, saved with the model).

One iteration (one Lightning step) = PPO's: a rollout of `num_steps` steps whose rewards come from the
discriminator as trained so far, PPO's update on it, then `updates_per_step` discriminator updates on
that rollout's (s, a) pairs vs expert minibatches. The rewards therefore lag the discriminator by one
update round; PPO's rollout and update code is reused unchanged (the reward enters through the
`step_envs` hook).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_hydra.algos.ppo import PPO
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.envs.factory import EnvFactory, EnvSpec
from vla_hydra.models.critics import QNetwork

REWARD_TYPES = ("gail", "airl")


def discriminator_loss(expert_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with expert = 1, policy = 0, each side averaged separately (balanced):
    mean(-log sigmoid(f_E)) + mean(-log(1 - sigmoid(f_pi))) = mean softplus(-f_E) + mean softplus(f_pi)."""
    return F.softplus(-expert_logits).mean() + F.softplus(policy_logits).mean()


def gradient_penalty(
    discriminator, expert_inputs: torch.Tensor, policy_inputs: torch.Tensor, mix: torch.Tensor
) -> torch.Tensor:
    """Zero-centred gradient penalty mean(||grad_x f(x_hat)||^2) at x_hat = mix * expert + (1 - mix) * policy.

    It smooths the discriminator between the two data sets so its reward keeps a useful slope where
    the policy is. (WGAN-GP's one-centred (||grad|| - 1)^2, which DAC uses, kept D at about 0.5 here:
    on Pendulum it stopped the discriminator from separating expert from random transitions at all.)
    `discriminator` maps (B, d) -> (B,) logits; `mix` is (B, 1) in [0, 1].
    """
    x_hat = (mix * expert_inputs + (1.0 - mix) * policy_inputs).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x_hat).sum(), x_hat, create_graph=True)
    return grad.square().sum(-1).mean()


def discriminator_reward(logits: torch.Tensor, reward_type: str = "gail") -> torch.Tensor:
    """The generator's reward from discriminator logits f = logit D(s, a) (see the module docstring)."""
    _check_reward_type(reward_type)
    if reward_type == "gail":
        return F.softplus(logits)  # -log(1 - sigmoid(f)), computed stably
    return logits  # airl


def discriminator_accuracy(expert_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """Fraction classified right at threshold D = 0.5 (logit 0), balanced over the two sides."""
    return 0.5 * ((expert_logits > 0).float().mean() + (policy_logits < 0).float().mean())


def _check_reward_type(reward_type: str) -> None:
    if reward_type not in REWARD_TYPES:
        raise ConfigError(f"algo.reward_type={reward_type!r}: expected one of {list(REWARD_TYPES)}")


class GAIL(PPO):
    """PPO (all of its arguments) whose reward is the discriminator's. Extra args:
    updates_per_step: discriminator updates per iteration; the datamodule delivers one expert
        minibatch for each.
    discriminator_hidden_dims, discriminator_lr: the discriminator MLP f(s, a) and its Adam step size.
    gradient_penalty_coef: weight of the gradient penalty (0 = plain BCE).
    reward_type: "gail" or "airl" (see the module docstring).
    """

    name = "gail"
    supports_discrete = True
    reads_dataset = True  # its expert transitions
    every_backward_uses_all_parameters = False  # the discriminator's passes leave the policy out

    @classmethod
    def check_settings(cls, spec, algo_cfg) -> None:
        super().check_settings(spec, algo_cfg)
        _check_reward_type(algo_cfg.get("reward_type", "gail"))  # before the expert dataset is collected

    def __init__(
        self,
        spec: EnvSpec,
        model,
        env: EnvFactory,
        updates_per_step: int = 5,
        discriminator_hidden_dims: tuple[int, ...] = (64, 64),
        discriminator_lr: float = 1e-3,
        gradient_penalty_coef: float = 0.0,
        reward_type: str = "gail",
        **ppo_kwargs: Any,
    ):
        super().__init__(spec, model, env, **ppo_kwargs)
        _check_reward_type(reward_type)
        self.updates_per_step = int(updates_per_step)
        self.discriminator_lr, self.gradient_penalty_coef = discriminator_lr, gradient_penalty_coef
        self.reward_type = reward_type
        # f(s, a) over [normalised obs, action in [-1, 1]] (discrete: the action's one-hot vector)
        self.discriminator = QNetwork(
            spec.observation_shape, spec.action_dim, discriminator_hidden_dims, "tanh"
        )
        self._expert_block: dict[str, torch.Tensor] | None = None
        self._policy_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def configure_optimizers(self):
        # one optimizer (global_step counts its steps), the discriminator as a third parameter group
        optimizer = super().configure_optimizers()
        optimizer.add_param_group({"params": self.discriminator.parameters(), "lr": self.discriminator_lr})
        return optimizer

    # -- discriminator inputs ------------------------------------------------------------------
    def discriminator_actions(self, env_actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions as the discriminator sees them: rescaled to [-1, 1], or one-hot class vectors."""
        if self.spec.discrete:
            return F.one_hot(env_actions.long(), self.spec.action_dim).float()
        return self.action_scaler.normalize(env_actions)

    def expert_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised obs, discriminator action) of expert transitions."""
        return self.obs_normalizer(batch["observations"]), self.discriminator_actions(batch["actions"])

    def logits(self, normalized_obs: torch.Tensor, disc_actions: torch.Tensor) -> torch.Tensor:
        return self.discriminator(normalized_obs, disc_actions)

    # -- the reward enters PPO's rollout here --------------------------------------------------
    def step_envs(self, actions: np.ndarray):
        obs_t = self.obs_tensor(self.obs)
        # the env-unit actions PPO executes, back in [-1, 1]: its unbounded Gaussian samples clipped to
        # the bounds as the env clips them (expert actions lie within the bounds too)
        disc_actions = self.discriminator_actions(
            torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        )
        next_obs, _env_rewards, terminated, truncated, real_next = super().step_envs(actions)
        with torch.no_grad():
            rewards = discriminator_reward(self.logits(obs_t, disc_actions), self.reward_type)
        self._policy_inputs.append((obs_t, disc_actions))
        return next_obs, rewards.cpu().numpy().astype(np.float32), terminated, truncated, real_next

    # -- one iteration -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if not isinstance(batch, dict) or "observations" not in batch:
            raise ConfigError(
                "algo=gail: needs expert transitions from data= (e.g. data=pendulum_expert, or "
                "data=hdf5 data.path=<D4RL-format file>); data=rollouts has none"
            )
        self._expert_block = batch
        super().training_step(batch, batch_idx)

    def train_iteration(self, optimizers) -> dict[str, torch.Tensor]:
        self._policy_inputs = []
        stats = super().train_iteration(optimizers)
        policy_obs = torch.cat([obs for obs, _ in self._policy_inputs])
        policy_actions = torch.cat([act for _, act in self._policy_inputs])
        return {**stats, **self.update_discriminator(optimizers, policy_obs, policy_actions)}

    def update_discriminator(self, optimizer, policy_obs: torch.Tensor, policy_actions: torch.Tensor) -> dict:
        # PPO anneals every group's lr; the discriminator keeps its own
        optimizer.param_groups[-1]["lr"] = self.discriminator_lr
        stats: dict[str, torch.Tensor] = {}
        for k in range(self.updates_per_step):
            expert_obs, expert_actions = self.expert_inputs(
                {key: v[k] for key, v in self._expert_block.items()}
            )
            idx = torch.randint(len(policy_obs), (len(expert_obs),), device=self.device)
            loss, stats = self.discriminator_step_loss(
                expert_obs, expert_actions, policy_obs[idx], policy_actions[idx]
            )
            optimizer.zero_grad(set_to_none=True)
            self.backprop(loss)
            self.step_optimizer(optimizer)
        return stats

    def discriminator_step_loss(self, expert_obs, expert_actions, policy_obs, policy_actions):
        expert_logits = self.logits(expert_obs, expert_actions)
        policy_logits = self.logits(policy_obs, policy_actions)
        loss = discriminator_loss(expert_logits, policy_logits)
        if self.gradient_penalty_coef > 0:

            def on_joint_inputs(x: torch.Tensor) -> torch.Tensor:
                return self.discriminator.net(x).squeeze(-1)

            expert_x = torch.cat([expert_obs.flatten(1), expert_actions], -1)
            policy_x = torch.cat([policy_obs.flatten(1), policy_actions], -1)
            mix = torch.rand(len(expert_x), 1, device=self.device)
            loss = loss + self.gradient_penalty_coef * gradient_penalty(
                on_joint_inputs, expert_x, policy_x, mix
            )
        stats = {
            "discriminator_loss": loss.detach(),
            "discriminator_accuracy": discriminator_accuracy(expert_logits.detach(), policy_logits.detach()),
            "expert_D": torch.sigmoid(expert_logits.detach()).mean(),
            "policy_D": torch.sigmoid(policy_logits.detach()).mean(),
        }
        return loss, stats
