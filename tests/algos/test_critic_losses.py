"""The shared value-learning pieces and IQL's advantage-weighted actor losses, against hand-computed values."""

import torch

from vla_hydra.algos.critic_losses import per_critic_mse, td_target
from vla_hydra.algos.iql import awr_log_prob_loss, awr_regression_loss


def test_td_target_bootstraps_except_at_terminations():
    rewards, terminated = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.0])
    next_value = torch.tensor([10.0, 10.0, -4.0])
    # 1 + 0.9 * 10 = 10; a terminal step is its reward alone: -2; 0.5 + 0.9 * -4 = -3.1
    torch.testing.assert_close(
        td_target(rewards, terminated, next_value, 0.9), torch.tensor([10.0, -2.0, -3.1])
    )


def test_per_critic_mse_is_one_mse_per_critic():
    q = torch.tensor([[1.0, 2.0], [0.0, 4.0]])  # 2 critics, batch of 2
    target = torch.tensor([2.0, 2.0])
    # critic 0: ((1-2)^2 + 0) / 2 = 0.5; critic 1: ((0-2)^2 + (4-2)^2) / 2 = 4
    torch.testing.assert_close(per_critic_mse(q, target), torch.tensor([0.5, 4.0]))


def test_advantage_weighted_actor_losses_hand_computed():
    weights = torch.tensor([2.0, 0.5])
    # -(2 * -1 + 0.5 * -3) / 2 = 1.75
    torch.testing.assert_close(awr_log_prob_loss(weights, torch.tensor([-1.0, -3.0])), torch.tensor(1.75))
    predicted = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    actions = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    # squared errors summed over action dims: 1 and 4 + 1 = 5; (2 * 1 + 0.5 * 5) / 2 = 2.25
    torch.testing.assert_close(awr_regression_loss(weights, predicted, actions), torch.tensor(2.25))
