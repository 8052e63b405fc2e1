"""IQL: the loss pieces against hand-computed numbers, reward scaling and the lr schedule wiring, a
short real run that learns, and the checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import compose_config, small_train_config
from vla_hydra.algos.iql import IQL, exp_advantage_weights, expectile_loss
from vla_hydra.algos.schedules import cosine_lr
from vla_hydra.data.stats import DatasetStats, return_range_reward_scale
from vla_hydra.envs.factory import EnvSpec
from vla_hydra.models.actors import GaussianActor
from vla_hydra.train import train

SPEC = EnvSpec("Pendulum-v1", (3,), 1, [-2.0], [2.0])


def test_expectile_loss_hand_computed_and_asymmetric():
    # tau 0.7: diff 1 >= 0 weighs 0.7, diff -2 < 0 weighs 0.3: (0.7*1 + 0.3*4) / 2 = 1.9 / 2 = 0.95
    assert expectile_loss(torch.tensor([1.0, -2.0]), 0.7).item() == pytest.approx(0.95)
    # same magnitude, opposite signs: 0.7*4 = 2.8 vs 0.3*4 = 1.2 (under-estimating V costs more)
    assert expectile_loss(torch.tensor([2.0]), 0.7).item() == pytest.approx(2.8)
    assert expectile_loss(torch.tensor([-2.0]), 0.7).item() == pytest.approx(1.2)
    # tau 0.5 is half the squared error: 0.5 * (1 + 4) / 2 = 1.25
    assert expectile_loss(torch.tensor([1.0, -2.0]), 0.5).item() == pytest.approx(1.25)


def test_exp_advantage_weights_hand_computed_with_clip():
    weights = exp_advantage_weights(torch.tensor([-1.0, 0.0, 1.0, 2.0]), beta=3.0, max_weight=100.0)
    # exp(-3) = 0.049787, exp(0) = 1, exp(3) = 20.085537, exp(6) = 403.43 -> clipped to 100
    torch.testing.assert_close(weights, torch.tensor([0.049787, 1.0, 20.085537, 100.0]))


def test_reward_scale_from_dataset_return_range_survives_a_rebuild_without_stats():
    stats = DatasetStats(episode_return_min=-1700.0, episode_return_max=-100.0)
    # 1000 / (-100 - -1700) = 1000 / 1600 = 0.625
    assert return_range_reward_scale(stats) == pytest.approx(0.625)
    assert return_range_reward_scale(None) == 1.0
    assert return_range_reward_scale(DatasetStats(episode_return_min=5.0, episode_return_max=5.0)) == 1.0

    def actor(shape, dim):
        return GaussianActor(shape, dim, hidden_dims=(8,))

    trained = IQL(SPEC, actor, critic_hidden_dims=(8,), value_hidden_dims=(8,), stats=stats)
    assert trained.reward_scale.item() == pytest.approx(0.625)
    assert IQL(SPEC, actor, stats=stats, normalize_reward=False).reward_scale.item() == 1.0
    rebuilt = IQL(SPEC, actor, critic_hidden_dims=(8,), value_hidden_dims=(8,))  # as load_policy does
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.reward_scale.item() == pytest.approx(0.625)


def test_algo_iql_selects_the_gaussian_actor_and_model_mlp_overrides_it():
    assert compose_config("train", ["algo=iql"]).model._target_.endswith("GaussianActor")
    assert compose_config("train", ["algo=iql", "model=mlp"]).model._target_.endswith("DeterministicActor")


def test_iql_with_deterministic_actor_runs(tmp_path, data_dir):
    cfg = small_train_config(tmp_path, data_dir, ["algo=iql", "model=mlp", "debug=fdr"])
    _, results = train(cfg)
    assert results["train_steps"] == 1 and np.isfinite(results["eval_return_mean"])


def test_short_iql_run_learns_decays_actor_lr_and_checkpoint_reproduces_actions(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path, data_dir, ["algo=iql", "trainer.max_steps=2000", "eval.every_n_updates=100000"]
    )
    _, results = train(cfg)
    assert results["train_steps"] == 2000
    step0 = results["eval_history"][0]
    assert step0["step"] == 0
    # untrained ~ -1500; require a clear gain (BC's test asks +400 at 1500 updates)
    assert results["eval_return_mean"] > step0["eval/return_mean"] + 400, results["eval_history"]

    ckpt = torch.load(results["checkpoint"], map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert state["num_updates"].item() == 2000
    groups = ckpt["optimizer_states"][0]["param_groups"]
    # value and critic lr constant; the actor's decayed to cosine_lr(3e-4, 1999, 2000) ~ 1.9e-10
    assert groups[0]["lr"] == groups[1]["lr"] == 3e-4
    assert groups[2]["lr"] == pytest.approx(cosine_lr(3e-4, 1999, 2000)) and groups[2]["lr"] < 1e-8

    from vla_hydra.eval import load_policy

    algo, env, _ = load_policy(results["checkpoint"])
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32) * [1.0, 1.0, 4.0]
    # hand-rolled forward through the saved weights: normalise, 256x2 ReLU MLP, tanh mean, scale to [-2, 2]
    x = (torch.from_numpy(obs).float() - state["obs_normalizer.mean"]) / state["obs_normalizer.std"]
    for i in (0, 2):
        x = torch.relu(x @ state[f"actor.net.{i}.weight"].T + state[f"actor.net.{i}.bias"])
    expected = torch.tanh(x @ state["actor.net.4.weight"].T + state["actor.net.4.bias"]) * 2.0
    np.testing.assert_allclose(algo.act(obs), expected.numpy(), rtol=1e-5, atol=1e-6)

    from vla_hydra.envs.evaluation import rollout_episodes

    rerun = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed)
    assert rerun.return_mean == pytest.approx(results["eval_return_mean"], rel=1e-6)


def test_iql_beats_bc_on_mostly_random_data(tmp_path, data_dir):
    """80% uniform-random episodes, 20% controller: BC imitates the average action, IQL's advantage
    weights pick out the controller's. Same seed, data and number of updates for both."""
    returns = {}
    for algo in ("bc", "iql"):
        cfg = small_train_config(
            tmp_path / algo,
            data_dir,
            [
                f"algo={algo}",
                "data=pendulum_random_expert",
                "trainer.max_steps=3000",
                "eval.every_n_updates=100000",
                "eval.episodes=10",
            ],
        )
        _, results = train(cfg)
        returns[algo] = results["eval_return_mean"]
    # seen: BC ~ -1380, IQL ~ -440 (random ~ -1230, controller ~ -145)
    assert returns["iql"] > returns["bc"] + 400, returns


def test_checkpoints_with_the_old_max_updates_key_still_build():
    """Configs stored in checkpoints before the decay horizon was renamed carry `max_updates`."""

    def actor(shape, dim):
        return GaussianActor(shape, dim, hidden_dims=(8,))

    small = {"critic_hidden_dims": (8,), "value_hidden_dims": (8,)}
    assert IQL(SPEC, actor, max_updates=2500, **small).actor_lr_decay_updates == 2500
    assert IQL(SPEC, actor, actor_lr_decay_updates=700, **small).actor_lr_decay_updates == 700


class _StateValue(torch.nn.Module):
    """V(s) = s[0]: hand-computable stand-in for the value network."""

    def forward(self, obs):
        return obs[..., 0]


class _TwoCritics(torch.nn.Module):
    """Q_0(s, a) = s[1] + a + offset, Q_1(s, a) = s[1] + 2a + offset: (2, B) like EnsembleQNetwork."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def forward(self, obs, action, detach_params=False, critic=None):
        return torch.stack([obs[:, 1] + action[:, 0], obs[:, 1] + 2 * action[:, 0]]) + self.offset


class _ZeroActor(torch.nn.Module):
    def forward(self, obs):
        return torch.zeros(obs.shape[0], 1)


def test_losses_wire_targets_terminals_and_advantages_hand_computed():
    """The update's wiring on stand-in networks: V from s' (not s), the TD cut at terminals (not
    timeouts), the discount, the target critics' min for the advantage, and dataset actions in [-1, 1]."""

    def actor(shape, dim):
        return GaussianActor(shape, dim, hidden_dims=(8,))

    algo = IQL(SPEC, actor, discount=0.5, beta=1.0, max_weight=2.0, expectile=0.7)
    algo.value, algo.critic, algo.target_critic = _StateValue(), _TwoCritics(0.0), _TwoCritics(1.0)
    algo.actor, algo.stochastic_actor = _ZeroActor(), False
    batch = {
        "observations": torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]]),
        "actions": torch.tensor([[2.0], [-2.0]]),  # torque in [-2, 2] -> 1, -1
        "rewards": torch.tensor([1.0, 2.0]),
        "next_observations": torch.tensor([[3.0, 0.0, 0.0], [5.0, 0.0, 0.0]]),
        "terminals": torch.tensor([0.0, 1.0]),
        "timeouts": torch.tensor([1.0, 0.0]),  # a time limit bootstraps; only the terminal cuts
    }
    _, figures = algo.losses(batch)
    # TD target r + 0.5 (1 - term) V(s'): [1 + 0.5 * 3, 2] = [2.5, 2]
    # critics Q_0 = [0 + 1, 1 - 1] = [1, 0], Q_1 = [0 + 2, 1 - 2] = [2, -1]
    # MSEs: ((1 - 2.5)^2 + (0 - 2)^2) / 2 = 3.125 and ((2 - 2.5)^2 + (-1 - 2)^2) / 2 = 4.625; mean 3.875
    assert figures["critic_loss"].item() == pytest.approx(3.875)
    assert figures["q_mean"].item() == pytest.approx(0.5)
    # advantage: min of the target critics [2, 0] minus V(s) [1, 2] = [1, -2]
    assert figures["advantage_mean"].item() == pytest.approx(-0.5)
    # expectile 0.7: (0.7 * 1 + 0.3 * 4) / 2 = 0.95
    assert figures["value_loss"].item() == pytest.approx(0.95)
    # weights exp(A) clipped at 2: [min(e, 2), exp(-2)] = [2, 0.135335]
    assert figures["weight_mean"].item() == pytest.approx((2.0 + math.exp(-2.0)) / 2)
    # deterministic actor at 0, dataset actions [1, -1]: mean(w * 1) = (2 + 0.135335) / 2
    assert figures["actor_loss"].item() == pytest.approx((2.0 + math.exp(-2.0)) / 2)
