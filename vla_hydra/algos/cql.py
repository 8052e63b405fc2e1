"""Conservative Q-Learning, CQL(H) (Kumar et al. 2020), as CORL's cql.py implements it: SAC with
automatic entropy tuning, plus a penalty that pushes Q down on sampled actions (logsumexp over
uniform-random and current-policy actions, importance-weighted) and up on dataset actions.

Speed: the 3 x n sampled actions of the whole batch and the dataset actions go through both critics
as ONE (batch, 1 + 3n) candidate tensor (observation part of the first layer computed once per
state); the actor network runs once on [s; s'] for all its samples. On a CPU this is compute-bound
(~12 GFLOP per update for 256x3 critics, batch 256, n = 10).

Like CORL, every loss is computed from the parameters at the start of the update (alpha, policy and
critic losses), and each loss trains only its own parameters (the policy loss sees the critic with
detached parameters, alpha is detached where it scales log pi), so one backward of the sum and one
Adam step (a parameter group per network) equals CORL's sequence of steps; it also keeps
`trainer.global_step` = gradient updates.
"""

from __future__ import annotations

import copy
import math

import torch

from vla_hydra.algos.base import PolicyAlgorithm, torch_optimizer
from vla_hydra.algos.critic_losses import TD_BATCH_KEYS, per_critic_mse, td_target
from vla_hydra.algos.sac import sac_actor_loss
from vla_hydra.data.stats import return_range_reward_scale
from vla_hydra.models.critics import EnsembleQNetwork, soft_update


def cql_conservative_penalty(q_ood: torch.Tensor, q_data: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean(temp * logsumexp(q_ood / temp, dim=-1) - q_data): a soft maximum of Q over the sampled
    (out-of-distribution) actions of each state minus Q of the dataset action. q_ood (..., K) (dim=1 for
    a (batch, K) tensor), q_data (...)."""
    return (temperature * torch.logsumexp(q_ood / temperature, dim=-1) - q_data).mean()


def sac_alpha_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Automatic entropy tuning: -mean(log_alpha * (log pi + target_entropy)) (log pi detached)."""
    return -(log_alpha * (log_pi.detach() + target_entropy)).mean()


def _unmapped_rewards_before_2026_11_27(state_dict, prefix, *args) -> None:
    """Checkpoints written before CQL had a reward map trained on the rewards as they were: scale 1, bias 0."""
    state_dict.setdefault(f"{prefix}reward_scale", torch.tensor(1.0))
    state_dict.setdefault(f"{prefix}reward_bias", torch.tensor(0.0))


class CQL(PolicyAlgorithm):
    batch_keys = TD_BATCH_KEYS

    def __init__(
        self,
        spec,
        model,
        critic_hidden_dims=(256, 256, 256),
        critic_orthogonal_init: bool = True,
        actor_lr: float = 3e-5,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-5,
        discount: float = 0.99,
        tau: float = 0.005,
        target_entropy: float | None = None,
        alpha_multiplier: float = 1.0,
        cql_alpha: float = 10.0,
        cql_n_actions: int = 10,
        cql_temp: float = 1.0,
        backup_entropy: bool = False,
        normalize_reward: bool = False,
        reward_norm_scale: float = 1000.0,
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
        updates_per_step: int = 50,
        stats=None,
    ):
        super().__init__(spec, updates_per_step, stats)
        self.actor_lr, self.critic_lr, self.alpha_lr = actor_lr, critic_lr, alpha_lr
        self.discount, self.tau = discount, tau
        # SAC's heuristic: -|A|
        self.target_entropy = -float(spec.action_dim) if target_entropy is None else float(target_entropy)
        self.alpha_multiplier, self.cql_alpha = alpha_multiplier, cql_alpha
        self.cql_n_actions, self.cql_temp, self.backup_entropy = int(cql_n_actions), cql_temp, backup_entropy
        self.actor = self.build_network(
            model, spec.observation_shape, spec.action_dim, needs=("sample",), use="model=tanh_gaussian"
        )
        self.critic = EnsembleQNetwork(
            spec.observation_shape,
            spec.action_dim,
            critic_hidden_dims,
            orthogonal_init=critic_orthogonal_init,
        )
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.zeros(()))
        # r' = r * (return-range factor if normalize_reward) * reward_scale + reward_bias (CORL's
        # modify_reward); buffers, so a checkpoint rebuilt without dataset stats keeps the training-time map
        norm = return_range_reward_scale(stats, reward_norm_scale) if normalize_reward else 1.0
        self.register_buffer("reward_scale", torch.tensor(norm * reward_scale, dtype=torch.float32))
        self.register_buffer("reward_bias", torch.tensor(reward_bias, dtype=torch.float32))
        self._register_load_state_dict_pre_hook(_unmapped_rewards_before_2026_11_27)
        # log density of the uniform distribution on [-1, 1]^|A| (importance weight of random actions)
        self.random_log_density = -spec.action_dim * math.log(2.0)

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def mapped_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """The rewards the TD targets use (normalize_reward, reward_scale, reward_bias)."""
        return rewards * self.reward_scale + self.reward_bias

    def update(self, batch, optimizers):
        obs = self.obs_normalizer(batch["observations"])
        next_obs = self.obs_normalizer(batch["next_observations"])
        actions = self.action_scaler.normalize(batch["actions"])
        B, n = actions.shape[0], self.cql_n_actions

        # one actor pass on [s; s'], 1 + n samples each: sample 0 for the policy loss (at s) and the
        # TD target (at s'), samples 1..n for the CQL penalty (CORL draws them independently too)
        sampled, log_probs = self.actor.sample(torch.cat([obs, next_obs]), num_samples=1 + n)
        pi, log_pi = sampled[:B, 0], log_probs[:B, 0]

        alpha_loss = sac_alpha_loss(self.log_alpha, log_pi, self.target_entropy)
        alpha = self.log_alpha.detach().exp() * self.alpha_multiplier
        actor_loss = sac_actor_loss(self.critic(obs, pi, detach_params=True), log_pi, alpha)

        with torch.no_grad():
            next_value = self.target_critic(next_obs, sampled[B:, 0]).min(0).values
            if self.backup_entropy:
                next_value = next_value - alpha * log_probs[B:, 0]
            q_target = td_target(
                self.mapped_rewards(batch["rewards"]), batch["terminals"], next_value, self.discount
            )

        # candidates at s: [dataset action | n uniform | n from pi(.|s) | n from pi(.|s')] (CORL
        # evaluates the s'-policy actions at s), all detached: the penalty trains the critics only
        random_actions = torch.empty(B, n, actions.shape[-1], device=actions.device).uniform_(-1.0, 1.0)
        policy_actions = sampled[:, 1:].detach()  # (2B, n, A)
        candidates = torch.cat(
            [actions.unsqueeze(1), random_actions, policy_actions[:B], policy_actions[B:]], dim=1
        )
        q_all = self.critic(obs, candidates)  # (2, B, 1 + 3n)
        q_data = q_all[..., 0]
        td_loss = per_critic_mse(q_data, q_target).sum()  # the two critics' MSEs summed (CORL)
        # importance-sampled logsumexp: subtract each proposal's log density
        policy_log_probs = log_probs[:, 1:].detach()
        q_ood = torch.cat(
            [
                q_all[..., 1 : 1 + n] - self.random_log_density,
                q_all[..., 1 + n : 1 + 2 * n] - policy_log_probs[:B],
                q_all[..., 1 + 2 * n :] - policy_log_probs[B:],
            ],
            dim=-1,
        )
        penalty = cql_conservative_penalty(q_ood, q_data, self.cql_temp)  # mean over both critics
        critic_loss = td_loss + self.cql_alpha * q_all.shape[0] * penalty  # CORL sums the critics

        torch_optimizer(optimizers).zero_grad(set_to_none=True)
        self.backprop(critic_loss + actor_loss + alpha_loss)
        self.step_optimizer(optimizers)
        soft_update(self.target_critic, self.critic, self.tau)
        return {
            "critic_loss": critic_loss.detach(),
            "td_loss": td_loss.detach(),
            "cql_penalty": penalty.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "alpha": alpha,
            "log_pi": log_pi.detach().mean(),
            "q_mean": q_data.detach().mean(),
        }

    def configure_optimizers(self):
        # one Adam, a parameter group per network: one optimizer step per gradient update
        return torch.optim.Adam(
            [
                {"params": self.critic.parameters(), "lr": self.critic_lr},
                {"params": self.actor.parameters(), "lr": self.actor_lr},
                {"params": [self.log_alpha], "lr": self.alpha_lr},
            ],
            foreach=True,
        )
