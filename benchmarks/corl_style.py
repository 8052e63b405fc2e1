"""BC, TD3+BC and IQL written the way CORL's single-file scripts write them (any_percent_bc.py,
td3_bc.py, iql.py): the reference that `bench_offline.py --corl` times and `td3bc_crosscheck.py` trains.

No vla_hydra code in the updates: plain nn.Sequential networks, one Adam per network group, CORL's
update order, its batch sampling (numpy indices, one indexing per tensor) and its per-update
`.item()` logging. Hyper-parameters are CORL's defaults for the D4RL locomotion tasks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH, DISCOUNT, TAU, LR = 256, 0.99, 5e-3, 3e-4
TD3BC_ALPHA, POLICY_NOISE, NOISE_CLIP, POLICY_FREQ = 2.5, 0.2, 0.5, 2
IQL_BETA, IQL_EXPECTILE, IQL_MAX_EXP_ADV = 3.0, 0.7, 100.0


def mlp(inputs: int, outputs: int, tanh: bool = False) -> nn.Sequential:
    layers = [nn.Linear(inputs, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, outputs)]
    return nn.Sequential(*layers, *([nn.Tanh()] if tanh else []))


def polyak(target: nn.Module, source: nn.Module, tau: float = TAU) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.mul_(1 - tau).add_(tau * s)


def load_d4rl_tensors(path: Path, action_low, action_high, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A D4RL-format file with next_observations as float tensors: observations normalised with the
    dataset's mean/std (+1e-3, as CORL), actions rescaled to [-1, 1] with the env's bounds."""
    with h5py.File(path) as f:
        data = {
            k: torch.as_tensor(np.asarray(f[k]), dtype=torch.float32)
            for k in ("observations", "actions", "rewards", "next_observations", "terminals")
        }
    mean, std = data["observations"].mean(0), data["observations"].std(0) + 1e-3
    low, high = (torch.as_tensor(b, dtype=torch.float32) for b in (action_low, action_high))
    data["observations"] = (data["observations"] - mean) / std
    data["next_observations"] = (data["next_observations"] - mean) / std
    data["actions"] = (data["actions"] - low) / (high - low) * 2 - 1
    data["rewards"], data["terminals"] = data["rewards"].reshape(-1, 1), data["terminals"].reshape(-1, 1)
    tensors = {k: v.to(device) for k, v in data.items()}
    tensors["obs_mean"], tensors["obs_std"] = mean, std
    return tensors


def sample(data: dict[str, torch.Tensor], batch_size: int = BATCH) -> tuple[torch.Tensor, ...]:
    """CORL's ReplayBuffer.sample: numpy indices, each field indexed on its own."""
    return batch_at(data, np.random.randint(0, data["observations"].shape[0], size=batch_size))


def batch_at(data: dict[str, torch.Tensor], idx) -> tuple[torch.Tensor, ...]:
    """(s, a, r, s', done) at the given rows."""
    return tuple(
        data[k][idx] for k in ("observations", "actions", "rewards", "next_observations", "terminals")
    )


class CorlBC:
    """any_percent_bc.py: deterministic tanh actor, MSE to the dataset action."""

    def __init__(self, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.actor = mlp(obs_dim, act_dim, tanh=True).to(device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), LR)

    def update(self, batch) -> dict[str, float]:
        s, a = batch[0], batch[1]
        loss = F.mse_loss(self.actor(s), a)
        self.actor_opt.zero_grad()
        loss.backward()
        self.actor_opt.step()
        return {"actor_loss": loss.item()}

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)


class CorlTD3BC:
    """td3_bc.py: two critics, critic step first, then every POLICY_FREQ updates the actor step against
    the freshly updated critic and the target updates."""

    def __init__(self, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.actor = mlp(obs_dim, act_dim, tanh=True).to(device)
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1).to(device), mlp(obs_dim + act_dim, 1).to(device)
        self.target_actor, self.target_q1, self.target_q2 = (
            copy.deepcopy(m) for m in (self.actor, self.q1, self.q2)
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), LR)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], LR)
        self.total_it = 0

    def update(self, batch) -> dict[str, float]:
        self.total_it += 1
        s, a, r, s2, done = batch
        with torch.no_grad():
            noise = (torch.randn_like(a) * POLICY_NOISE).clamp(-NOISE_CLIP, NOISE_CLIP)
            x2 = torch.cat([s2, (self.target_actor(s2) + noise).clamp(-1, 1)], 1)
            target = r + DISCOUNT * (1 - done) * torch.min(self.target_q1(x2), self.target_q2(x2))
        x = torch.cat([s, a], 1)
        critic_loss = F.mse_loss(self.q1(x), target) + F.mse_loss(self.q2(x), target)
        log = {"critic_loss": critic_loss.item()}
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        if self.total_it % POLICY_FREQ == 0:
            pi = self.actor(s)
            q = self.q1(torch.cat([s, pi], 1))
            actor_loss = -TD3BC_ALPHA / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, a)
            log["actor_loss"] = actor_loss.item()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            for target_net, net in ((self.target_actor, self.actor), (self.target_q1, self.q1), (self.target_q2, self.q2)):  # fmt: skip
                polyak(target_net, net)
        return log

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)


class CorlIQL:
    """iql.py: twin Q with a target copy, state-value net, Gaussian policy with a tanh mean and a
    state-independent log-std (a MultivariateNormal, as CORL), cosine-decayed actor lr. Per update:
    value (expectile) step, Q step towards r + γ(1-d)V(s') and target update, advantage-weighted
    policy step."""

    def __init__(self, obs_dim: int, act_dim: int, device: str = "cpu", max_steps: int = 1_000_000):
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1).to(device), mlp(obs_dim + act_dim, 1).to(device)
        self.target_q1, self.target_q2 = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.value = mlp(obs_dim, 1).to(device)
        self.mean_net = mlp(obs_dim, act_dim, tanh=True).to(device)
        self.log_std = nn.Parameter(torch.zeros(act_dim, device=device))
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], LR)
        self.v_opt = torch.optim.Adam(self.value.parameters(), LR)
        self.actor_opt = torch.optim.Adam([*self.mean_net.parameters(), self.log_std], LR)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, max_steps)

    def policy(self, s: torch.Tensor) -> torch.distributions.MultivariateNormal:
        scale_tril = torch.diag(torch.exp(self.log_std.clamp(-20.0, 2.0)))
        return torch.distributions.MultivariateNormal(self.mean_net(s), scale_tril=scale_tril)

    def update(self, batch) -> dict[str, float]:
        s, a, r, s2, done = batch
        with torch.no_grad():
            next_v = self.value(s2)
            x = torch.cat([s, a], 1)
            target_q = torch.min(self.target_q1(x), self.target_q2(x))
        # value step (expectile regression of V towards the target Q)
        adv = target_q - self.value(s)
        weight = torch.abs(IQL_EXPECTILE - (adv < 0).float())
        v_loss = torch.mean(weight * adv**2)
        log = {"value_loss": v_loss.item()}
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        # Q step
        targets = (r + (1.0 - done) * DISCOUNT * next_v).detach()
        q_loss = (F.mse_loss(self.q1(x), targets) + F.mse_loss(self.q2(x), targets)) / 2
        log["q_loss"] = q_loss.item()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        polyak(self.target_q1, self.q1)
        polyak(self.target_q2, self.q2)
        # policy step (advantage-weighted log-likelihood)
        exp_adv = torch.exp(IQL_BETA * adv.detach()).clamp(max=IQL_MAX_EXP_ADV).squeeze(-1)
        policy_loss = torch.mean(exp_adv * -self.policy(s).log_prob(a))
        log["actor_loss"] = policy_loss.item()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        self.actor_schedule.step()
        return log

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean_net(obs)


CORL_STYLE = {"bc": CorlBC, "td3bc": CorlTD3BC, "iql": CorlIQL}
