"""GAIL: discriminator loss, gradient penalty, rewards and accuracy against hand-computed values; the
discriminator separates expert from random transitions after a short training; a missing expert
dataset is a one-line error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import small_train_config
from vla_hydra.algos.gail import (
    discriminator_accuracy,
    discriminator_loss,
    discriminator_reward,
    gradient_penalty,
)
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.eval import load_policy
from vla_hydra.train import train


def test_discriminator_loss_is_balanced_bce_hand_computed():
    # expert logits 0, ln 3 (D = .5, .75); policy logit 0 (D = .5)
    loss = discriminator_loss(torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0]))
    # expert: mean(-log .5, -log .75); policy: -log(1 - .5)
    expected = (math.log(2) + math.log(4 / 3)) / 2 + math.log(2)
    assert loss.item() == pytest.approx(expected)
    # a confident, correct discriminator has a loss near 0
    assert discriminator_loss(torch.tensor([20.0]), torch.tensor([-20.0])).item() < 1e-8


def test_gradient_penalty_hand_computed():
    linear = torch.nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 4.0]]))

    def f(x):
        return linear(x).squeeze(-1)

    x = torch.randn(5, 2)
    # grad of w.x is w everywhere: ||w||^2 = 25
    assert gradient_penalty(f, x, -x, torch.rand(5, 1)).item() == pytest.approx(25.0)

    def half_square(x):
        return 0.5 * x.square().sum(-1)

    # grad of ||x||^2 / 2 is x_hat: expert (2, 0), policy (0, 0), mix .5 -> (1, 0); mix 1 -> (2, 0)
    expert, policy = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.zeros(2, 2)
    penalty = gradient_penalty(half_square, expert, policy, torch.tensor([[0.5], [1.0]]))
    assert penalty.item() == pytest.approx((1.0 + 4.0) / 2)


def test_discriminator_rewards_and_accuracy_hand_computed():
    logits = torch.tensor([0.0, math.log(3.0)])  # D = .5, .75
    # -log(1 - D): log 2, log 4
    assert discriminator_reward(logits, "gail").tolist() == pytest.approx([math.log(2), math.log(4)])
    # log D - log(1 - D) = the logit
    assert discriminator_reward(logits, "airl").tolist() == pytest.approx([0.0, math.log(3)])
    with pytest.raises(ConfigError, match="reward_type"):
        discriminator_reward(logits, "wasserstein")
    # expert right 1 of 2, policy right 2 of 2 -> (.5 + 1) / 2
    assert discriminator_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -2.0])).item() == 0.75


def test_discriminator_separates_expert_from_random_transitions(tmp_path, data_dir):
    torch.manual_seed(0)
    cfg = small_train_config(tmp_path, data_dir, ["algo=gail"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # the expert dataset, collected on first use
    datamodule.setup("fit")
    spec = instantiate(cfg.env).spec()
    algo = instantiate(cfg.algo, _partial_=True)(
        spec=spec, model=instantiate(cfg.model), stats=datamodule.stats()
    )
    expert = datamodule.buffer.data
    n = len(expert["observations"])
    # random transitions: the expert's states with uniform-random torques
    gen = np.random.default_rng(0)
    random_actions = torch.as_tensor(gen.uniform(-2.0, 2.0, size=(n, 1)).astype(np.float32))
    train_idx, test_idx = torch.arange(n)[: n * 3 // 4], torch.arange(n)[n * 3 // 4 :]

    def inputs(actions, idx):
        return algo.expert_inputs({"observations": expert["observations"][idx], "actions": actions[idx]})

    optimizer = torch.optim.Adam(algo.discriminator.parameters(), lr=cfg.algo.discriminator_lr)
    for _ in range(400):
        idx = train_idx[torch.randint(len(train_idx), (256,))]
        loss, _ = algo.discriminator_step_loss(*inputs(expert["actions"], idx), *inputs(random_actions, idx))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        d_expert = torch.sigmoid(algo.logits(*inputs(expert["actions"], test_idx)))
        d_random = torch.sigmoid(algo.logits(*inputs(random_actions, test_idx)))
    # held-out states: expert actions scored high, random ones low
    assert d_expert.mean() > 0.75 and d_random.mean() < 0.25
    assert discriminator_accuracy(d_expert.logit(), d_random.logit()) > 0.85
    # so the generator's reward is higher for expert-like actions
    assert discriminator_reward(d_expert.logit()).mean() > 3 * discriminator_reward(d_random.logit()).mean()


def test_step_loss_adds_the_weighted_penalty_on_joint_inputs(tmp_path, data_dir):
    cfg = small_train_config(tmp_path, data_dir, ["algo=gail", "algo.gradient_penalty_coef=2.0"])
    algo = instantiate(cfg.algo, _partial_=True)(
        spec=instantiate(cfg.env).spec(), model=instantiate(cfg.model)
    )
    expert_obs, policy_obs = torch.randn(8, 3), torch.randn(8, 3)
    expert_act, policy_act = torch.rand(8, 1) * 2 - 1, torch.rand(8, 1) * 2 - 1
    torch.manual_seed(3)
    loss, _ = algo.discriminator_step_loss(expert_obs, expert_act, policy_obs, policy_act)
    torch.manual_seed(3)
    mix = torch.rand(8, 1)  # the interpolation weights the step drew
    penalty = gradient_penalty(
        lambda x: algo.discriminator.net(x).squeeze(-1),
        torch.cat([expert_obs, expert_act], -1),
        torch.cat([policy_obs, policy_act], -1),
        mix,
    )
    bce = discriminator_loss(algo.logits(expert_obs, expert_act), algo.logits(policy_obs, policy_act))
    assert penalty.item() > 0
    assert loss.item() == pytest.approx(bce.item() + 2.0 * penalty.item(), rel=1e-5)


def test_gail_without_expert_data_is_a_clear_error(tmp_path, data_dir):
    cfg = small_train_config(tmp_path, data_dir, ["algo=gail", "data=rollouts", "debug=fdr"])
    # refused before anything is built (it used to be refused as the first step started, after the
    # first evaluation)
    with pytest.raises(ConfigError, match="data=rollouts: algo=gail needs expert transitions from data="):
        train(cfg)


def test_gail_on_discrete_cartpole_imitates_the_scripted_expert(tmp_path, data_dir):
    """Discrete actions: the discriminator sees one-hot actions; a short real run learns to balance
    from 10 expert episodes without ever using the env's reward."""
    cfg = small_train_config(
        tmp_path,
        data_dir,
        [
            "algo=gail",
            "env=cartpole",
            "data=cartpole_expert",
            "algo.gamma=0.99",
            "algo.total_timesteps=20480",
            "trainer.max_steps=-1",
            "eval.every_n_updates=1000000",
            "eval.episodes=10",
        ],
    )
    _, results = train(cfg)
    algo, _, _ = load_policy(results["checkpoint"])
    one_hot = algo.discriminator_actions(torch.tensor([1.0, 0.0]))
    assert one_hot.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert results["env_steps"] >= 20480
    # random ~22, the expert 500; measured 2026-11-26: 500.0 (seed 0), training episodes ~350 by 20k steps
    assert results["eval_return_mean"] > 200
