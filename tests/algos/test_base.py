"""What every algorithm shares: a `model=` that does not fit the algorithm is refused in one line."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT, compose_config, run_module
from vla_hydra.core.exceptions import ConfigError


def build_algo(overrides: list[str]):
    cfg = compose_config("train", overrides)
    env = instantiate(cfg.env)
    return instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["algo=ppo", "env=cartpole", "model=mlp"],
            r"algo=ppo: model= cannot build .*discrete.*model=stochastic_policy",
        ),
        (["algo=gail", "model=mlp"], r"algo=gail: model= cannot build .*use model=stochastic_policy"),
        (["algo=grpo", "model=mlp"], r"algo=grpo: model= cannot build .*use model=stochastic_policy"),
        (
            ["algo=sac", "model=mlp"],
            r"algo=sac: model= built a DeterministicActor, which has no sample\(\); use model=sac_actor",
        ),
        (["algo=cql", "model=gaussian"], r"algo=cql: model= built a GaussianActor, which has no sample\(\)"),
    ],
)
def test_a_model_that_does_not_fit_the_algorithm_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_algo(overrides)


def test_a_model_value_the_network_cannot_take_names_the_model_not_another_choice():
    """`model=resmlp model.width=abc` (a user's network): the TypeError comes from inside its constructor,
    whose signature fits; it used to read "model= cannot build this algorithm's network ...; use model=mlp"."""
    from functools import partial

    import torch

    class WidthActor(torch.nn.Module):
        def __init__(self, observation_shape, action_dim, width: int = 8):
            super().__init__()
            self.net = torch.nn.Linear(observation_shape[0], width)

    cfg = compose_config("train", ["algo=bc"])
    spec = instantiate(cfg.env).spec()
    with pytest.raises(
        ConfigError, match=r"^model: \S+WidthActor cannot be built with its model\.\* values \("
    ) as err:
        instantiate(cfg.algo, _partial_=True)(spec=spec, model=partial(WidthActor, width="abc"))
    assert "use model=" not in str(err.value)


@pytest.mark.parametrize("algo", sorted(p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml")))
def test_every_algorithm_acts_within_the_env_bounds_with_its_default_model(algo):
    """Every algo= choice builds with its default model= and maps a batch of env observations to env
    actions of the right shape inside the action bounds (Pendulum: [-2, 2]; CartPole: 0 or 1)."""
    import numpy as np

    # DT's default target return comes from the dataset at fit start; built by hand here, it needs a number
    cfg = compose_config("train", [f"algo={algo}", *(["algo.target_return=-150"] if algo == "dt" else [])])
    env = instantiate(cfg.env)
    spec = env.spec()
    algo_module = instantiate(cfg.algo, _partial_=True)(spec=spec, model=instantiate(cfg.model))
    observations = np.random.default_rng(0).uniform(-1.0, 1.0, size=(5, *spec.observation_shape))
    actions = np.asarray(algo_module.act(observations.astype(np.float32)))
    if spec.discrete:
        assert actions.shape == (5,) and set(actions.tolist()) <= set(range(spec.action_dim))
    else:
        assert actions.shape == (5, spec.action_dim) and np.isfinite(actions).all()
        assert (actions >= np.asarray(spec.action_low)).all() and (
            actions <= np.asarray(spec.action_high)
        ).all()


def test_sac_with_a_deterministic_actor_fails_before_training_in_one_line(tmp_path):
    """It used to pass a short run (no update inside the random warm-up) and crash at the first update."""
    proc = run_module(
        "vla_hydra.train", "algo=sac", "model=mlp", f"hydra.run.dir={tmp_path}/run", timeout=120
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: algo=sac: model= built a DeterministicActor, which has no sample(); use model=sac_actor"
    ]
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("algo", ["td3bc", "iql", "cql", "dt", "sac"])
def test_continuous_only_algorithms_refuse_a_discrete_env_before_collecting_its_dataset(tmp_path, algo):
    """algo=td3bc data=cartpole_mixed used to collect 59k CartPole transitions first, then refuse them."""
    from tests.conftest import small_train_config
    from vla_hydra.train import train

    cfg = small_train_config(tmp_path, tmp_path / "data", [f"algo={algo}", "data=cartpole_mixed"])
    with pytest.raises(
        ConfigError, match=r"env CartPole-v1 has a discrete action space; this algorithm needs"
    ):
        train(cfg)
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


def test_gail_refuses_a_budget_below_one_rollout_before_collecting_its_expert_dataset(tmp_path):
    """algo=gail with algo.total_timesteps under one iteration used to collect the expert data first."""
    from tests.conftest import small_train_config
    from vla_hydra.train import train

    cfg = small_train_config(tmp_path, tmp_path / "data", ["algo=gail", "algo.total_timesteps=100"])
    with pytest.raises(ConfigError, match=r"algo.total_timesteps=100: less than one iteration's rollout"):
        train(cfg)
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


def test_split_block_gives_the_same_minibatches_as_indexing_each_update():
    from vla_hydra.algos.base import split_block

    block = {
        "observations": {"image": torch.randn(4, 3, 2), "state": torch.randn(4, 3)},
        "actions": torch.randn(4, 3, 1),
    }
    parts = split_block(block, 3)  # a last block cut short at trainer.max_steps
    assert len(parts) == 3
    for k, part in enumerate(parts):
        assert torch.equal(part["observations"]["image"], block["observations"]["image"][k])
        assert torch.equal(part["observations"]["state"], block["observations"]["state"][k])
        assert torch.equal(part["actions"], block["actions"][k])


def test_a_buffer_sample_of_some_fields_draws_the_same_rows():
    from vla_hydra.data.buffer import TensorBuffer

    data = {"observations": torch.randn(50, 3), "actions": torch.randn(50, 1), "rewards": torch.randn(50)}
    buffer = TensorBuffer(data)
    full = buffer.sample((4, 8), torch.Generator().manual_seed(0))
    some = buffer.sample((4, 8), torch.Generator().manual_seed(0), keys=("observations", "actions"))
    assert set(some) == {"observations", "actions"}
    assert all(torch.equal(some[key], full[key]) for key in some)


def test_offline_algorithms_name_the_fields_they_read():
    from vla_hydra.algos.bc import BC
    from vla_hydra.algos.cql import CQL
    from vla_hydra.algos.iql import IQL
    from vla_hydra.algos.td3bc import TD3BC

    assert BC.batch_keys == ("observations", "actions")
    for algo in (TD3BC, IQL, CQL):
        assert set(algo.batch_keys) == {
            "observations",
            "actions",
            "rewards",
            "next_observations",
            "terminals",
        }
