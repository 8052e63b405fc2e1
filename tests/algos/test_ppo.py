"""PPO: GAE, the clipped losses and the KL estimator against hand-computed numbers; a short real
CartPole run that learns; resume continues the env-step budget."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import small_train_config
from vla_hydra.algos.ppo import (
    approx_kl,
    clipped_surrogate_loss,
    generalized_advantages,
    normalize,
    value_loss,
)
from vla_hydra.train import train


def _col(values):
    return torch.tensor(values, dtype=torch.float32).unsqueeze(-1)  # (T, N=1)


def test_gae_stops_at_termination_hand_computed():
    # gamma .9, lambda .8; deltas .95, .95, .5 (last step terminal: no bootstrap)
    adv = generalized_advantages(
        _col([1, 1, 1]), _col([0.5] * 3), _col([0.5] * 3), _col([0, 0, 1]), _col([0, 0, 1]), 0.9, 0.8
    )
    # A2 = .5; A1 = .95 + .72 * .5 = 1.31; A0 = .95 + .72 * 1.31 = 1.8932
    assert adv.squeeze(-1).tolist() == pytest.approx([1.8932, 1.31, 0.5])


def test_gae_bootstraps_through_truncation_but_cuts_the_recursion():
    # step 1 ends by time limit: bootstrap from V(final obs) = 2.0, but A1 must not see step 2
    adv = generalized_advantages(
        _col([1, 1, 1]), _col([0.5] * 3), _col([0.5, 2.0, 0.5]), _col([0, 0, 0]), _col([0, 1, 0]), 0.9, 0.8
    )
    # delta1 = 1 + .9 * 2 - .5 = 2.3; A2 = delta2 = .95; A1 = 2.3; A0 = .95 + .72 * 2.3 = 2.606
    assert adv.squeeze(-1).tolist() == pytest.approx([2.606, 2.3, 0.95])


def test_clipped_surrogate_loss_hand_computed():
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))
    # positive advantages: max(-1.5, -1.2) = -1.2 (clipped), max(-.5, -.8) = -.5 -> mean -.85
    assert clipped_surrogate_loss(new, old, torch.ones(2), 0.2).item() == pytest.approx(-0.85)
    # negative advantages: max(1.5, 1.2) = 1.5, max(.5, .8) = .8 -> mean 1.15
    assert clipped_surrogate_loss(new, old, -torch.ones(2), 0.2).item() == pytest.approx(1.15)


def test_value_loss_clipped_and_unclipped():
    values, old, returns = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.5, 1.0])
    # unclipped: .25, 1 ; clipped predictions 1.2, .8 -> .09, .04 ; max -> .25, 1 ; 0.5 * mean = .3125
    assert value_loss(values, old, returns, 0.2).item() == pytest.approx(0.3125)
    assert value_loss(values, old, returns, None).item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    # a clipped error larger than the unclipped one wins: old 1, new 1.05, return 0 -> clipped = 1.05
    assert value_loss(torch.tensor([1.05]), torch.tensor([1.0]), torch.tensor([0.0]), 0.01).item() == (
        pytest.approx(0.5 * 1.05**2)
    )


def test_approx_kl_k3_estimator():
    # ratio 2: (2 - 1) - log 2
    assert approx_kl(torch.tensor([math.log(2.0)]), torch.zeros(1)).item() == pytest.approx(1 - math.log(2))


def _ppo_cfg(tmp_path, data_dir, total, extra=()):
    return small_train_config(
        tmp_path,
        data_dir,
        [
            "algo=ppo",
            "env=cartpole",
            f"algo.total_timesteps={total}",
            "trainer.max_steps=-1",
            "eval.episodes=10",
            *extra,
        ],
    )


def test_short_ppo_run_learns_cartpole(tmp_path, data_dir):
    cfg = _ppo_cfg(tmp_path, data_dir, 25_000, ["eval.every_n_updates=100000"])
    _, results = train(cfg)
    first_eval = results["eval_history"][0]["eval/return_mean"]
    # untrained (uniform-ish argmax) policy: ~10-80; 25k steps of PPO reach a few hundred
    assert results["env_steps"] == 49 * 512  # whole iterations: ceil(25000 / (4 envs * 128 steps))
    assert results["eval_return_mean"] > 150 and results["eval_return_mean"] > first_eval + 100
    episodes = results["train_episodes"]
    assert episodes[-1]["env_steps"] <= results["env_steps"]
    late = [e["return"] for e in episodes if e["env_steps"] > 20_000]
    early = [e["return"] for e in episodes if e["env_steps"] < 3_000]
    assert sum(late) / len(late) > 2 * sum(early) / len(early)


def test_an_update_limit_that_ends_the_run_before_its_env_step_budget_is_said(tmp_path, data_dir, caplog):
    """trainer.max_steps (from algo.max_updates, 10000 when an algo yaml lacks it) cutting an online run
    short of algo.total_timesteps used to pass silently."""
    with caplog.at_level("WARNING"):
        _, results = train(_ppo_cfg(tmp_path, data_dir, 1024, ["trainer.max_steps=16", "eval.episodes=2"]))
    assert results["env_steps"] == 512 and results["train_steps"] == 16  # one iteration: 4 envs x 128 steps
    assert (
        "trainer.max_steps=16 ended this run after 16 updates, at 512 of its algo.total_timesteps=1024 "
        "env steps" in caplog.text
    )


def test_a_continuation_with_another_seed_is_warned_about_once(tmp_path, data_dir, caplog):
    """The seed line said it, and the changed-settings line again as algo.seed (the algo's `${seed}`)."""
    _, first = train(_ppo_cfg(tmp_path / "a", data_dir, 512))
    with caplog.at_level("WARNING"):
        train(_ppo_cfg(tmp_path / "b", data_dir, 1024, ["seed=1", f"ckpt_path={first['checkpoint']}"]))
    assert f"seed=1, but the run that wrote ckpt_path={first['checkpoint']} had seed=0" in caplog.text
    assert "algo.seed" not in caplog.text and "algo settings other than its run's" not in caplog.text


def test_ppo_resume_continues_env_step_budget(tmp_path, data_dir, caplog):
    _, first = train(_ppo_cfg(tmp_path / "a", data_dir, 1024))
    assert (
        first["env_steps"] == 1024 and first["train_steps"] == 2 * 16
    )  # 2 iterations x 4 epochs x 4 minibatches
    with caplog.at_level("INFO"):
        _, resumed = train(_ppo_cfg(tmp_path / "b", data_dir, 2048, [f"ckpt_path={first['checkpoint']}"]))
    assert resumed["env_steps"] == 2048 and resumed["train_steps"] == 4 * 16
    assert f"continuing ckpt_path={first['checkpoint']} from update 32, env step 1024" in caplog.text
    assert "algo settings other than its run's" not in caplog.text  # a larger budget is how a run goes on
    # the training curve continues across the resume
    assert resumed["train_episodes"][: len(first["train_episodes"])] == first["train_episodes"]
    assert resumed["train_episodes"][-1]["env_steps"] > 1024
    ckpt = torch.load(resumed["checkpoint"], map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["env_steps"]) == 2048
    assert any("ResumeState" in key for key in ckpt["callbacks"])  # RNG states travel with it
    assert ckpt["vla_hydra"]["env_spec"]["discrete"] is True
    # resuming a run whose budget is spent ends at once (it used to start empty epochs forever)
    _, again = train(_ppo_cfg(tmp_path / "c", data_dir, 2048, [f"ckpt_path={resumed['checkpoint']}"]))
    assert again["env_steps"] == 2048 and again["train_steps"] == 4 * 16
    # a smaller budget than the checkpoint spent: said so (it used to blame rounding to whole rollouts)
    with caplog.at_level("WARNING"):
        _, behind = train(_ppo_cfg(tmp_path / "d", data_dir, 1024, [f"ckpt_path={resumed['checkpoint']}"]))
    assert behind["env_steps"] == 2048 and behind["train_steps"] == 4 * 16
    assert (
        "algo.total_timesteps=1024: the checkpoint had already run 2048 env steps; no training" in caplog.text
    )
    assert "collects in whole rollouts" not in caplog.text


def test_ppo_checkpoint_evaluates_with_video_through_the_eval_cli(tmp_path, data_dir):
    import json

    from tests.conftest import run_module

    _, results = train(_ppo_cfg(tmp_path, data_dir, 4096))
    proc = run_module(
        "vla_hydra.eval",
        f"ckpt_path={results['checkpoint']}",
        "episodes=10",
        "seed=100000",
        "video=true",
        f"hydra.run.dir={tmp_path}/eval",
    )
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    # discrete argmax policy, same seeds -> the training run's final evaluation exactly
    assert evaluated["eval_return_mean"] == pytest.approx(results["eval_return_mean"])
    assert (tmp_path / "eval" / "videos" / "eval.mp4").stat().st_size > 1000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # 7 steps in 2 minibatches: a last minibatch of 1 step has no advantage std (NaN weights)
        (
            ["env.num_envs=1", "algo.num_steps=7", "algo.num_minibatches=2"],
            "algo.num_minibatches=2: an iteration's rollout (env.num_envs=1 x algo.num_steps=7 = 7 steps) "
            "must split into that many equal minibatches of at least 2 steps",
        ),
        (["algo.num_steps=1", "algo.num_minibatches=8"], "algo.num_minibatches=8: an iteration's rollout"),
        (["algo.num_steps=128"], "algo.total_timesteps=100: less than one iteration's rollout"),
    ],
)
def test_ppo_settings_that_cannot_train_fail_in_one_line(tmp_path, data_dir, extra, message):
    from vla_hydra.core.exceptions import ConfigError

    total = 100 if "algo.num_steps=128" in extra else 2048
    with pytest.raises(ConfigError) as err:
        train(_ppo_cfg(tmp_path, data_dir, total, extra))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_normalize_advantages_hand_computed():
    # mean 3, std (Bessel) sqrt(((1 - 3)^2 + 0 + (5 - 3)^2) / 2) = 2
    torch.testing.assert_close(normalize(torch.tensor([1.0, 3.0, 5.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_collect_rollout_wires_truncations_terminations_and_returns_hand_computed():
    """collect_rollout on stand-ins (a critic V(s) = s[0], scripted env steps): the time-limit step
    bootstraps from V(final obs), the terminal one does not, and returns = advantages + values."""
    import numpy as np

    from vla_hydra.algos.ppo import PPO
    from vla_hydra.envs.factory import EnvFactory
    from vla_hydra.models.policies import StochasticPolicy

    env = EnvFactory(id="CartPole-v1")

    def model(shape, dim, discrete):
        return StochasticPolicy(shape, dim, discrete=discrete, hidden_dims=(8,))

    algo = PPO(
        env.spec(), model, env, total_timesteps=3, num_steps=3, num_minibatches=1, gamma=0.9, gae_lambda=0.8
    )

    class Critic(torch.nn.Module):
        def forward(self, obs):
            return obs[..., 0]

    class Actor(torch.nn.Module):
        def sample(self, obs):
            return torch.zeros(obs.shape[0], dtype=torch.long), torch.zeros(obs.shape[0])

    algo.critic, algo.actor = Critic(), Actor()
    algo.obs = np.array([[0.5, 0.0, 0.0, 0.0]], dtype=np.float32)
    # step 0 continues, step 1 hits the time limit (final obs has V = 2), step 2 terminates
    script = iter([(0.5, False, False), (2.0, False, True), (0.5, True, False)])

    def step_envs(actions):
        value, term, trunc = next(script)
        real_next = np.array([[value, 0.0, 0.0, 0.0]], dtype=np.float32)
        # where an episode ended, the env already reset: its next obs (V = 9) must not be bootstrapped
        next_obs = np.full_like(real_next, 9.0) if term or trunc else real_next
        algo.obs = next_obs
        return next_obs, np.ones(1, np.float32), np.array([term]), np.array([trunc]), real_next

    algo.step_envs = step_envs
    rollout = algo.collect_rollout()
    # the observations acted on: 0.5, 0.5, then the reset one (9) after the time limit
    torch.testing.assert_close(rollout["values"], torch.tensor([0.5, 0.5, 9.0]))
    # deltas: 1 + .9 * .5 - .5 = .95; 1 + .9 * 2 - .5 = 2.3; 1 - 9 = -8 (terminal: no bootstrap)
    # A2 = -8; A1 = 2.3 (the time limit cuts the recursion); A0 = .95 + .72 * 2.3 = 2.606
    torch.testing.assert_close(rollout["advantages"], torch.tensor([2.606, 2.3, -8.0]))
    torch.testing.assert_close(rollout["returns"], torch.tensor([3.106, 2.8, 1.0]))
