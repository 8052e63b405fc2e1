"""GRPO: group advantages, step weights, the clipped loss and the reference KL against hand-computed
numbers; group rollouts from identical start states in real envs; the reference policy; a short real
CartPole run that learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import run_module, small_train_config
from vla_hydra.algos.grpo import GRPO, group_advantages, grpo_policy_loss, reference_kl, step_weights
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.envs.factory import EnvFactory
from vla_hydra.models.policies import StochasticPolicy
from vla_hydra.train import train


def test_group_advantages_hand_computed():
    # groups of 2: [1, 3] -> mean 2, std (Bessel) sqrt(2) -> -+1/sqrt(2); [2, 2] -> no signal -> zeros
    adv = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([-s, s, 0.0, 0.0]))
    # group of 3: [0, 3, 6] -> mean 3, std sqrt((9 + 0 + 9) / 2) = 3 -> [-1, 0, 1]
    torch.testing.assert_close(
        group_advantages(torch.tensor([0.0, 3.0, 6.0]), 3), torch.tensor([-1.0, 0.0, 1.0])
    )
    # Dr. GRPO: only centred, [1, 3] -> [-1, 1]
    torch.testing.assert_close(
        group_advantages(torch.tensor([1.0, 3.0]), 2, scale_by_std=False), torch.tensor([-1.0, 1.0])
    )


def test_group_with_identical_returns_has_exactly_zero_advantages():
    # 0.1 and -1234.567 are not exact in float32: the mean differs from them by rounding, and dividing
    # that residue by a ~0 std would give +-1; identical groups must give exact zeros, no NaN.
    # 12345.678 x 3: float32 mean - value = 0.001 and std 0.0012, so without the check it gives ~0.8
    returns = torch.tensor([0.1] * 3 + [-1234.567] * 3 + [12345.678] * 3 + [1.0, 2.0, 3.0])
    adv = group_advantages(returns, group_size=3)
    assert torch.equal(adv[:9], torch.zeros(9))
    torch.testing.assert_close(adv[9:], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.isfinite(adv).all()


def test_step_weights_step_and_episode_aggregation():
    # two episodes: env 0 runs 3 steps, env 1 one step (then masked)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]], dtype=torch.bool)
    torch.testing.assert_close(step_weights(mask, "step"), mask.float())
    # episode mean: 4 valid steps, 2 episodes -> 4 / (2 * 3) = 2/3 for env 0's steps, 4 / (2 * 1) = 2
    expected = torch.tensor([[2 / 3, 2.0], [2 / 3, 0.0], [2 / 3, 0.0]])
    weights = step_weights(mask, "episode")
    torch.testing.assert_close(weights, expected)
    # mean over valid steps of w * loss = mean over episodes of each episode's mean loss
    loss = torch.tensor([[1.0, 10.0], [2.0, 99.0], [3.0, 99.0]])
    assert (weights * loss)[mask].mean().item() == pytest.approx((2.0 + 10.0) / 2)
    with pytest.raises(ConfigError, match="loss_aggregation"):
        step_weights(mask, "token")


def test_grpo_policy_loss_hand_computed():
    # step 1: r = 1.5, A*w = 1 -> max(-1.5, -1.2) = -1.2 (clipped at 1.2)
    # step 2: r = 0.5, A*w = -2 * 0.5 = -1 -> max(0.5, 0.8) = 0.8 (clipped at 0.8)
    old = torch.tensor([-1.0, -1.0])
    log_prob = old + torch.tensor([math.log(1.5), math.log(0.5)])
    loss = grpo_policy_loss(log_prob, old, torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.5]), clip_coef=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_reference_kl_is_k3_estimate_of_kl_policy_to_reference():
    # pi(a) = 0.5, ref(a) = 0.25: ref/pi - 1 - log(ref/pi) = 0.5 - 1 + log 2 = 0.193147; equal -> 0
    kl = reference_kl(torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0]))
    assert kl.item() == pytest.approx((0.5 - 1 + math.log(2)) / 2)
    # samples from pi = [0.25, 0.75] in exact proportion, ref = [0.5, 0.5]: the mean is exactly
    # KL(pi || ref) = 0.25 log(0.5) + 0.75 log(1.5) = 0.130812 (KL(ref || pi) would be 0.143841)
    pi, ref = torch.tensor([0.25, 0.75, 0.75, 0.75]), torch.tensor([0.5] * 4)
    assert reference_kl(pi.log(), ref.log()).item() == pytest.approx(0.130812, abs=1e-6)
    # weighted like the policy loss (loss_aggregation): steps' k3 terms 0.193147 and 0, weights 1.5 and 0.5
    weighted = reference_kl(
        torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0]), torch.tensor([1.5, 0.5])
    )
    assert weighted.item() == pytest.approx(1.5 * (0.5 - 1 + math.log(2)) / 2)


def _cartpole_grpo(wrappers=(), **kwargs) -> GRPO:
    env = EnvFactory(id="CartPole-v1", wrappers=list(wrappers))

    def model(shape, dim, discrete):
        return StochasticPolicy(shape, dim, discrete=discrete, hidden_dims=(16,))

    algo = GRPO(spec=env.spec(), model=model, env=env, **kwargs)
    algo.envs = env.make_training_vector(algo.num_envs)
    algo._direct_backward = True  # no trainer attached: plain loss.backward()
    return algo


def test_group_rollouts_start_identically_and_mask_after_episode_end():
    torch.manual_seed(0)
    algo = _cartpole_grpo(group_size=3, num_groups=2, seed=7)
    rollout = algo.collect_groups()
    first_obs, mask = rollout["obs"][0], rollout["mask"]
    # same start state within a group, different across groups
    assert torch.equal(first_obs[0], first_obs[1]) and torch.equal(first_obs[0], first_obs[2])
    assert torch.equal(first_obs[3], first_obs[5]) and not torch.equal(first_obs[0], first_obs[3])
    # masks are 1 then 0 per env (one episode each) and the last step of the rollout ends some episode
    lengths = mask.sum(0)
    for env_index in range(6):
        assert mask[: lengths[env_index], env_index].all() and not mask[lengths[env_index] :, env_index].any()
    assert mask.shape[0] == int(lengths.max())
    # CartPole pays 1 per step: returns are the lengths; env_steps counts only unmasked steps
    torch.testing.assert_close(rollout["returns"], lengths.float())
    assert int(algo.env_steps) == int(lengths.sum())
    assert [e["length"] for e in algo.episode_log] == lengths.tolist()
    # the seeds are a function of (seed, iteration): the next iteration starts elsewhere, a rebuild repeats
    rebuilt = _cartpole_grpo(group_size=3, num_groups=2, seed=7)
    assert algo.group_seeds(0) != algo.group_seeds(1) and algo.group_seeds(3) == rebuilt.group_seeds(3)


def test_group_returns_learn_from_wrapped_rewards_and_the_curve_logs_the_env_own():
    from functools import partial

    import gymnasium as gym

    torch.manual_seed(0)
    halved = partial(gym.wrappers.TransformReward, func=lambda reward: 0.5 * reward)
    algo = _cartpole_grpo(wrappers=[halved], group_size=2, num_groups=2, seed=3)
    rollout = algo.collect_groups()
    lengths = rollout["mask"].sum(0).float()
    torch.testing.assert_close(rollout["returns"], 0.5 * lengths)  # what the policy learns from
    assert [e["return"] for e in algo.episode_log] == lengths.tolist()  # CartPole's own 1 per step


def test_reference_policy_frozen_or_refreshed():
    torch.manual_seed(0)
    frozen = _cartpole_grpo(group_size=2, num_groups=2, kl_coef=0.1, update_epochs=2, ent_coef=0.01)
    initial = [p.clone() for p in frozen.policy.parameters()]
    stats = frozen.train_iteration(frozen.configure_optimizers())
    frozen.train_iteration(frozen.configure_optimizers())
    assert {"policy_loss", "ref_kl", "entropy"} <= set(stats) and stats["ref_kl"] >= 0
    assert all(torch.equal(r, p) for r, p in zip(frozen.ref_policy.parameters(), initial, strict=True))
    assert not all(torch.equal(q, p) for q, p in zip(frozen.policy.parameters(), initial, strict=True))

    refreshed = _cartpole_grpo(group_size=2, num_groups=2, kl_coef=0.1, ref_update_every=1, update_epochs=2)
    optimizer = refreshed.configure_optimizers()
    refreshed.train_iteration(optimizer)
    after_first = [p.clone() for p in refreshed.policy.parameters()]
    refreshed.train_iteration(optimizer)  # copies the policy into the reference before collecting
    assert all(torch.equal(r, p) for r, p in zip(refreshed.ref_policy.parameters(), after_first, strict=True))
    assert _cartpole_grpo(kl_coef=0.0).ref_policy is None


def test_bad_group_size_is_a_config_error():
    with pytest.raises(ConfigError, match="group_size"):
        _cartpole_grpo(group_size=1)


def test_grpo_learns_cartpole_in_a_short_run(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path,
        data_dir,
        ["algo=grpo", "env=cartpole", "algo.total_timesteps=20000", "seed=0", "trainer.max_steps=-1"],
    )
    _, results = train(cfg)
    episodes = results["train_episodes"]
    group_episodes = cfg.algo.group_size * cfg.algo.num_groups
    first = np.mean([e["return"] for e in episodes[:group_episodes]])
    last = np.mean([e["return"] for e in episodes[-group_episodes:]])
    assert results["env_steps"] >= 20000 and len(episodes) % group_episodes == 0
    # random CartPole play lasts ~22 steps; the learned policy several times longer
    assert first < 40 and last > 3 * first
    assert results["eval_return_mean"] > 150


def test_an_env_num_envs_grpo_would_ignore_is_refused(tmp_path):
    proc = run_module(
        "vla_hydra.train", "algo=grpo", "env=cartpole", "env.num_envs=8", f"hydra.run.dir={tmp_path}/run"
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: env.num_envs=8: algo=grpo steps algo.group_size x algo.num_groups = 32 envs, one per group "
        "member; set those instead"
    ]
