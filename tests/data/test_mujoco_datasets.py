"""MuJoCo datasets without downloads: the shipped behaviour policy rolled out by a data= recipe on first
use, then trained on, with D4RL's reference returns for normalized scores."""

from __future__ import annotations

import json

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
