"""`python -m vla_hydra.collect` writes a D4RL-format file with reference returns; it never overwrites silently."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, compose_config, run_module
from vla_hydra.data.d4rl_format import read_d4rl_hdf5


def test_collect_cli_writes_mixed_quality_d4rl_file_and_never_overwrites_another(tmp_path):
    out = tmp_path / "pendulum.hdf5"
    args = [
        "data.recipe.episodes=10",
        "data.recipe.reference_episodes=5",
        f"output={out}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = run_module("vla_hydra.collect", *args)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    arrays, meta = read_d4rl_hdf5(out)
    assert arrays["observations"].shape == (2000, 3) and arrays["actions"].shape == (2000, 1)
    assert arrays["timeouts"].sum() == 10 and arrays["terminals"].sum() == 0
    # next_observations continue the episode: the next row's observation within an episode
    np.testing.assert_allclose(arrays["next_observations"][:199], arrays["observations"][1:200])
    assert meta["env_id"] == "Pendulum-v1" and meta["behavior_policy"].endswith("PendulumSwingUp")
    assert meta["ref_random_return"] < -900 < -300 < meta["ref_expert_return"]
    returns = arrays["rewards"].reshape(10, 200).sum(axis=1)
    # noise levels cycle per episode (0.1, 0.5, 1, 2, 4): the noisiest episodes are the worst on average
    assert returns[[4, 9]].mean() < returns[[0, 5]].mean()

    before = out.read_bytes()
    # the same recipe again: nothing to redo (the default dataset after `make train`)
    again = run_module("vla_hydra.collect", *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(
        f"already collected: {out} (same data.recipe; overwrite=true collects it again)"
    )
    # another recipe into the same file: refused, the file kept
    other = run_module("vla_hydra.collect", "data.recipe.episodes=20", *args[1:])
    assert other.returncode == 1
    assert other.stderr.strip() == (
        f"error: output={out}: file exists, collected with another data.recipe; write this one to another file "
        "(output=<file>; train on it with data=hdf5 data.path=<file>) or pass overwrite=true to replace it"
    )
    assert out.read_bytes() == before


def test_collect_into_a_file_it_did_not_write_says_so_and_keeps_it(tmp_path):
    """It said the file was "collected with another data.recipe" (a downloaded D4RL file, a text file)."""
    from vla_hydra.collect import collect
    from vla_hydra.core.exceptions import ConfigError

    out = tmp_path / "mine.hdf5"
    out.write_text("not a dataset")
    with pytest.raises(ConfigError) as err:
        collect(compose_config("collect", [f"output={out}"]))
    assert str(err.value).startswith(
        f"output={out}: file exists, not written by vla_hydra.collect; write this one to another file "
    )
    assert out.read_text() == "not a dataset"


def test_collect_rolls_out_a_trained_checkpoint_in_its_own_env(tmp_path, data_dir):
    import json

    from tests.conftest import small_train_config
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import load_policy
    from vla_hydra.train import train

    # trained with a time limit and a reward-clipping wrapper: collection rolls out in that env (50-step
    # episodes), and stores the env's own rewards, as evaluation sums them
    clip = "{_target_: gymnasium.wrappers.ClipReward, _partial_: true, min_reward: -1.0, max_reward: 0.0}"
    overrides = ["trainer.max_steps=300", "env.max_episode_steps=50", f"env.wrappers=[{clip}]"]
    _, results = train(small_train_config(tmp_path, data_dir, overrides))
    out = tmp_path / "from-ckpt.hdf5"
    proc = run_module(
        "vla_hydra.collect",
        "data=checkpoint_rollouts",
        f"data.recipe.behavior_policy.ckpt_path={results['checkpoint']}",
        "data.recipe.episodes=6",
        "data.recipe.reference_episodes=4",
        "data.recipe.seed=5",
        f"output={out}",
        f"hydra.run.dir={tmp_path}/collect",
    )
    assert proc.returncode == 0, proc.stderr
    arrays, meta = read_d4rl_hdf5(out)
    assert meta["env_id"] == "Pendulum-v1"  # taken from the checkpoint, not given
    assert meta["behavior_policy"].endswith("CheckpointPolicy")
    assert json.loads(meta["behavior_policy_params"])["ckpt_path"] == results["checkpoint"]
    # noise 0: the dataset's episodes are exactly the policy's evaluation episodes on the same seeds
    algo, env, _ = load_policy(results["checkpoint"])
    expected = rollout_episodes(algo, env, 6, seed=5)
    returns = arrays["rewards"].reshape(6, 50).sum(axis=1)
    np.testing.assert_allclose(returns, expected.returns, rtol=1e-4)
    assert expected.returns.min() < -50  # unclipped: the clipped rewards sum to at least -50
    assert meta["dataset_return_mean"] == pytest.approx(expected.return_mean, rel=1e-4)


def test_a_checkpoint_trained_on_stacked_frames_collects_with_random_reference_returns(tmp_path, data_dir):
    """A PPO CartPole checkpoint trained with a FrameStackObservation wrapper ((4, 4) observations): the
    uniform-random reference policy took every axis but the last as the batch and returned (n, 4)
    actions, so collection ended in "UniformRandomPolicy returned actions of shape (50, 4)"."""
    from tests.conftest import small_train_config
    from vla_hydra.collect import CollectionRecipe, collect_dataset
    from vla_hydra.eval import CheckpointPolicy
    from vla_hydra.train import train

    stack = "{_target_: gymnasium.wrappers.FrameStackObservation, _partial_: true, stack_size: 4}"
    overrides = ["algo=ppo", "env=cartpole", "algo.total_timesteps=512", "trainer.max_steps=-1"]
    cfg = small_train_config(tmp_path, data_dir, [*overrides, f"env.wrappers=[{stack}]", "eval.episodes=2"])
    _, results = train(cfg)
    recipe = CollectionRecipe(
        env_id=None, behavior_policy=CheckpointPolicy(results["checkpoint"]), episodes=2, reference_episodes=4
    )
    summary = collect_dataset(recipe, tmp_path / "stacked.hdf5")
    arrays, meta = read_d4rl_hdf5(tmp_path / "stacked.hdf5")
    assert arrays["observations"].shape[1:] == (4, 4) and arrays["actions"].dtype == np.int64
    assert summary["episodes"] == 2 and 5 < meta["ref_random_return"] < 100  # CartPole's random: ~22


def test_a_decision_transformer_checkpoint_collects_the_episodes_it_evaluates(tmp_path, data_dir):
    """A DT acts from its context and returns-to-go: collection drives them like evaluation does (a fresh
    context per batch of episodes, returns-to-go lowered by each reward), not one endless context."""
    from tests.conftest import small_train_config
    from vla_hydra.collect import CollectionRecipe, collect_dataset
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import CheckpointPolicy, load_policy
    from vla_hydra.train import train

    tiny = ["algo=dt", "data.batch_size=16", "model.embedding_dim=16", "model.num_layers=1"]
    steps = ["algo.context_length=5", "trainer.max_steps=20", "eval.episodes=2", "eval.every_n_updates=20"]
    _, results = train(small_train_config(tmp_path, data_dir, [*tiny, *steps, "env.max_episode_steps=30"]))
    out = tmp_path / "from-dt.hdf5"
    policy = CheckpointPolicy(results["checkpoint"])
    # two batches of two episodes: the second must not continue the first's context
    recipe = CollectionRecipe(None, policy, episodes=4, reference_episodes=2, seed=5, parallel_envs=2)
    collect_dataset(recipe, out)
    arrays, _ = read_d4rl_hdf5(out)
    algo, env, _ = load_policy(results["checkpoint"])
    expected = rollout_episodes(algo, env, 4, seed=5)
    np.testing.assert_allclose(arrays["rewards"].reshape(4, 30).sum(axis=1), expected.returns, rtol=1e-4)


def test_a_list_of_behaviour_policies_takes_turns_per_episode(tmp_path):
    """A D4RL-style medium-expert mix from the command line: episode i comes from policy i % 2."""
    out = tmp_path / "mix.hdf5"
    policies = (
        "[{_target_: vla_hydra.envs.controllers.PendulumSwingUp},"
        "{_target_: vla_hydra.envs.controllers.UniformRandomPolicy, low: [-2.0], high: [2.0], seed: 0}]"
    )
    args = [
        "~data.recipe.behavior_policy",  # replace the single policy (a dict) by a list
        f"+data.recipe.behavior_policy={policies}",
        "data.recipe.episodes=6",
        "data.recipe.action_noise_std=[0.1]",
        "data.recipe.reference_episodes=4",
        f"output={out}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = run_module("vla_hydra.collect", *args)
    assert proc.returncode == 0, proc.stderr
    arrays, meta = read_d4rl_hdf5(out)
    returns = arrays["rewards"].reshape(6, 200).sum(axis=1)
    # controller episodes (0, 2, 4) swing up; uniform-random ones (1, 3, 5) do not
    assert returns[0::2].min() > -600 > -900 > returns[1::2].max()
    assert meta["behavior_policy"].endswith(
        "PendulumSwingUp + vla_hydra.envs.controllers.UniformRandomPolicy"
    )
    # the expert reference is the better policy's noiseless return
    assert meta["ref_expert_return"] > -600 and meta["ref_random_return"] < -900


def test_gaussian_noise_on_a_discrete_env_is_a_one_line_error(tmp_path):
    out = tmp_path / "cartpole.hdf5"
    # pendulum_mixed's recipe with CartPole: its action_noise_std levels cannot apply to class indices
    args = ["data.recipe.env_id=CartPole-v1", f"output={out}", f"hydra.run.dir={tmp_path}/run"]
    proc = run_module("vla_hydra.collect", *args)
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip() == (
        "error: data.recipe.action_noise_std=[0.1, 0.5, 1.0, 2.0, 4.0]: env CartPole-v1 has discrete "
        "actions, which take no Gaussian noise; use data.recipe.random_action_prob (epsilon-random "
        "actions) instead"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["data=d4rl"], "data=d4rl: has no `recipe` to collect from; choose a generated dataset"),
        (
            ["data.recipe.action_noise_std=[0.1,-1]"],
            "data.recipe.action_noise_std=[0.1, -1]: expected a non-empty list of numbers >= 0",
        ),
        (
            ["data.recipe.random_action_prob=[1.5]"],
            "data.recipe.random_action_prob=[1.5]: expected a non-empty list of probabilities in [0, 1]",
        ),
        # each of these used to end in a traceback, or to name an option the user did not set
        (
            ["data.recipe.behavior_policy=foo"],
            "data.recipe.behavior_policy=foo: expected a policy ({_target_: <class>, ...}) or a list of them",
        ),
        (
            ["data.recipe.env_id=MountainCarContinuous-v0"],
            "data.recipe.behavior_policy: vla_hydra.envs.controllers.PendulumSwingUp fails on "
            "MountainCarContinuous-v0's observations of shape (2,)",
        ),
        (["+data.recipe.parallel_envs=0"], "data.recipe.parallel_envs=0: expected an integer >= 1"),
        (["data.recipe.env_id=Foo-v9"], "data.recipe.env_id=Foo-v9: gymnasium has no such env"),
        (
            ["data.recipe.behavior_policy._target_=vla_hydra.envs.controllers.UniformRandomPolicy"],
            "data.recipe.behavior_policy: vla_hydra.envs.controllers.UniformRandomPolicy needs 'low' and 'high'; "
            "add them with +data.recipe.behavior_policy.<name>=<value>",
        ),
    ],
)
def test_bad_recipe_is_a_one_line_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "d.hdf5"
    proc = run_module("vla_hydra.collect", *args, f"output={out}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr


def test_discrete_actions_collect_train_bc_and_roll_out_the_checkpoint(tmp_path, data_dir):
    """CartPole end to end: class-index data from a scripted controller with epsilon-random actions,
    BC (cross-entropy) trained on it through train(), and its checkpoint rolled out by collect."""
    from tests.conftest import small_train_config
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import load_policy
    from vla_hydra.train import train

    recipe = ["data=cartpole_mixed", "data.recipe.episodes=20", "data.recipe.reference_episodes=5"]
    # collected by a subprocess into the cache train() reads: the recipe fingerprint stored in the file
    # must equal the one computed in this process
    out = data_dir / "cartpole-mixed-v0.hdf5"
    proc = run_module("vla_hydra.collect", *recipe, f"output={out}", f"hydra.run.dir={tmp_path}/c1")
    assert proc.returncode == 0, proc.stderr
    arrays, meta = read_d4rl_hdf5(out)
    actions = arrays["actions"]
    assert actions.dtype == np.int64 and actions.ndim == 1 and set(np.unique(actions)) == {0, 1}
    assert meta["env_id"] == "CartPole-v1" and meta["ref_expert_return"] == 500.0
    assert 15 < meta["ref_random_return"] < 30
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    returns = np.diff(np.concatenate([[-1], ends]))  # reward 1 per step: return = episode length
    # epsilon cycles 0, 0.2, 0.4, 0.6, 1.0 per episode: the controller alone holds all 500 steps,
    # fully random episodes fall within a few dozen
    assert (returns[0::5] == 500).all() and returns[4::5].max() < 100

    cfg = small_train_config(
        tmp_path, data_dir, ["algo=bc", "env=cartpole", *recipe, "trainer.max_steps=300"]
    )
    _, results = train(cfg)
    assert results["eval_return_mean"] > 300  # random: ~22
    assert results["train_steps"] == 300

    rolled = tmp_path / "from-bc.hdf5"
    args = [
        "data=checkpoint_rollouts",
        f"data.recipe.behavior_policy.ckpt_path={results['checkpoint']}",
        "data.recipe.episodes=4",
        "data.recipe.reference_episodes=2",
        "data.recipe.seed=7",
        f"output={rolled}",
        f"hydra.run.dir={tmp_path}/c2",
    ]
    proc = run_module("vla_hydra.collect", *args)
    assert proc.returncode == 0, proc.stderr
    arrays, meta = read_d4rl_hdf5(rolled)
    assert arrays["actions"].dtype == np.int64 and meta["env_id"] == "CartPole-v1"
    # no epsilon: the episodes are exactly the checkpoint's evaluation episodes on the same seeds
    algo, env, _ = load_policy(results["checkpoint"])
    assert meta["dataset_return_mean"] == pytest.approx(rollout_episodes(algo, env, 4, seed=7).return_mean)


def test_recipe_fingerprint_is_the_same_for_the_same_recipe():
    """A cached file is reused only when the fingerprint matches: it must not depend on the process
    (a uniform-random policy's numpy Generator has an address in its repr)."""
    from vla_hydra.collect import CollectionRecipe
    from vla_hydra.envs.controllers import UniformRandomPolicy

    def recipe(seed: int) -> CollectionRecipe:
        return CollectionRecipe(env_id="Hopper-v5", behavior_policy=UniformRandomPolicy([-1.0], [1.0], seed))

    assert recipe(0).fingerprint() == recipe(0).fingerprint()
    assert recipe(0).fingerprint() != recipe(1).fingerprint()


def test_episodes_rolled_out_together_are_part_of_the_fingerprint(tmp_path):
    """The noise of all envs of a batch comes from one stream, so data.recipe.parallel_envs changes the
    data: a file collected with another value must not be reused as this recipe's."""
    from vla_hydra.collect import CollectionRecipe, collect_dataset
    from vla_hydra.envs.controllers import PendulumSwingUp

    def recipe(parallel_envs: int) -> CollectionRecipe:
        return CollectionRecipe(
            "Pendulum-v1",
            PendulumSwingUp(),
            episodes=4,
            action_noise_std=[0.5],
            reference_episodes=1,
            parallel_envs=parallel_envs,
        )

    actions = {}
    for parallel_envs in (4, 2):
        collect_dataset(recipe(parallel_envs), tmp_path / f"{parallel_envs}.hdf5")
        actions[parallel_envs] = read_d4rl_hdf5(tmp_path / f"{parallel_envs}.hdf5")[0]["actions"]
    assert not np.array_equal(actions[4], actions[2])
    assert recipe(4).fingerprint() != recipe(2).fingerprint()
    # the default recipe keeps the fingerprint its cached files carry (data/pendulum-mixed-v0.hdf5's)
    import hydra

    default = hydra.utils.instantiate(compose_config("collect", []).data.recipe)
    assert default.parallel_envs == 50 and default.fingerprint() == "06d88b54a3f27eae"


def test_checkpoint_recipe_fingerprint_follows_the_weights_not_the_path(tmp_path):
    """A moved checkout (or another machine) keeps its cached datasets; other weights do not."""
    import shutil

    from vla_hydra.collect import CollectionRecipe
    from vla_hydra.core.config import ASSETS_DIR
    from vla_hydra.eval import CheckpointPolicy

    shipped = ASSETS_DIR / "behavior_policies"
    copy = shutil.copy(shipped / "hopper_sac.ckpt", tmp_path / "elsewhere.ckpt")

    def fingerprint(path) -> str:
        return CollectionRecipe(env_id=None, behavior_policy=CheckpointPolicy(str(path))).fingerprint()

    assert fingerprint(copy) == fingerprint(shipped / "hopper_sac.ckpt")
    assert fingerprint(copy) != fingerprint(shipped / "hopper_sac_expert.ckpt")


def test_a_checkpoint_directory_is_named_as_one_not_as_a_missing_file(tmp_path, monkeypatch):
    """data.recipe.behavior_policy.ckpt_path=<a directory> said `file not found`; a DeepSpeed checkpoint
    (a directory, which vla_hydra.eval reads) was refused the same way. Now as in vla_hydra.eval."""
    import torch

    import vla_hydra.training.sharding
    from vla_hydra.core.config import ASSETS_DIR
    from vla_hydra.core.exceptions import CheckpointError
    from vla_hydra.eval import CheckpointPolicy

    with pytest.raises(
        CheckpointError, match=rf"^ckpt_path={tmp_path}: a directory, not a checkpoint file"
    ) as err:
        CheckpointPolicy(str(tmp_path))
    assert str(err.value).endswith(f"; e.g. {tmp_path / 'checkpoints' / 'last.ckpt'}")
    # a DeepSpeed checkpoint: its `latest` tag and shards (consolidated by the strategy, faked here)
    deepspeed = tmp_path / "last.ckpt"
    (deepspeed / "checkpoint").mkdir(parents=True)
    (deepspeed / "latest").write_text("checkpoint")
    shard = deepspeed / "checkpoint" / "mp_rank_00_model_states.pt"
    shard.write_bytes(b"weights")
    shipped = torch.load(ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt", weights_only=False)
    monkeypatch.setattr(vla_hydra.training.sharding, "load_deepspeed_checkpoint", lambda path: shipped)
    policy = CheckpointPolicy(str(deepspeed))
    assert policy.env_id == "Hopper-v5"
    shard.write_bytes(b"other weights")  # other weights, another dataset fingerprint
    assert CheckpointPolicy(str(deepspeed)).sha1 != policy.sha1


def test_a_recipe_built_in_python_gets_the_same_checks_as_the_config():
    from vla_hydra.collect import CollectionRecipe
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(
        ConfigError, match=r"^data.recipe.random_action_prob=\[0.5, 1.5\]: expected a non-empty list"
    ):
        CollectionRecipe(env_id="Pendulum-v1", behavior_policy=lambda obs: obs, random_action_prob=(0.5, 1.5))
    with pytest.raises(ConfigError, match=r"^data.recipe.episodes=0: expected an integer >= 1$"):
        CollectionRecipe(env_id="Pendulum-v1", behavior_policy=lambda obs: obs, episodes=0)


def test_a_checkpoint_from_another_env_or_an_output_dir_is_a_one_line_error(tmp_path):
    from vla_hydra.collect import CollectionRecipe
    from vla_hydra.core.config import ASSETS_DIR
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.eval import CheckpointPolicy

    hopper = CheckpointPolicy(str(ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt"))
    with pytest.raises(
        ConfigError, match=r"data.recipe.env_id=Pendulum-v1: the behaviour policy .* was trained in Hopper-v5"
    ):
        CollectionRecipe(env_id="Pendulum-v1", behavior_policy=hopper)
    proc = run_module("vla_hydra.collect", f"output={tmp_path}", "data.recipe.episodes=5")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: output={tmp_path}: a directory; expected a file path, e.g. {tmp_path / 'dataset.hdf5'}"
    ]
    (tmp_path / "notes.txt").write_text("mine")
    proc = run_module(
        "vla_hydra.collect", f"output={tmp_path / 'notes.txt' / 'x.hdf5'}", "data.recipe.episodes=5"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: output={tmp_path / 'notes.txt' / 'x.hdf5'}: cannot write there ({tmp_path / 'notes.txt'} is a "
        "file, not a directory)"
    ]
    proc = run_module(
        "vla_hydra.collect",
        "data=checkpoint_rollouts",
        f"data.recipe.behavior_policy.ckpt_path={tmp_path / 'no.ckpt'}",
        f"output={tmp_path / 'x.hdf5'}",
    )
    assert proc.stderr.strip().splitlines() == [
        f"error: data.recipe.behavior_policy.ckpt_path={tmp_path / 'no.ckpt'}: file not found"
    ]


def test_no_reference_returns_are_stored_when_the_policy_does_not_beat_random(tmp_path):
    """Scores normalized by an 'expert' worse than random would run backwards."""
    from vla_hydra.collect import CollectionRecipe, collect_dataset

    def full_torque(obs):  # spins Pendulum without ever balancing: far below a random policy
        return np.full((len(obs), 1), 2.0, dtype=np.float32)

    recipe = CollectionRecipe(
        env_id="Pendulum-v1", behavior_policy=full_torque, episodes=2, reference_episodes=3
    )
    summary = collect_dataset(recipe, tmp_path / "bad.hdf5")
    _, meta = read_d4rl_hdf5(tmp_path / "bad.hdf5")
    assert "ref_expert_return" not in summary and "ref_expert_return" not in meta
    assert "ref_random_return" not in meta


def test_a_random_behaviour_policy_stores_no_reference_returns_and_warns_of_nothing(tmp_path, caplog):
    """hopper_random warned that its behaviour policy did not beat a random policy; one that beat the
    reference episodes by chance would have stored itself as the 'expert'."""
    import logging

    from vla_hydra.collect import CollectionRecipe, collect_dataset
    from vla_hydra.envs.controllers import UniformRandomPolicy

    for seed in range(3):  # some seeds' episodes beat the reference episodes, some do not
        recipe = CollectionRecipe(
            env_id="Pendulum-v1",
            behavior_policy=UniformRandomPolicy([-2.0], [2.0], seed=seed),
            episodes=2,
            reference_episodes=2,
            seed=seed,
        )
        with caplog.at_level(logging.INFO):
            summary = collect_dataset(recipe, tmp_path / f"random{seed}.hdf5")
        _, meta = read_d4rl_hdf5(tmp_path / f"random{seed}.hdf5")
        assert "ref_expert_return" not in summary and "ref_random_return" not in meta
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        sum("a uniform-random behaviour policy: no reference returns" in r.message for r in caplog.records)
        == 3
    )


def test_an_env_the_recipe_does_not_roll_out_is_refused(tmp_path):
    """collect rolls out data.recipe.env_id: `env=cartpole` with the Pendulum recipe used to be ignored."""
    out = tmp_path / "x.hdf5"
    proc = run_module("vla_hydra.collect", "env=cartpole", f"output={out}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: env=cartpole: collection rolls out data.recipe.env_id=Pendulum-v1 (data=pendulum_mixed), not "
        "CartPole-v1; choose a data= recipe made in CartPole-v1, or set data.recipe.env_id"
    ]
    assert not out.exists()
    # the env a recipe selects itself may be named too
    ok = run_module(
        "vla_hydra.collect", "data=cartpole_mixed", "env=cartpole", "data.recipe.episodes=2",
        "data.recipe.reference_episodes=2", f"output={out}", f"hydra.run.dir={tmp_path}/run2",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "scores use CartPole-v1's published ones" in ok.stdout
    # env.<key> overrides would be ignored: refused, with where the setting goes instead
    proc = run_module(
        "vla_hydra.collect", "env.max_episode_steps=50", f"output={out}.2", f"hydra.run.dir={tmp_path}/r3"
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: env.max_episode_steps=50: collection builds its env from data.recipe.env_id and "
        "data.recipe.env_kwargs (a checkpoint behaviour policy: from its own env settings); env.* options do "
        "not apply (e.g. data.recipe.env_kwargs.max_episode_steps=50)"
    ]
    proc = run_module("vla_hydra.collect", "seed=5", f"output={out}.3", f"hydra.run.dir={tmp_path}/r4")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: seed=5: collection draws its episodes' seeds from data.recipe.seed (now 2026); set "
        "data.recipe.seed=<n> instead"
    ]
    assert not Path(f"{out}.2").exists() and not Path(f"{out}.3").exists()


def test_an_env_a_checkpoint_policy_was_not_trained_in_names_the_checkpoint(monkeypatch):
    """With a checkpoint behaviour policy the advice was to set data.recipe.env_id, which is refused too."""
    import hydra

    import vla_hydra.cli.job as cli_job
    from vla_hydra.collect import _refuse_another_env
    from vla_hydra.core.config import ASSETS_DIR
    from vla_hydra.core.exceptions import ConfigError

    ckpt = ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt"
    overrides = ["data=checkpoint_rollouts", f"data.recipe.behavior_policy.ckpt_path={ckpt}", "env=cartpole"]
    cfg = compose_config("collect", overrides)
    monkeypatch.setattr(cli_job, "command_line_overrides", lambda: [("env=cartpole", "env")])
    with pytest.raises(ConfigError) as err:
        _refuse_another_env(cfg, hydra.utils.instantiate(cfg.data.recipe))
    assert str(err.value) == (
        "env=cartpole: collection rolls out data.recipe.env_id=Hopper-v5 (data=checkpoint-rollouts), not "
        "CartPole-v1; the behaviour policy checkpoint was trained in Hopper-v5; choose one trained in CartPole-v1"
    )


def _start_collect(out, run_dir, log_file, *args) -> subprocess.Popen:
    """`python -m vla_hydra.collect` in the background, its console output going to `log_file`."""
    return subprocess.Popen(
        [sys.executable, "-m", "vla_hydra.collect", f"output={out}", f"hydra.run.dir={run_dir}", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=open(log_file, "w"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(condition, proc, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert condition(), proc.communicate(timeout=30)[1] if proc.poll() is not None else "timed out"


def test_a_collection_waits_for_another_of_the_same_file_and_then_finds_it_collected(tmp_path):
    """Two jobs of a sweep that both need the default dataset used to collect it twice at once."""
    from vla_hydra.collect import collection_lock

    args = ["data.recipe.episodes=10", "data.recipe.reference_episodes=5"]
    first = run_module(
        "vla_hydra.collect", *args, f"output={tmp_path / 'first.hdf5'}", f"hydra.run.dir={tmp_path}/r1"
    )
    assert first.returncode == 0, first.stderr
    out, log_file = tmp_path / "data" / "pendulum.hdf5", tmp_path / "second.log"
    with collection_lock(out):  # this test is the other process: it holds the lock while "collecting"
        second = _start_collect(out, tmp_path / "r2", log_file, *args)
        _wait_until(lambda: "waiting for another process collecting" in log_file.read_text(), second)
        time.sleep(0.5)
        assert second.poll() is None and not out.exists()  # still waiting, not collecting a second copy
        shutil.copy(tmp_path / "first.hdf5", out)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert f"already collected: {out}" in log_file.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pendulum.hdf5"]  # the lock file went with it


def test_sigterm_during_a_collection_exits_143_in_one_line_and_leaves_no_files(tmp_path):
    """The default SIGTERM action used to kill the collection where it stood, leaving its lock/temp files."""
    out = tmp_path / "data" / "pendulum.hdf5"
    proc = _start_collect(out, tmp_path / "run", tmp_path / "collect.log", "data.recipe.episodes=100000")
    _wait_until(lambda: (out.parent / f".{out.name}.lock").exists(), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert stderr.strip().splitlines() == ["terminated (SIGTERM)"]
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "overrides,line",
    [
        (["output=null"], "output=None: expected the file to write (leave it out to write data.path="),
    ],
)
def test_collect_without_an_output_file_says_what_it_takes(overrides, line):
    """It used to say "this data= has no data.path", which the default data= has."""
    from vla_hydra.collect import collect
    from vla_hydra.core.config import compose_config
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError) as err:
        collect(compose_config("collect", overrides))
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_a_checkpoint_of_another_env_says_which_references_its_scores_use(tmp_path, caplog):
    """data=checkpoint_rollouts of a Hopper checkpoint keeps collect's default env=pendulum: the log named the
    file's own references only, though training with env=hopper scores with D4RL's published ones."""
    import logging

    from vla_hydra.collect import collect

    ckpt = "${vla.asset:behavior_policies/hopper_sac.ckpt}"
    overrides = ["data=checkpoint_rollouts", f"data.recipe.behavior_policy.ckpt_path={ckpt}"]
    overrides += ["data.recipe.episodes=1", "data.recipe.reference_episodes=1", f"output={tmp_path}/h.hdf5"]
    with caplog.at_level(logging.INFO):
        collect(compose_config("collect", overrides))
    assert (
        "(scores with env=hopper use Hopper-v5's published ones: {'random': -20.272305, 'expert': 3234.3})"
        in caplog.text
    )
