"""Value-learning pieces the actor-critic algorithms share (SAC, CQL, TD3+BC, IQL), as pure functions.

Terminations stop bootstrapping; time limits (timeouts) do not: callers pass `terminated`, never `done`."""

from __future__ import annotations

import torch

# the dataset fields an offline one-step TD update reads (PolicyAlgorithm.batch_keys of CQL, TD3+BC, IQL)
TD_BATCH_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")


def td_target(
    rewards: torch.Tensor, terminated: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """One-step Bellman target r + gamma * (1 - terminated) * V(s')."""
    return rewards + gamma * (1.0 - terminated) * next_value


def per_critic_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE(Q_i(s, a), target) of each critic: q is (num_critics, B), target (B,); returns (num_critics,).
    SAC, CQL and TD3+BC train on the sum (CleanRL/CORL: qf1_loss + qf2_loss), IQL on the mean."""
    return (q - target).square().mean(-1)
