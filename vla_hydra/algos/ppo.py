"""Proximal Policy Optimization (Schulman et al. 2017), defaults as CleanRL's ppo.py / ppo_continuous_action.py.

One Lightning step = one iteration: `num_steps` steps in each of `env.num_envs` envs, GAE advantages,
then `update_epochs` passes over the batch in `num_minibatches` shuffled minibatches.

Unlike CleanRL, time-limit truncations bootstrap from the value of the final observation instead of
being treated as terminal (the env's same-step autoreset keeps that observation in info["final_obs"]).
"""

from __future__ import annotations

import numpy as np
import torch

from vla_hydra.algos.base import torch_optimizer
from vla_hydra.algos.online import OnlineAlgorithm
from vla_hydra.algos.schedules import linear_decay_lr, set_lr
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.envs.factory import EnvFactory, EnvSpec
from vla_hydra.models.critics import ValueNetwork
from vla_hydra.models.normalization import RewardScaler


def generalized_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """GAE over a (T, N) rollout.

    delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
    `next_values` are V of the true next observations (the final one where an episode ended), so a
    truncated episode still bootstraps; `done` (terminated or truncated) cuts the recursion.
    """
    not_terminal = 1.0 - terminated.float()
    not_done = 1.0 - done.float()
    deltas = rewards + gamma * not_terminal * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * not_done[t] * running
        advantages[t] = running
    return advantages


def clipped_surrogate_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> torch.Tensor:
    """PPO's policy loss: mean of max(-A * r, -A * clip(r, 1 - eps, 1 + eps)), r = pi / pi_old."""
    ratio = (log_prob - old_log_prob).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)).mean()


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float | None,
) -> torch.Tensor:
    """0.5 * MSE to the returns; with clip_coef, the pessimistic max of clipped and unclipped errors."""
    unclipped = (values - returns).square()
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped = (old_values + (values - old_values).clamp(-clip_coef, clip_coef) - returns).square()
    return 0.5 * torch.max(unclipped, clipped).mean()


def approx_kl(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The low-variance KL(old || new) estimator E[(r - 1) - log r] (Schulman's k3); `weights`: per-sample
    weights of the mean (GRPO's step weights)."""
    log_ratio = log_prob - old_log_prob
    k3 = (log_ratio.exp() - 1.0) - log_ratio
    return k3.mean() if weights is None else (weights * k3).mean()


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + eps)


def check_rollout_settings(total_timesteps: int, num_envs: int, num_steps: int, num_minibatches: int) -> None:
    """An iteration's rollout must split into equal minibatches and fit in the env-step budget."""
    batch_size = num_envs * num_steps
    rollout = f"env.num_envs={num_envs} x algo.num_steps={num_steps} = {batch_size} steps"
    if batch_size % num_minibatches or batch_size // num_minibatches < 2:
        # a short last minibatch (1 step: NaN advantage std) or none at all
        raise ConfigError(
            f"algo.num_minibatches={num_minibatches}: an iteration's rollout ({rollout}) must split "
            "into that many equal minibatches of at least 2 steps"
        )
    if total_timesteps < batch_size:
        raise ConfigError(
            f"algo.total_timesteps={total_timesteps}: less than one iteration's rollout ({rollout})"
        )


class PPO(OnlineAlgorithm):
    clips_gradients = True
    every_backward_uses_all_parameters = True

    name = "ppo"
    supports_discrete = True

    @classmethod
    def check_settings(cls, spec, algo_cfg) -> None:
        super().check_settings(spec, algo_cfg)
        check_rollout_settings(
            int(algo_cfg.total_timesteps),
            int(algo_cfg.env.num_envs),
            int(algo_cfg.num_steps),
            int(algo_cfg.num_minibatches),
        )

    def __init__(
        self,
        spec: EnvSpec,
        model,
        env: EnvFactory,
        total_timesteps: int = 500_000,
        num_steps: int = 128,
        lr: float = 2.5e-4,
        anneal_lr: bool = True,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        num_minibatches: int = 4,
        update_epochs: int = 4,
        normalize_advantages: bool = True,
        clip_coef: float = 0.2,
        clip_value_loss: bool = True,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        normalize_observations: bool = False,
        normalize_rewards: bool = False,
        critic_hidden_dims: tuple[int, ...] = (64, 64),
        seed: int = 0,
        max_updates: int = -1,
        stats=None,
    ):
        super().__init__(spec, env, total_timesteps, normalize_observations, seed, max_updates, stats=stats)
        self.num_steps, self.lr, self.anneal_lr = int(num_steps), lr, anneal_lr
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.num_minibatches, self.update_epochs = int(num_minibatches), int(update_epochs)
        self.normalize_advantages, self.clip_coef, self.clip_value_loss = (
            normalize_advantages,
            clip_coef,
            clip_value_loss,
        )
        self.ent_coef, self.vf_coef, self.max_grad_norm, self.target_kl = (
            ent_coef,
            vf_coef,
            max_grad_norm,
            target_kl,
        )
        self.batch_size = self.num_envs * self.num_steps
        check_rollout_settings(self.total_timesteps, self.num_envs, self.num_steps, self.num_minibatches)
        self.minibatch_size = self.batch_size // self.num_minibatches
        self.actor = self.build_network(
            model,
            spec.observation_shape,
            spec.action_dim,
            discrete=spec.discrete,
            needs=("sample", "log_prob", "log_prob_entropy"),
            use="model=stochastic_policy",
        )
        self.critic = ValueNetwork(
            spec.observation_shape, critic_hidden_dims, activation="tanh", orthogonal_init=True
        )
        self.reward_scaler = RewardScaler(self.num_envs, gamma) if normalize_rewards else None

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def configure_optimizers(self):
        return torch.optim.Adam(
            [{"params": self.actor.parameters()}, {"params": self.critic.parameters()}],
            lr=self.lr,
            eps=1e-5,
            foreach=True,
        )

    @torch.no_grad()
    def collect_rollout(self) -> dict[str, torch.Tensor]:
        """`num_steps` vector steps with the current policy -> (T, N, ...) tensors incl. advantages.

        Per step only what the policy needs is converted; env outputs are stacked once at the end
        (per-step tensor writes cost about as much as the policy's forward pass on a small MLP)."""
        dev = self.device
        obs_steps, actions, log_probs, next_obs_steps = [], [], [], []
        rewards, terminated, truncated = [], [], []
        for _ in range(self.num_steps):
            obs = self.obs_tensor(self.obs, update_stats=True)
            action, log_prob = self.actor.sample(obs)
            _, reward, term, trunc, real_next = self.step_envs(self.env_actions(action))
            obs_steps.append(obs)
            actions.append(action)
            log_probs.append(log_prob)
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
            # normalised with the statistics of this step, as a NormalizeObservation wrapper would
            next_obs_steps.append(self.obs_tensor(real_next) if self.normalize_observations else real_next)
        obs_buf = torch.stack(obs_steps)
        if self.normalize_observations:
            next_obs_buf = torch.stack(next_obs_steps)
        else:
            next_obs_buf = self.obs_tensor(np.stack(next_obs_steps))
        terminated_np = np.stack(terminated)
        done = torch.as_tensor(terminated_np | np.stack(truncated), device=dev)
        terminated_t = torch.as_tensor(terminated_np, dtype=torch.float32, device=dev)
        rewards_t = torch.as_tensor(np.stack(rewards), device=dev)
        if self.reward_scaler is not None:  # a running filter: applied step by step, in order
            rewards_t = torch.stack([self.reward_scaler(r, d) for r, d in zip(rewards_t, done, strict=True)])
        values = self.critic(obs_buf)
        next_values = self.critic(next_obs_buf)
        advantages = generalized_advantages(
            rewards_t, values, next_values, terminated_t, done, self.gamma, self.gae_lambda
        )
        return {
            "obs": obs_buf.flatten(0, 1),
            "actions": torch.stack(actions).flatten(0, 1),
            "log_probs": torch.stack(log_probs).flatten(),
            "values": values.flatten(),
            "advantages": advantages.flatten(),
            "returns": (advantages + values).flatten(),
        }

    def train_iteration(self, optimizers) -> dict[str, torch.Tensor]:
        optimizer = optimizers
        torch_opt = torch_optimizer(optimizer)  # lr, zero_grad: without the Lightning wrapper's forwarding
        if self.anneal_lr:
            # completed iterations of all ranks together (each adds batch_size env steps per rank)
            steps_per_iteration = self.batch_size * self.world_size
            iteration = int(self.env_steps) // steps_per_iteration
            # iterations the budget runs (the last one may pass it): its lr stays above 0
            iterations = -(-self.total_timesteps // steps_per_iteration)
            set_lr(torch_opt, linear_decay_lr(self.lr, iteration, iterations))
        batch = self.collect_rollout()
        params = [p for group in torch_opt.param_groups for p in group["params"]]
        stats: dict[str, torch.Tensor] = {}
        for _ in range(self.update_epochs):
            order = torch.randperm(self.batch_size, device=self.device)
            for start in range(0, self.batch_size, self.minibatch_size):
                idx = order[start : start + self.minibatch_size]
                log_prob, entropy = self.actor.log_prob_entropy(batch["obs"][idx], batch["actions"][idx])
                advantages = batch["advantages"][idx]
                if self.normalize_advantages:
                    advantages = normalize(advantages)
                pg_loss = clipped_surrogate_loss(
                    log_prob, batch["log_probs"][idx], advantages, self.clip_coef
                )
                v_loss = value_loss(
                    self.critic(batch["obs"][idx]),
                    batch["values"][idx],
                    batch["returns"][idx],
                    self.clip_coef if self.clip_value_loss else None,
                )
                entropy_mean = entropy.mean()
                loss = pg_loss - self.ent_coef * entropy_mean + self.vf_coef * v_loss
                torch_opt.zero_grad(set_to_none=True)
                self.backprop(loss)
                self.clip_gradients_(params, self.max_grad_norm)
                self.step_optimizer(optimizer)
                stats = {
                    "policy_loss": pg_loss.detach(),
                    "value_loss": v_loss.detach(),
                    "entropy": entropy_mean.detach(),
                }
            if self.target_kl is not None:
                with torch.no_grad():
                    kl = approx_kl(self.actor.log_prob(batch["obs"], batch["actions"]), batch["log_probs"])
                if kl > self.target_kl:
                    break
        return stats
