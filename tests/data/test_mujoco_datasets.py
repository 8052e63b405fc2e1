"""MuJoCo datasets without downloads: the shipped behaviour policy rolled out by a data= recipe on first
use, then trained on, with D4RL's reference returns for normalized scores."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.conftest import small_train_config
from vla_hydra.data.d4rl_format import read_d4rl_hdf5
from vla_hydra.train import train

D4RL_HOPPER = {"random": -20.272305, "expert": 3234.3}


def test_hopper_medium_recipe_rolls_out_the_shipped_policy_and_trains(tmp_path):
    cfg = small_train_config(
        tmp_path,
        tmp_path / "data",
        [
            "algo=td3bc",
            "env=hopper",
            "data=hopper_sac_medium",
            "data.recipe.episodes=3",
            "data.recipe.reference_episodes=2",
            "debug=fdr",
            "eval.episodes=2",
        ],
    )
    _, results = train(cfg)
    arrays, meta = read_d4rl_hdf5(results["dataset_path"])
    assert meta["env_id"] == "Hopper-v5" and meta["behavior_policy"].endswith("CheckpointPolicy")
    assert json.loads(meta["behavior_policy_params"])["ckpt_path"].endswith(
        "behavior_policies/hopper_sac.ckpt"
    )
    # the shipped policy hops: its episodes are far better than random (~20) - a medium-level policy
    assert meta["dataset_return_mean"] > 800 and meta["ref_random_return"] < 100
    assert arrays["observations"].shape[1] == 11 and arrays["terminals"].sum() + arrays["timeouts"].sum() == 3
    # scores use D4RL's Hopper constants, not the file's own references
    assert results["ref_returns"] == pytest.approx(D4RL_HOPPER)


@pytest.mark.parametrize(
    "choice,env_id,behaviour",
    [
        ("hopper_random", "Hopper-v5", "UniformRandomPolicy"),
        ("halfcheetah_random", "HalfCheetah-v5", "UniformRandomPolicy"),
        ("walker2d_random", "Walker2d-v5", "UniformRandomPolicy"),
        ("halfcheetah_sac_medium", "HalfCheetah-v5", "CheckpointPolicy"),
        ("walker2d_sac_medium", "Walker2d-v5", "CheckpointPolicy"),
        ("hopper_sac_mixed", "Hopper-v5", "CheckpointPolicy"),
        ("hopper_sac_expert", "Hopper-v5", "CheckpointPolicy"),
        ("hopper_sac_medium_expert", "Hopper-v5", "CheckpointPolicy"),
        ("walker2d_sac_expert", "Walker2d-v5", "CheckpointPolicy"),
        ("walker2d_sac_medium_expert", "Walker2d-v5", "CheckpointPolicy"),
        ("halfcheetah_sac_expert", "HalfCheetah-v5", "CheckpointPolicy"),
        ("halfcheetah_sac_medium_expert", "HalfCheetah-v5", "CheckpointPolicy"),
        ("hopper_sac_medium_replay", "Hopper-v5", "CheckpointPolicy"),
        ("halfcheetah_sac_medium_replay", "HalfCheetah-v5", "CheckpointPolicy"),
        ("walker2d_sac_medium_replay", "Walker2d-v5", "CheckpointPolicy"),
    ],
)
def test_every_mujoco_recipe_collects_from_its_own_env_and_policy(tmp_path, choice, env_id, behaviour):
    from hydra.utils import instantiate

    from tests.conftest import compose_config
    from vla_hydra.collect import collect_dataset

    cfg = compose_config(
        "collect", [f"data={choice}", "data.recipe.episodes=2", "data.recipe.reference_episodes=2"]
    )
    summary = collect_dataset(instantiate(cfg.data.recipe), tmp_path / "d.hdf5")
    _, meta = read_d4rl_hdf5(tmp_path / "d.hdf5")
    assert meta["env_id"] == env_id and meta["behavior_policy"].endswith(behaviour)
    with h5py.File(tmp_path / "d.hdf5") as f:  # D4RL's dtypes; MuJoCo's float64 observations were kept
        assert {key: f[key].dtype for key in ("observations", "next_observations", "actions", "rewards")} == {
            "observations": np.float32,
            "next_observations": np.float32,
            "actions": np.float32,
            "rewards": np.float32,
        }
    assert summary["episodes"] == 2
    if choice.endswith("_sac_medium_expert"):  # episodes alternate: the medium policy, then the expert
        params = json.loads(meta["behavior_policy_params"])
        env = choice.split("_")[0]
        assert [p["ckpt_path"].rsplit("/", 1)[1] for p in params] == [
            f"{env}_sac.ckpt",
            f"{env}_sac_expert.ckpt",
        ]
    if choice.endswith("medium_replay"):  # the quality spread: from all-random to the policy's own actions
        assert meta["random_action_prob"] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    if behaviour == "CheckpointPolicy":  # a trained policy beats uniform-random actions clearly
        assert summary["ref_expert_return"] > summary["ref_random_return"] + 500


def test_a_recipe_for_another_env_is_refused_before_collecting(tmp_path):
    """data=hopper_sac_medium env=pendulum used to collect 72k Hopper transitions (~20 s) and only then
    find that they do not fit Pendulum."""
    from vla_hydra.core.exceptions import DatasetError

    cfg = small_train_config(tmp_path, tmp_path / "data", ["data=hopper_sac_medium", "env=pendulum"])
    with pytest.raises(
        DatasetError,
        match=r"would be collected in Hopper-v5, but .* in env Pendulum-v1; use env=hopper, or keep this env "
        r"with data=pendulum_expert or data=pendulum_mixed or data=pendulum_random_expert$",
    ):
        train(cfg)
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())
