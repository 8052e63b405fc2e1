"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) for env episodes: no critic.

One Lightning step = one iteration: `num_groups` groups of `group_size` episodes, every episode of a
group starting from the same state (its envs are reset with the same seed); each episode's return is
normalised within its group, (R_i - mean_group) / (std_group + eps), and that advantage is given to
every step of the episode. The policy is then updated with PPO's clipped-ratio objective for
`update_epochs` passes over the collected steps in `num_minibatches` shuffled minibatches, optionally
with a k3 KL penalty to a frozen reference policy (the initial one, or one refreshed every
`ref_update_every` iterations) and an entropy bonus.

The algorithm only touches the policy through `sample(obs) -> (action, log_prob)`, `log_prob(obs,
action)`, `entropy(obs)` and `forward(obs)` (the deterministic action), so any policy with that
interface (models/policies.py StochasticPolicy, later VLA policies) can be trained with it.

Envs: GRPO steps `group_size * num_groups` envs in lock-step (its `num_envs`, which sizes the training
vector env built from `env=`; `env.num_envs` is not used). Each env runs exactly one
episode per iteration; once an env's episode has ended, its later steps (taken only because the
vector env steps every env together) are masked out and not counted: `env_steps` counts the steps
of the collected episodes, the experience the update learns from.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from vla_hydra.algos.online import OnlineAlgorithm
from vla_hydra.algos.ppo import approx_kl, clipped_surrogate_loss
from vla_hydra.algos.schedules import linear_decay_lr, set_lr
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.core.runtime import all_gather_rows, any_process
from vla_hydra.envs.factory import EnvFactory, EnvSpec, env_rewards

LOSS_AGGREGATIONS = ("step", "episode")


def group_advantages(
    returns: torch.Tensor, group_size: int, eps: float = 1e-8, scale_by_std: bool = True
) -> torch.Tensor:
    """Group-normalised returns: `returns` (num_groups * group_size,), consecutive blocks of
    `group_size` are one group. A_i = (R_i - mean_g) / (std_g + eps), std with Bessel's correction
    (as DeepSeekMath/TRL). A group whose returns are all equal carries no signal: its advantages are
    exactly zero (not rounding noise blown up by a near-zero std). scale_by_std=False only centres
    (Dr. GRPO)."""
    groups = returns.reshape(-1, group_size)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (groups.std(dim=1, keepdim=True) + eps)
    identical = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    return torch.where(identical, torch.zeros_like(centered), centered).reshape(-1)


def step_weights(mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Per-step loss weights for a (T, N) rollout mask (1 = step of an episode), mean 1 over the valid
    steps, so that `mean(weight * loss)` over any sample of valid steps estimates the aggregated loss.

    "step": every valid step counts the same (a long episode weighs more; DAPO's token-level mean).
    "episode": mean over each episode's steps, then over episodes (GRPO's per-sequence mean): a step of
    an episode of length L weighs num_valid / (num_episodes * L).
    """
    mask = mask.float()
    if aggregation == "step":
        return mask
    if aggregation == "episode":
        lengths = mask.sum(dim=0, keepdim=True)
        num_episodes = (lengths > 0).sum()
        return mask * mask.sum() / (num_episodes * lengths.clamp(min=1.0))
    raise ConfigError(f"algo.loss_aggregation={aggregation!r}: expected one of {list(LOSS_AGGREGATIONS)}")


def grpo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    clip_coef: float,
) -> torch.Tensor:
    """Weighted clipped-ratio surrogate over valid steps: mean_t w_t * max(-A r, -A clip(r)).
    A positive per-step weight commutes with the max, so it is folded into the advantage."""
    return clipped_surrogate_loss(log_prob, old_log_prob, advantages * weights, clip_coef)


def reference_kl(
    log_prob: torch.Tensor, ref_log_prob: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(pi || pi_ref) by the k3 estimator on actions sampled from pi: mean(pi_ref/pi - 1 - log(pi_ref/pi)),
    always >= 0 (DeepSeekMath eq. 4); ppo.approx_kl's E[(r - 1) - log r] with r = pi_ref / pi. `weights`:
    the per-step loss weights of `step_weights`, so the penalty aggregates like the policy loss."""
    return approx_kl(ref_log_prob, log_prob, weights)


class GRPO(OnlineAlgorithm):
    """Args (besides OnlineAlgorithm's):
    group_size: episodes per group (same start state), >= 2.
    num_groups: groups per iteration; an iteration collects group_size * num_groups episodes.
    kl_coef: weight of the KL(pi || pi_ref) penalty (0 = no reference policy is kept).
    ref_update_every: refresh the reference to the current policy every N iterations (0 = keep the
        initial policy).
    loss_aggregation: "step" or "episode" (see `step_weights`).
    scale_by_std: divide centred group returns by the group std (False: Dr. GRPO's centring only).
    """

    clips_gradients = True
    every_backward_uses_all_parameters = True

    name = "grpo"
    supports_discrete = True

    def __init__(
        self,
        spec: EnvSpec,
        model,
        env: EnvFactory,
        total_timesteps: int = 500_000,
        group_size: int = 8,
        num_groups: int = 4,
        lr: float = 1e-3,
        anneal_lr: bool = False,
        update_epochs: int = 20,
        num_minibatches: int = 8,
        clip_coef: float = 0.2,
        kl_coef: float = 0.0,
        ref_update_every: int = 0,
        ent_coef: float = 0.0,
        max_grad_norm: float = 0.5,
        loss_aggregation: str = "step",
        scale_by_std: bool = True,
        advantage_eps: float = 1e-8,
        normalize_observations: bool = False,
        seed: int = 0,
        max_updates: int = -1,
        stats=None,
    ):
        super().__init__(spec, env, total_timesteps, normalize_observations, seed, max_updates, stats=stats)
        if int(group_size) < 2:
            raise ConfigError(f"algo.group_size={group_size}: a group needs at least 2 episodes to compare")
        if int(num_groups) < 1:
            raise ConfigError(f"algo.num_groups={num_groups}: expected a positive integer")
        if loss_aggregation not in LOSS_AGGREGATIONS:
            raise ConfigError(
                f"algo.loss_aggregation={loss_aggregation!r}: expected one of {list(LOSS_AGGREGATIONS)}"
            )
        self.group_size, self.num_groups = int(group_size), int(num_groups)
        self.lr, self.anneal_lr = lr, anneal_lr
        self.update_epochs, self.num_minibatches = int(update_epochs), int(num_minibatches)
        self.clip_coef, self.kl_coef, self.ref_update_every = clip_coef, kl_coef, int(ref_update_every)
        self.ent_coef, self.max_grad_norm = ent_coef, max_grad_norm
        self.loss_aggregation, self.scale_by_std, self.advantage_eps = (
            loss_aggregation,
            scale_by_std,
            advantage_eps,
        )
        self.policy = self.build_network(
            model,
            spec.observation_shape,
            spec.action_dim,
            discrete=spec.discrete,
            needs=("sample", "log_prob", "entropy"),
            use="model=stochastic_policy",
        )
        # frozen copy for the KL penalty; a submodule, so a resumed run keeps the same reference
        self.ref_policy = copy.deepcopy(self.policy).requires_grad_(False) if kl_coef > 0 else None
        # completed iterations: picks each iteration's start-state seeds, saved for resume
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_settings(cls, spec, algo_cfg) -> None:
        super().check_settings(spec, algo_cfg)
        from vla_hydra.cli.job import command_line_overrides

        for override, key in command_line_overrides():
            if key == "env.num_envs":  # would be ignored: one env per group member
                raise ConfigError(
                    f"{override}: algo=grpo steps algo.group_size x algo.num_groups = "
                    f"{int(algo_cfg.group_size) * int(algo_cfg.num_groups)} envs, one per group member; "
                    "set those instead"
                )

    @property
    def num_envs(self) -> int:
        return self.group_size * self.num_groups

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.policy(normalized_obs)

    def configure_optimizers(self):
        return torch.optim.Adam(self.policy.parameters(), lr=self.lr, eps=1e-5, foreach=True)

    def group_seeds(self, iteration: int) -> list[int]:
        """Reset seeds of the envs for one iteration: one fresh seed per group, repeated group_size
        times; a function of (seed, iteration, rank) only, so a resumed run draws what it would have
        (under several processes each rank resets its groups to its own start states)."""
        entropy = [self.seed, iteration] + ([self.rank] if self.rank else [])
        seeds = np.random.SeedSequence(entropy).generate_state(self.num_groups)
        return [int(s) for s in seeds for _ in range(self.group_size)]

    @torch.no_grad()
    def collect_groups(self) -> dict[str, torch.Tensor]:
        """One episode in each env -> (T, N, ...) tensors, mask (T, N) of steps inside an episode, and
        returns (N,) in raw env reward units."""
        dev, n = self.device, self.num_envs
        raw_obs, _ = self.envs.reset(seed=self.group_seeds(int(self.iterations)))
        active = np.ones(n, dtype=bool)
        returns = np.zeros(n, dtype=np.float64)  # what the policy learns from (after env.wrappers)
        env_returns = np.zeros(n, dtype=np.float64)
        steps = 0
        obs_steps, action_steps, log_prob_steps, mask_steps = [], [], [], []
        # under several processes all ranks step until every rank's episodes have ended (the steps after
        # an episode's end are masked out, as within one rank): their collectives must pair up
        while any_process(bool(active.any()), dev):
            active_t = torch.as_tensor(active, device=dev)
            if self.normalize_observations:  # statistics from episode steps only, not masked padding
                self.obs_normalizer.update(torch.as_tensor(raw_obs[active], dtype=torch.float32, device=dev))
            obs = self.obs_tensor(raw_obs)
            action, log_prob = self.policy.sample(obs)
            raw_obs, rewards, terminated, truncated, infos = self.envs.step(self.env_actions(action))
            returns += np.where(active, rewards, 0.0)
            env_returns += np.where(active, env_rewards(rewards, infos), 0.0)  # the curve's, as evaluation's
            steps += int(active.sum())
            obs_steps.append(obs), action_steps.append(action), log_prob_steps.append(log_prob)
            mask_steps.append(active_t)
            active = active & ~(terminated | truncated)
        # episodes differ in length between ranks: the budget counts every rank's steps, the same on all
        self.env_steps += int(all_gather_rows(torch.tensor(steps, device=dev)).sum())
        mask = torch.stack(mask_steps)
        lengths = mask.sum(0)
        for ret, length in zip(env_returns.tolist(), lengths.tolist(), strict=True):
            self.episode_log.append({"env_steps": int(self.env_steps), "return": ret, "length": int(length)})
        return {
            "obs": torch.stack(obs_steps),
            "actions": torch.stack(action_steps),
            "log_probs": torch.stack(log_prob_steps),
            "mask": mask,
            "returns": torch.as_tensor(returns, dtype=torch.float32, device=dev),
        }

    def train_iteration(self, optimizer) -> dict[str, torch.Tensor]:
        if self.anneal_lr:
            set_lr(optimizer, linear_decay_lr(self.lr, int(self.env_steps), self.total_timesteps))
        if self.ref_policy is not None and self.ref_update_every > 0:
            if int(self.iterations) % self.ref_update_every == 0 and int(self.iterations) > 0:
                self.ref_policy.load_state_dict(self.policy.state_dict())
        rollout = self.collect_groups()
        self.iterations += 1
        mask = rollout["mask"]
        advantages = group_advantages(
            rollout["returns"], self.group_size, self.advantage_eps, self.scale_by_std
        )
        # every step of an episode gets its episode's advantage; flatten to the valid steps only
        valid = mask.flatten()
        batch = {
            "obs": rollout["obs"].flatten(0, 1)[valid],
            "actions": rollout["actions"].flatten(0, 1)[valid],
            "log_probs": rollout["log_probs"].flatten()[valid],
            "advantages": advantages.expand_as(mask).flatten()[valid],
            "weights": step_weights(mask, self.loss_aggregation).flatten()[valid],
        }
        if self.ref_policy is not None:
            with torch.no_grad():
                batch["ref_log_probs"] = self.ref_policy.log_prob(batch["obs"], batch["actions"])
        num_steps = batch["log_probs"].shape[0]
        minibatch_size = max(1, -(-num_steps // self.num_minibatches))
        params = list(self.policy.parameters())
        stats: dict[str, torch.Tensor] = {}
        for _ in range(self.update_epochs):
            order = torch.randperm(num_steps, device=self.device)
            for start in range(0, num_steps, minibatch_size):
                idx = order[start : start + minibatch_size]
                log_prob = self.policy.log_prob(batch["obs"][idx], batch["actions"][idx])
                pg_loss = grpo_policy_loss(
                    log_prob,
                    batch["log_probs"][idx],
                    batch["advantages"][idx],
                    batch["weights"][idx],
                    self.clip_coef,
                )
                loss = pg_loss
                if self.ref_policy is not None:
                    kl = reference_kl(log_prob, batch["ref_log_probs"][idx], batch["weights"][idx])
                    loss = loss + self.kl_coef * kl
                    stats["ref_kl"] = kl.detach()
                if self.ent_coef:
                    entropy = self.policy.entropy(batch["obs"][idx]).mean()
                    loss = loss - self.ent_coef * entropy
                    stats["entropy"] = entropy.detach()
                optimizer.zero_grad(set_to_none=True)
                self.backprop(loss)
                self.clip_gradients_(params, self.max_grad_norm)
                self.step_optimizer(optimizer)
                stats["policy_loss"] = pg_loss.detach()
        stats["group_return"] = rollout["returns"].mean()
        return stats
