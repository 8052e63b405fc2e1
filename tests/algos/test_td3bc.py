"""TD3+BC: the actor loss and target smoothing against hand-computed numbers, the policy delay, and a
short real run that learns."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_pendulum_batch, small_train_config
from vla_hydra.algos.td3bc import TD3BC, smoothed_target_action, td3bc_actor_loss
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.envs.factory import EnvSpec
from vla_hydra.eval import load_policy
from vla_hydra.models.mlp import DeterministicActor
from vla_hydra.train import train


def test_td3bc_actor_loss_hand_computed_lambda_normalisation():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    pi = torch.tensor([[0.5], [0.0]])
    a = torch.tensor([[0.0], [0.5]])
    # lambda = 2.5 / mean(|1|, |-3|) = 2.5 / 2 = 1.25; mean Q = -1; BC: (0.25 + 0.25) / 2 = 0.25
    # loss = -1.25 * -1 + 0.25 = 1.5
    loss = td3bc_actor_loss(q, pi, a, alpha=2.5)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    # lambda is a constant: dloss/dq_i = -1.25 / 2 = -0.625 for every i
    torch.testing.assert_close(q.grad, torch.tensor([-0.625, -0.625]))
    # scaling Q leaves the Q term's value unchanged (the point of the normalisation)
    assert td3bc_actor_loss(q.detach() * 100, pi, a, 2.5).item() == pytest.approx(1.5)


def test_smoothed_target_action_noise_is_clipped_and_action_stays_in_bounds():
    torch.manual_seed(0)
    base = torch.full((20000, 1), 0.8)
    smoothed = smoothed_target_action(base, noise_std=0.2, noise_clip=0.5)
    assert smoothed.max() <= 1.0 and smoothed.min() >= 0.3  # 0.8 - 0.5 clip
    below = 0.8 - smoothed[smoothed < 0.8]  # unclipped side of the noise: half-normal, clipped at 0.5
    # E|N(0, 0.2)| = 0.2 * sqrt(2/pi) = 0.1596 (the 0.5 clip at 2.5 sigma barely moves it)
    assert below.mean().item() == pytest.approx(0.1596, abs=0.005)
    assert torch.equal(smoothed_target_action(base, 0.0, 0.5), base)


def test_actor_and_targets_update_every_second_update_only():
    torch.manual_seed(0)
    spec = EnvSpec("Pendulum-v1", (3,), 1, [-2.0], [2.0])
    algo = TD3BC(spec, lambda s, d: DeterministicActor(s, d, hidden_dims=(16,)), critic_hidden_dims=(16,))
    algo._direct_backward = True  # no Trainer here: plain backward
    optimizer = algo.configure_optimizers()
    batch = random_pendulum_batch(32)

    def snapshot():
        return [
            torch.cat([p.detach().flatten().clone() for p in m.parameters()])
            for m in (algo.actor, algo.target_actor, algo.critic, algo.target_critic)
        ]

    before = snapshot()
    losses = algo.update(batch, optimizer)
    after_first = snapshot()
    assert "actor_loss" not in losses and set(losses) == {"critic_loss", "q_mean"}
    # update 1: only the critic moved
    assert [torch.equal(x, y) for x, y in zip(before, after_first, strict=True)] == [True, True, False, True]
    losses = algo.update(batch, optimizer)
    after_second = snapshot()
    assert "actor_loss" in losses
    # update 2: actor, critic and both targets moved
    assert not any(torch.equal(x, y) for x, y in zip(after_first, after_second, strict=True))
    assert algo.num_updates.item() == 2


def test_short_td3bc_run_learns(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path, data_dir, ["algo=td3bc", "trainer.max_steps=2000", "eval.every_n_updates=100000"]
    )
    _, results = train(cfg)
    assert results["train_steps"] == 2000
    step0 = results["eval_history"][0]
    assert step0["step"] == 0
    assert results["eval_return_mean"] > step0["eval/return_mean"] + 400, results["eval_history"]
    # the checkpoint rebuilds the same policy: same seeds, same returns
    algo, env, _ = load_policy(results["checkpoint"])
    rerun = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed)
    assert rerun.return_mean == pytest.approx(results["eval_return_mean"], rel=1e-6)


class _SliceActor(torch.nn.Module):
    """pi(s) = scale * s[2]: a hand-computable stand-in for the actor networks."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, obs):
        return self.scale * obs[:, 2:3]


class _TwoCritics(torch.nn.Module):
    """Q_0(s, a) = s[1] + a + offset, Q_1(s, a) = s[1] + 2a + offset, (2, B) like EnsembleQNetwork."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def forward(self, obs, action, detach_params=False, critic=None):
        q = torch.stack([obs[:, 1] + action[:, 0], obs[:, 1] + 2 * action[:, 0]]) + self.offset
        return q if critic is None else q[critic]


def test_losses_wire_targets_terminals_and_the_first_critic_hand_computed():
    """The update's wiring on stand-in networks: the target actor and target critics at s', the TD cut at
    terminals (not timeouts), the discount, and the actor loss through the first critic only."""
    spec = EnvSpec("Pendulum-v1", (3,), 1, [-2.0], [2.0])
    algo = TD3BC(
        spec, lambda s, d: DeterministicActor(s, d, hidden_dims=(8,)), discount=0.5, policy_noise=0.0
    )
    algo.actor, algo.target_actor = _SliceActor(1.0), _SliceActor(2.0)
    algo.critic, algo.target_critic = _TwoCritics(0.0), _TwoCritics(1.0)
    batch = {
        "observations": torch.tensor([[0.0, -2.0, 0.5], [0.0, 2.0, 0.5]]),
        "actions": torch.tensor([[2.0], [-2.0]]),  # torque in [-2, 2] -> 1, -1
        "rewards": torch.tensor([1.0, 2.0]),
        "next_observations": torch.tensor([[0.0, 3.0, 0.25], [0.0, 5.0, -0.5]]),
        "terminals": torch.tensor([0.0, 1.0]),
        "timeouts": torch.tensor([1.0, 0.0]),  # a time limit bootstraps; only the terminal cuts
    }
    _, figures = algo.losses(batch, update_actor=True)
    # target actions 2 * [0.25, -0.5] = [0.5, -1]; target critics Q_0 = [3 + 0.5 + 1, 5 - 1 + 1] = [4.5, 5],
    # Q_1 = [3 + 1 + 1, 5 - 2 + 1] = [5, 4], min [4.5, 4]; TD target [1 + 0.5 * 4.5, 2] = [3.25, 2]
    # critics at the dataset actions [1, -1]: Q_0 = [-1, 1], Q_1 = [0, 0]
    # MSEs ((-1 - 3.25)^2 + (1 - 2)^2) / 2 = 9.53125 and (3.25^2 + 2^2) / 2 = 7.28125, summed
    assert figures["critic_loss"].item() == pytest.approx(16.8125)
    assert figures["q_mean"].item() == pytest.approx(0.0)
    # pi = [0.5, 0.5]; first critic Q_0(s, pi) = [-1.5, 2.5]: lambda = 2.5 / 2 = 1.25, -1.25 * 0.5 = -0.625;
    # BC term mean((0.5 - 1)^2, (0.5 + 1)^2) = 1.25
    assert figures["actor_loss"].item() == pytest.approx(0.625)
