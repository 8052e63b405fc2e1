"""CQL: the conservative penalty and the temperature loss against hand-computed numbers, the update's
gradient routing, the actor requirement, and a short real run that learns."""

from __future__ import annotations

import math

import pytest
import torch

from tests.algos.stand_ins import StateCritics
from tests.conftest import compose_config, random_pendulum_batch, small_train_config
from vla_hydra.algos.cql import CQL, cql_conservative_penalty, sac_alpha_loss
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.data.stats import DatasetStats
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.envs.factory import EnvSpec
from vla_hydra.eval import load_policy
from vla_hydra.models.actors import TanhGaussianActor
from vla_hydra.models.mlp import DeterministicActor
from vla_hydra.train import train

SPEC = EnvSpec("Pendulum-v1", (3,), 1, [-2.0], [2.0])


def test_cql_conservative_penalty_hand_computed():
    q_ood = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    q_data = torch.tensor([0.5, 1.0])
    # row 1: log(e^0 + e^0) = log 2 = 0.693147, - 0.5 = 0.193147
    # row 2: log(3 + 1) = log 4 = 1.386294, - 1.0 = 0.386294; mean = 0.289721
    assert cql_conservative_penalty(q_ood, q_data, 1.0).item() == pytest.approx(0.289721, abs=1e-6)
    # temperature 2: 2 * log(e^(2/2) + e^(2/2)) = 2 * (1 + log 2) = 3.386294, - 2 = 1.386294
    penalty = cql_conservative_penalty(torch.tensor([[2.0, 2.0]]), torch.tensor([2.0]), 2.0)
    assert penalty.item() == pytest.approx(1.386294, abs=1e-6)
    # (critics, batch, K) inputs: the mean over critics and batch
    stacked = cql_conservative_penalty(torch.stack([q_ood, q_ood]), torch.stack([q_data, q_data]), 1.0)
    assert stacked.item() == pytest.approx(0.289721, abs=1e-6)


def test_sac_alpha_loss_hand_computed():
    log_alpha = torch.tensor(0.5, requires_grad=True)
    log_pi = torch.tensor([-1.0, -3.0])
    # log pi + target (-1) = [-2, -4], mean -3: loss = -(0.5 * -3) = 1.5, d/dlog_alpha = 3 > 0:
    # the policy's entropy (-mean log pi = 2) is above the target (-1), so alpha goes down
    loss = sac_alpha_loss(log_alpha, log_pi, target_entropy=-1.0)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(3.0)


def test_cql_reward_map_as_corl_and_kept_by_checkpoints():
    stats = DatasetStats(episode_return_min=-1700.0, episode_return_max=-100.0)

    def actor(shape, dim):
        return TanhGaussianActor(shape, dim, hidden_dims=(8,))

    rewards = torch.tensor([2.0, -4.0])
    assert torch.equal(
        CQL(SPEC, actor, critic_hidden_dims=(8,), stats=stats).mapped_rewards(rewards), rewards
    )
    # CORL's hopper-medium-v2 config: 1000 / 1600 = 0.625 per unit of reward, then * 5 - 1
    corl = CQL(
        SPEC,
        actor,
        critic_hidden_dims=(8,),
        stats=stats,
        normalize_reward=True,
        reward_scale=5.0,
        reward_bias=-1.0,
    )
    torch.testing.assert_close(corl.mapped_rewards(rewards), torch.tensor([2 * 3.125 - 1, -4 * 3.125 - 1]))
    rebuilt = CQL(SPEC, actor, critic_hidden_dims=(8,))  # as load_policy does: no dataset stats
    rebuilt.load_state_dict(corl.state_dict())
    torch.testing.assert_close(rebuilt.mapped_rewards(rewards), torch.tensor([5.25, -13.5]))
    # a checkpoint from before the reward map trained on the rewards as they were
    older = {k: v for k, v in corl.state_dict().items() if k not in ("reward_scale", "reward_bias")}
    rebuilt.load_state_dict(older)
    assert torch.equal(rebuilt.mapped_rewards(rewards), rewards)


def test_cql_needs_a_stochastic_actor():
    with pytest.raises(ConfigError, match="algo=cql.*DeterministicActor.*model=tanh_gaussian"):
        CQL(SPEC, DeterministicActor)
    assert compose_config("train", ["algo=cql"]).model._target_.endswith("TanhGaussianActor")


def test_cql_update_routes_each_loss_to_its_own_parameters():
    torch.manual_seed(0)
    algo = CQL(
        SPEC,
        lambda s, d: TanhGaussianActor(s, d, hidden_dims=(16,)),
        critic_hidden_dims=(16,),
        cql_n_actions=3,
    )
    algo._direct_backward = True  # no Trainer here: plain backward
    optimizer = algo.configure_optimizers()
    batch = random_pendulum_batch(8)
    target_before = [p.clone() for p in algo.target_critic.parameters()]
    losses = algo.update(batch, optimizer)
    assert {"critic_loss", "actor_loss", "alpha", "cql_penalty", "q_mean"} <= set(losses)
    assert all(v.dim() == 0 and not v.requires_grad for v in losses.values())
    # log alpha's only gradient is the temperature loss: -mean(log pi + target) (alpha detached in
    # the actor loss)
    log_pi_mean = losses["log_pi"].item()
    assert algo.log_alpha.grad.item() == pytest.approx(-(log_pi_mean - 1.0), rel=1e-5)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.critic.parameters())
    assert all(p.grad is not None for p in algo.actor.parameters())
    # targets moved by Polyak averaging
    assert not any(
        torch.equal(a, b) for a, b in zip(target_before, algo.target_critic.parameters(), strict=True)
    )


def test_short_cql_run_learns(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path,
        data_dir,
        [
            "algo=cql",
            "trainer.max_steps=1500",  # seen: -1455 -> -687 (2000 updates: -416)
            "eval.every_n_updates=100000",
            # CORL's 256x3 nets and lrs need far more updates than a test can afford (~5 updates/s
            # here; 1000 updates moved the return only ~-1660 -> -1540): smaller, faster-learning nets
            "algo.critic_hidden_dims=[64,64]",
            "model.hidden_dims=[64,64]",
            "algo.actor_lr=1e-3",
            "algo.critic_lr=1e-3",
        ],
    )
    _, results = train(cfg)
    assert results["train_steps"] == 1500
    step0 = results["eval_history"][0]
    assert step0["step"] == 0
    assert results["eval_return_mean"] > step0["eval/return_mean"] + 400, results["eval_history"]
    # the checkpoint rebuilds the same policy: same seeds, same returns
    algo, env, _ = load_policy(results["checkpoint"])
    rerun = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed)
    assert rerun.return_mean == pytest.approx(results["eval_return_mean"], rel=1e-6)


class _RowLogProbActor(torch.nn.Module):
    """sample(x, k): zero actions; log pi of every sample of row r is -(r + 1)."""

    def sample(self, x, num_samples):
        rows = torch.arange(x.shape[0], dtype=torch.float32)
        log_probs = -(rows + 1.0).unsqueeze(1).expand(-1, num_samples)
        return torch.zeros(x.shape[0], num_samples, 1), log_probs


def test_update_wires_targets_terminals_and_importance_weights_hand_computed():
    """The critic loss on stand-in networks: the TD target cuts at terminals (not timeouts) and uses the
    target critics' min at s', and the logsumexp subtracts each proposal's own log density (uniform:
    -|A| log 2; pi(.|s) and pi(.|s') samples: the log pi of the state they were drawn at)."""
    algo = CQL(
        SPEC,
        lambda s, d: TanhGaussianActor(s, d, hidden_dims=(8,)),
        critic_hidden_dims=(8,),
        discount=0.5,
        cql_alpha=1.0,
        cql_n_actions=2,
    )
    algo.critic, algo.target_critic, algo.actor = StateCritics(0.0), StateCritics(1.0), _RowLogProbActor()
    algo._direct_backward = True
    batch = {
        "observations": torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]),
        "actions": torch.tensor([[2.0], [-2.0]]),
        "rewards": torch.tensor([1.0, 2.0]),
        "next_observations": torch.tensor([[0.0, 3.0, 0.0], [0.0, 5.0, 0.0]]),
        "terminals": torch.tensor([0.0, 1.0]),
        "timeouts": torch.tensor([1.0, 0.0]),  # a time limit bootstraps; only the terminal cuts
    }
    losses = algo.update(batch, torch.optim.SGD(algo.parameters(), lr=0.0))
    # target critics at s': [3 + 1, 5 + 1] and [3 + 2, 5 + 2], min [4, 6]; TD target [1 + 0.5 * 4, 2] = [3, 2]
    # Q(s, a) = [1, 2] and [2, 3]: MSEs ((1 - 3)^2 + 0) / 2 = 2 and (1 + 1) / 2 = 1, summed
    assert losses["td_loss"].item() == pytest.approx(3.0)
    assert losses["q_mean"].item() == pytest.approx(2.0)
    # state b's candidates all have Q = q: 2 uniform (q + log 2), 2 from pi(.|s) (log pi -(b + 1): q + b + 1)
    # and 2 from pi(.|s') (rows B + b: log pi -(b + 3), q + b + 3); logsumexp - q is the same for both critics
    per_state = [math.log(2 * 2 + 2 * math.exp(b + 1) + 2 * math.exp(b + 3)) for b in (0, 1)]
    penalty = sum(per_state) / 2
    assert losses["cql_penalty"].item() == pytest.approx(penalty, rel=1e-6)
    assert losses["critic_loss"].item() == pytest.approx(3.0 + 1.0 * 2 * penalty, rel=1e-6)
    # alpha = 1; log pi(a|s) = [-1, -2]; min Q(s, pi) = [1, 2]: mean(-1 - 1, -2 - 2) = -3
    assert losses["actor_loss"].item() == pytest.approx(-3.0)
