"""DAgger: mixing schedule, action mixing and the discrete loss against hand-computed values; a short
real Pendulum run whose dataset grows every iteration and whose policy beats its BC start; resume keeps
the aggregate dataset; a trained checkpoint as the expert."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import small_train_config
from vla_hydra.algos.dagger import (
    discrete_imitation_loss,
    expert_mixing_probability,
    mix_actions,
)
from vla_hydra.core.exceptions import CheckpointError, ConfigError
from vla_hydra.train import train


def test_expert_mixing_probability_decays_geometrically():
    assert expert_mixing_probability(0, 1.0, 0.5) == 1.0
    assert expert_mixing_probability(3, 0.8, 0.5) == pytest.approx(0.1)
    assert expert_mixing_probability(2, 1.0, 0.0) == 0.0


def test_mix_actions_takes_expert_rows_where_asked():
    learner = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    expert = np.array([[9.0], [8.0], [7.0]], dtype=np.float32)
    mixed = mix_actions(learner, expert, np.array([True, False, True]))
    assert mixed.tolist() == [[9.0], [2.0], [7.0]] and mixed.dtype == np.float32
    # discrete: (N,) class indices
    assert mix_actions(np.array([0, 0]), np.array([1, 1]), np.array([False, True])).tolist() == [0, 1]


def test_discrete_imitation_loss_is_cross_entropy():
    # -(log .5 + log .25) / 2
    loss = discrete_imitation_loss(torch.log(torch.tensor([0.5, 0.25])))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def _dagger_cfg(tmp_path, data_dir, extra=()):
    return small_train_config(
        tmp_path,
        data_dir,
        [
            "algo=dagger",
            "algo.total_timesteps=600",
            "algo.updates_per_iteration=300",
            "trainer.max_steps=-1",
            "trainer.log_every_n_steps=1",
            "eval.every_n_updates=300",
            "callbacks.policy_eval.episodes=10",
            "eval.episodes=10",
            *extra,
        ],
    )


def test_dagger_dataset_grows_each_iteration_and_beats_its_bc_start(tmp_path, data_dir):
    cfg = _dagger_cfg(tmp_path, data_dir)
    _, results = train(cfg)
    assert results["env_steps"] == 600 and results["train_steps"] == 3 * 300
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/dataset_size")]
    # one iteration = 200 expert-labelled steps added; beta 1 -> .5 -> .25
    assert [float(r["train/dataset_size"]) for r in rows] == [200.0, 400.0, 600.0]
    assert [float(r["train/beta"]) for r in rows] == [1.0, 0.5, 0.25]
    history = results["eval_history"]
    assert [h["step"] for h in history[:2]] == [0, 300]
    bc_start = history[1]["eval/return_mean"]  # after iteration 0: BC on one expert episode
    # same 10 eval seeds; BC from one demo fails to swing up from most starts (about -1000 here),
    # two DAgger iterations later the policy does (expert about -140)
    assert results["eval_return_mean"] > bc_start + 300
    assert results["eval_return_mean"] > -500


def test_resume_continues_with_the_aggregate_dataset(tmp_path, data_dir):
    _, first = train(_dagger_cfg(tmp_path / "a", data_dir, ["algo.total_timesteps=400"]))
    saved = torch.load(first["checkpoint"], weights_only=False)["dagger_dataset"]
    assert saved["size"] == 400
    # logging every 2nd Lightning step: the resumed leg's one iteration (the 3rd) is not a multiple
    resume = [f"ckpt_path={first['checkpoint']}", "trainer.log_every_n_steps=2"]
    _, resumed = train(_dagger_cfg(tmp_path / "b", data_dir, resume))
    # one more iteration (beta .25) on top of the restored 400 pairs
    assert resumed["env_steps"] == 600 and resumed["train_steps"] == 900
    # the budget's last iteration logs its losses (they used to be dropped, or the last logged row repeated)
    with open(tmp_path / "b" / "run" / "csv" / "metrics.csv") as f:
        rows = [
            (r["step"], r["train/dataset_size"]) for r in csv.DictReader(f) if r.get("train/dataset_size")
        ]
    assert rows == [("900", "600.0")]
    final = torch.load(resumed["checkpoint"], weights_only=False)["dagger_dataset"]
    assert final["size"] == 600
    assert torch.equal(final["data"]["observations"][:400], saved["data"]["observations"])
    assert torch.equal(final["data"]["labels"][:400], saved["data"]["labels"])


def test_a_continuation_with_a_budget_already_spent_keeps_every_label(tmp_path, data_dir):
    """Continuing a DAgger run without repeating its larger algo.total_timesteps sized the aggregate
    dataset by the smaller budget and ended in a ValueError traceback while loading the checkpoint; now
    the run trains no further (as PPO's does), is evaluated, and its checkpoint keeps all the labels."""
    fast = ["algo.total_timesteps=400", "algo.updates_per_iteration=10", "eval.episodes=2"]
    _, first = train(_dagger_cfg(tmp_path / "a", data_dir, fast))
    spent = [*fast[1:], "algo.total_timesteps=200", f"ckpt_path={first['checkpoint']}"]
    _, resumed = train(_dagger_cfg(tmp_path / "b", data_dir, spent))
    assert resumed["env_steps"] == 400 and resumed["train_steps"] == first["train_steps"]
    kept = torch.load(resumed["checkpoint"], weights_only=False)["dagger_dataset"]
    assert kept["size"] == 400


def test_a_trained_checkpoint_is_the_expert(tmp_path, data_dir):
    _, bc = train(small_train_config(tmp_path / "bc", data_dir, ["trainer.max_steps=100"]))
    cfg = _dagger_cfg(tmp_path / "dagger", data_dir, [f"algo.expert_ckpt={bc['checkpoint']}", "debug=fdr"])
    from hydra.utils import instantiate

    from vla_hydra.eval import load_policy

    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    algo._expert_act = algo._load_expert()
    expert, _, _ = load_policy(bc["checkpoint"])
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    labels = algo.expert_labels(obs)
    # the checkpoint's policy, not the scripted default, labels the states
    np.testing.assert_allclose(labels, expert.act(obs), rtol=1e-6)
    assert not np.allclose(labels, algo.expert(obs))
    # and a whole (fast_dev_run) iteration trains with it
    _, results = train(cfg)
    assert results["env_steps"] == 200


def test_an_expert_checkpoint_of_other_observations_names_the_env_settings(tmp_path, data_dir):
    """A CartPole expert trained on stacked frames, as DAgger's expert in plain CartPole: refused before
    anything is built (it used to fail at the first labels: "the expert returned actions of shape ()")."""
    stack = "{_target_: gymnasium.wrappers.FrameStackObservation, _partial_: true, stack_size: 4}"
    ppo = ["algo=ppo", "env=cartpole", "algo.total_timesteps=512", "trainer.max_steps=-1", "eval.episodes=2"]
    _, expert = train(small_train_config(tmp_path / "ppo", data_dir, [*ppo, f"env.wrappers=[{stack}]"]))
    dagger = ["env=cartpole", "model=stochastic_policy", f"algo.expert_ckpt={expert['checkpoint']}"]
    with pytest.raises(
        ConfigError,
        match=re.escape("acts on observations of shape (4, 4), but this run's CartPole-v1 gives (4,)"),
    ):
        train(_dagger_cfg(tmp_path / "dagger", data_dir, dagger))
    assert not (tmp_path / "dagger" / "run" / "checkpoints").exists()


def test_an_expert_checkpoint_from_another_env_names_the_env_to_select(tmp_path, data_dir):
    from hydra.utils import instantiate

    from vla_hydra.core.config import ASSETS_DIR

    hopper_expert = ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt"
    cfg = _dagger_cfg(tmp_path, data_dir, [f"algo.expert_ckpt={hopper_expert}"])  # env: pendulum
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    with pytest.raises(ConfigError) as err:
        algo._load_expert()
    message = (
        f"algo.expert_ckpt={hopper_expert}: trained on Hopper-v5 (action dim 3), but env is Pendulum-v1 "
        "(action dim 1); run with env=hopper"
    )
    assert str(err.value) == message
    # through train.py the refusal comes before anything is built: no dataset, logger or checkpoint folder
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert not [p for p in run_dir.rglob("*") if p.is_dir()]
    # so does a missing file
    missing = _dagger_cfg(tmp_path / "missing", data_dir, [f"algo.expert_ckpt={tmp_path}/nope.ckpt"])
    with pytest.raises(
        CheckpointError, match=re.escape(f"algo.expert_ckpt={tmp_path}/nope.ckpt: file not found")
    ):
        train(missing)
    assert not [p for p in Path(missing.paths.output_dir).rglob("*") if p.is_dir()]
    assert not (run_dir / "results.json").exists()


class CartPoleBalance:
    """A scripted CartPole expert: push toward the side the pole is falling to (about 500 return)."""

    def __call__(self, obs):
        obs = np.asarray(obs)
        return (obs[:, 2] + 0.5 * obs[:, 3] + 0.1 * obs[:, 1] > 0).astype(np.int64)


def test_discrete_actions_learn_by_cross_entropy(tmp_path, data_dir):
    cfg = _dagger_cfg(
        tmp_path,
        data_dir,
        [
            "env=cartpole",
            "model=stochastic_policy",
            f"algo.expert._target_={__name__}.CartPoleBalance",
            "algo.total_timesteps=800",
            "algo.steps_per_iteration=50",
            "algo.updates_per_iteration=200",
            "eval.every_n_updates=100000",
        ],
    )
    _, results = train(cfg)
    assert results["env_steps"] == 800  # 4 envs x 50 steps x 4 iterations
    # random CartPole play lasts about 20 steps; the scripted expert about 500
    assert results["eval_return_mean"] > 200


def test_an_expert_for_another_env_is_refused(tmp_path, data_dir):
    cfg = _dagger_cfg(tmp_path, data_dir)
    from hydra.utils import instantiate

    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    algo._expert_act = lambda obs: np.zeros((len(obs), 2), dtype=np.float32)
    with pytest.raises(ConfigError, match=r"shape \(4, 2\).*expected \(4, 1\)"):
        algo.expert_labels(np.zeros((4, 3), dtype=np.float32))


def test_discrete_dagger_with_a_network_without_class_probabilities_is_a_one_line_error(tmp_path, data_dir):
    cfg = small_train_config(tmp_path, data_dir, ["algo=dagger", "env=cartpole", "debug=fdr"])
    with pytest.raises(
        ConfigError, match=r"model=stochastic_policy \(env CartPole-v1 has discrete actions\)"
    ):
        train(cfg)


def test_a_decision_transformer_expert_is_refused(tmp_path, data_dir):
    """A DT acts from its own episode's context and returns-to-go: asked for labels of the learner's states,
    it answered from one endless context."""
    from hydra.utils import instantiate

    _, dt = train(
        small_train_config(tmp_path / "dt", data_dir, ["algo=dt", "trainer.max_steps=2", "eval.episodes=1"])
    )
    cfg = _dagger_cfg(tmp_path / "dagger", data_dir, [f"algo.expert_ckpt={dt['checkpoint']}"])
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    with pytest.raises(
        ConfigError, match="acts from a context of its own episode, so it cannot label single"
    ):
        algo._load_expert()
