"""Decision Transformer: loss and warm-up against hand-computed numbers, the stateful rollout interface
against direct forward passes, and a short real run that learns, conditions on the target return and
survives a checkpoint round trip."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from tests.conftest import compose_config, run_module, small_train_config
from vla_hydra.algos.dt import DecisionTransformer, dt_action_loss
from vla_hydra.core.config import ASSETS_DIR
from vla_hydra.data.d4rl_format import write_d4rl_hdf5
from vla_hydra.data.stats import DatasetStats
from vla_hydra.data.trajectories import TrajectoryBuffer
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.envs.factory import EnvSpec
from vla_hydra.eval import load_policy
from vla_hydra.models.transformer import DecisionTransformerNet
from vla_hydra.train import train

SPEC = EnvSpec("Pendulum-v1", (3,), 1, [-2.0], [2.0])


def test_dt_action_loss_hand_computed_with_padding():
    predicted = torch.tensor([[[0.5, -1.0], [0.0, 0.25], [9.0, 9.0]], [[1.0, 0.0], [5.0, 5.0], [5.0, 5.0]]])
    target = torch.tensor([[[1.0, -1.0], [-0.5, 0.75], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # real steps: (0.25 + 0) + (0.25 + 0.25) + (1 + 0) = 1.75 over 3 real steps * 2 action dims = 6
    # (the padded squared errors 81, 81, 25, 25, 25, 25 are ignored) -> 0.291666...
    assert dt_action_loss(predicted, target, mask).item() == pytest.approx(1.75 / 6)
    # an all-padding batch is 0, not NaN
    assert dt_action_loss(predicted, target, torch.zeros(2, 3)).item() == 0.0


def _tiny_dt(**kwargs) -> DecisionTransformer:
    torch.manual_seed(0)
    stats = DatasetStats(obs_mean=torch.tensor([0.5, -0.5, 1.0]), obs_std=torch.tensor([2.0, 1.0, 4.0]))
    defaults = dict(context_length=4, target_return=-100.0, return_scale=0.01)
    model = partial(DecisionTransformerNet, embedding_dim=16, num_layers=2)
    return DecisionTransformer(SPEC, model, stats=stats, **{**defaults, **kwargs})


def _segments(segment_length: int = 4) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    n = 30  # episodes of 12, 5 (terminal) and 13 steps: segments of 4 are often padded
    arrays = {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-2, 2, size=(n, 1)).astype(np.float32),
        "rewards": rng.uniform(-10, 0, size=n).astype(np.float32),
        "terminals": np.isin(np.arange(n), [16]),
        "timeouts": np.isin(np.arange(n), [11, 29]),
    }
    return TrajectoryBuffer(arrays, segment_length).sample((32,), torch.Generator().manual_seed(0))


def test_padded_steps_do_not_change_the_loss():
    algo = _tiny_dt().eval()  # no dropout, so the loss is a function of the batch
    batch = _segments()
    padding = batch["mask"] == 0
    assert padding.any() and (~padding).any()
    garbage = {k: v.clone() for k, v in batch.items()}
    garbage["observations"][padding] = 100.0
    garbage["actions"][padding] = -2.0
    garbage["returns_to_go"][padding] = 5000.0
    garbage["timesteps"][padding] = 7
    torch.testing.assert_close(algo.segment_loss(garbage), algo.segment_loss(batch), rtol=0, atol=1e-6)
    # while real steps do change it
    garbage["actions"][~padding] = -2.0
    assert (algo.segment_loss(garbage) - algo.segment_loss(batch)).abs() > 1e-3


def test_update_warms_up_the_lr_clips_gradients_and_reduces_the_loss():
    algo = _tiny_dt(lr=1e-3, warmup_updates=4, grad_clip=0.25)
    algo._direct_backward = True  # no trainer: plain loss.backward(), as in the benchmark's loop
    optimizer = algo.configure_optimizers()
    batch = _segments()
    first = algo.update(batch, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 1 / 4)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in algo.transformer.parameters()]))
    assert first["grad_norm"] > 0.25 and clipped.item() == pytest.approx(0.25, rel=1e-4)
    for _ in range(3):
        algo.update(batch, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3) and algo.num_updates == 4
    for _ in range(40):
        last = algo.update(batch, optimizer)
    assert last["dt_loss"] < 0.5 * first["dt_loss"]
    assert not last["dt_loss"].requires_grad


def test_rollout_context_returns_to_go_and_timesteps():
    algo = _tiny_dt(context_length=3)
    algo.train()  # act must still be deterministic (dropout off) and leave the mode as it was
    rng = np.random.default_rng(1)
    observations = rng.normal(size=(5, 2, 3)).astype(np.float32)
    rewards = np.array([[-3.0, -5.0], [-1.0, -2.0], [-4.0, -4.0], [-2.0, -1.0]])
    done = np.array([[False, False], [False, True], [False, True], [False, True]])
    algo.begin_rollout(2)
    actions = []
    for step in range(5):
        actions.append(algo.act(observations[step]))
        if step < 4:
            algo.observe_rollout_step(rewards[step], done[step])
    assert algo.training and algo.transformer.training

    def expected_action(env, steps, rtg, timesteps):
        states = algo.obs_normalizer(torch.from_numpy(observations[steps, env]))[None]
        past = [algo.action_scaler.normalize(torch.from_numpy(actions[s][env])) for s in steps[:-1]]
        acts = torch.stack([*past, torch.zeros(1)])[None]
        with torch.no_grad():
            out = algo.eval().predict(states, acts, torch.tensor([rtg]), torch.tensor([timesteps]))
        algo.train()
        return algo.action_scaler.unnormalize(out[0, -1]).numpy()

    # env 0 runs throughout: returns-to-go -100, +3 -> -97, +1 -> -96, +4 -> -92, +2 -> -90; the context
    # keeps the last 3 steps
    np.testing.assert_allclose(actions[0][0], expected_action(0, [0], [-100.0], [0]), atol=1e-6)
    np.testing.assert_allclose(actions[1][0], expected_action(0, [0, 1], [-100.0, -97.0], [0, 1]), atol=1e-6)
    np.testing.assert_allclose(
        actions[4][0], expected_action(0, [2, 3, 4], [-96.0, -92.0, -90.0], [2, 3, 4]), atol=1e-6
    )
    # env 1 finished after its second step (reward -2 not subtracted, timestep frozen at 1)
    np.testing.assert_allclose(
        actions[4][1], expected_action(1, [2, 3, 4], [-95.0, -95.0, -95.0], [1, 1, 1]), atol=1e-6
    )
    # a new rollout starts again from target_return at timestep 0
    algo.begin_rollout(2)
    np.testing.assert_allclose(algo.act(observations[0]), actions[0], atol=1e-6)


def test_the_context_holds_the_actions_executed_when_they_are_given():
    """A DT behaviour policy under collection noise: its next prediction conditions on the noisy action the
    env executed (as in the data it learnt from), not on the one it predicted."""
    algo = _tiny_dt(context_length=3)
    observations = np.random.default_rng(2).normal(size=(2, 2, 3)).astype(np.float32)
    rewards, done = np.array([-1.0, -2.0]), np.array([False, False])
    algo.begin_rollout(2)
    predicted = algo.act(observations[0])
    algo.observe_rollout_step(rewards, done)
    as_predicted = algo.act(observations[1])
    algo.begin_rollout(2)
    np.testing.assert_allclose(algo.act(observations[0]), predicted, atol=1e-6)
    executed = np.clip(predicted + np.array([[0.7], [-0.9]], dtype=np.float32), -2.0, 2.0)
    algo.observe_rollout_step(rewards, done, executed)
    np.testing.assert_allclose(
        algo._rollout["actions"][:, -1], algo.action_scaler.normalize(torch.from_numpy(executed)), atol=1e-6
    )
    assert not np.allclose(algo.act(observations[1]), as_predicted, atol=1e-4)


def test_normalized_action_without_context_explains_the_stateful_interface():
    with pytest.raises(NotImplementedError, match="begin_rollout"):
        _tiny_dt().normalized_action(torch.zeros(1, 3))


@pytest.fixture(scope="module")
def dt_run(tmp_path_factory, data_dir):
    # Small transformer, batch 64 and a high lr so a CPU run of a few hundred updates learns (~15-25 s).
    cfg = small_train_config(
        tmp_path_factory.mktemp("dt"),
        data_dir,
        [
            "algo=dt",
            "data.batch_size=64",
            "model.embedding_dim=64",
            "model.num_layers=1",
            "algo.context_length=10",
            "algo.lr=1e-3",
            "algo.warmup_updates=50",
            "trainer.max_steps=600",
            "eval.every_n_updates=300",
        ],
    )
    _, results = train(cfg)
    return cfg, results


def test_short_dt_run_learns(dt_run):
    cfg, results = dt_run
    assert results["algo"] == "dt" and results["train_steps"] == 600
    history = results["eval_history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == 600
    # the untrained transformer scores ~-1450; a few hundred updates reach ~-450
    start = history[0]["eval/return_mean"]
    assert history[-1]["eval/return_mean"] > start + 400
    assert results["eval_return_mean"] > start + 400
    assert results["eval_return_mean"] > results["ref_returns"]["random"] + 400
    checkpoint = torch.load(results["checkpoint"], weights_only=False)
    assert checkpoint["dt_num_updates"] == 600 and checkpoint["global_step"] == 600
    # the default target is the embedded dataset's stored expert (noiseless controller) return
    target = checkpoint["vla_hydra"]["config"]["algo"]["target_return"]
    assert target == results["ref_returns"]["expert"] and -250 < target < -100, target


def test_checkpoint_round_trip_reproduces_the_final_evaluation(dt_run):
    cfg, results = dt_run
    algo, env, _ = load_policy(results["checkpoint"])
    assert isinstance(algo, DecisionTransformer) and algo.context_length == 10
    evaluated = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed)
    assert evaluated.return_mean == pytest.approx(results["eval_return_mean"], rel=1e-6)


def test_target_return_conditions_the_trained_policy(dt_run):
    cfg, results = dt_run
    algo, env, _ = load_policy(results["checkpoint"])
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    actions, returns = {}, {}
    for target in (-150.0, -1500.0):
        algo.target_return = target
        algo.begin_rollout(16)
        actions[target] = algo.act(obs)
        returns[target] = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed).returns
    # same weights, same observations, same env seeds: only the conditioning differs
    assert np.abs(actions[-150.0] - actions[-1500.0]).max() > 1e-2
    assert not np.allclose(returns[-150.0], returns[-1500.0])


def test_vla_hydra_eval_rolls_a_dt_checkpoint_out_towards_the_target_return_given(dt_run, tmp_path):
    _, results = dt_run
    evaluated = {}
    for target in (None, -1500.0):
        run_dir = tmp_path / str(target)
        given = [] if target is None else [f"target_return={target}"]
        proc = run_module(
            "vla_hydra.eval",
            f"ckpt_path={results['checkpoint']}",
            "episodes=2",
            f"hydra.run.dir={run_dir}",
            *given,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        evaluated[target] = json.loads((run_dir / "eval_results.json").read_text())
    trained_with = torch.load(results["checkpoint"], weights_only=False)["vla_hydra"]["config"]["algo"]
    assert evaluated[None]["target_return"] == trained_with["target_return"]
    assert evaluated[-1500.0]["target_return"] == -1500.0
    assert evaluated[None]["eval_return_mean"] != evaluated[-1500.0]["eval_return_mean"]


def test_a_target_return_for_a_policy_not_conditioned_on_one_is_refused_in_one_line(tmp_path):
    sac = ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt"
    proc = run_module("vla_hydra.eval", f"ckpt_path={sac}", "target_return=100", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: target_return=100: {sac} is a checkpoint of algo=sac, which is not conditioned on a return "
        "(only algo=dt is); leave target_return unset"
    )
    assert not (tmp_path / "eval_results.json").exists()


def test_resume_continues_the_warmup(tmp_path, data_dir):
    tiny = [
        "algo=dt",
        "callbacks.policy_eval=null",
        "data.batch_size=8",
        "model.embedding_dim=16",
        "model.num_layers=1",
        "algo.lr=1e-3",
        "algo.warmup_updates=100",
        "eval.episodes=1",
    ]
    _, first = train(small_train_config(tmp_path / "a", data_dir, [*tiny, "trainer.max_steps=20"]))
    resume = [*tiny, "trainer.max_steps=40", f"ckpt_path={first['checkpoint']}"]
    _, resumed = train(small_train_config(tmp_path / "b", data_dir, resume))
    checkpoint = torch.load(resumed["checkpoint"], weights_only=False)
    assert checkpoint["dt_num_updates"] == 40
    # the 40th update used lr 1e-3 * 40 / 100 (a restarted warm-up would have given 2e-4)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(4e-4)


def test_dt_refuses_a_model_that_is_not_a_sequence_model(tmp_path, data_dir):
    from vla_hydra.core.exceptions import ConfigError

    cfg = small_train_config(tmp_path, data_dir, ["algo=dt", "model=mlp", "debug=fdr"])
    with pytest.raises(ConfigError, match="algo=dt: model= built a DeterministicActor"):
        train(cfg)


def _pendulum_file(path, returns_per_episode, metadata):
    """A D4RL-format Pendulum file of 8-step episodes whose returns are the given numbers."""
    rng = np.random.default_rng(0)
    n, length = len(returns_per_episode), 8
    ends = np.zeros(n * length, bool)
    ends[length - 1 :: length] = True
    arrays = {
        "observations": rng.normal(size=(n * length, 3)).astype(np.float32),
        "actions": rng.uniform(-2, 2, size=(n * length, 1)).astype(np.float32),
        "rewards": np.repeat(np.asarray(returns_per_episode, np.float32) / length, length),
        "terminals": np.zeros(n * length, bool),
        "timeouts": ends,
    }
    return write_d4rl_hdf5(path, arrays, metadata)


def test_the_default_target_return_comes_from_the_dataset(tmp_path, data_dir, caplog):
    """Not Pendulum's -150 for every env: a file of another scale is conditioned on its own best episode
    return, and the checkpoint keeps that number for vla_hydra.eval (which reads no dataset)."""
    assert compose_config("train", ["algo=dt"]).algo.target_return is None
    path = _pendulum_file(tmp_path / "plain.hdf5", [-900.0, -400.0, -640.0], {})
    tiny = ["algo=dt", "algo.context_length=4", "algo.updates_per_step=1", "model.embedding_dim=16"]
    overrides = [*tiny, "data=hdf5", f"data.path={path}", "data.batch_size=4", "trainer.max_steps=2"]
    with caplog.at_level("INFO", logger="vla_hydra.algos.dt"):
        _, results = train(small_train_config(tmp_path, data_dir, [*overrides, "callbacks.policy_eval=null"]))
    assert "evaluation conditioned on target return -400 (the dataset's best episode return)" in caplog.text
    assert load_policy(results["checkpoint"])[0].target_return == pytest.approx(-400.0)


def _dt_on_file(path, target_return=None) -> DecisionTransformer:
    from vla_hydra.data.datamodule import OfflineDataModule

    data = OfflineDataModule(str(path), batch_size=4, segment_length=4)
    data.setup("fit")
    algo = _tiny_dt(target_return=target_return)
    algo.return_range = (data.stats().episode_return_min, data.stats().episode_return_max)
    algo.ref_returns = data.reference_returns(None)  # what train.py sets before fit
    return algo


def test_a_stored_reference_return_wins_and_an_explicit_target_outside_the_data_is_warned(tmp_path, caplog):
    refs = {"ref_random_return": -1200.0, "ref_expert_return": -150.0, "created_by": "minari"}
    path = _pendulum_file(tmp_path / "refs.hdf5", [-900.0, -400.0], refs)
    algo = _dt_on_file(path)
    with caplog.at_level("INFO", logger="vla_hydra.algos.dt"):
        algo.resolve_target_return()
    assert (
        algo.target_return == -150.0
        and "(the expert reference return of the normalized score)" in caplog.text
    )
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # a default is not warned about

    for explicit, warned in [(-500.0, False), (-100.0, True), (-2000.0, True)]:
        caplog.clear()
        algo = _dt_on_file(path, target_return=explicit)
        algo.resolve_target_return()
        assert algo.target_return == explicit
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        expected = [
            f"algo.target_return={explicit:g} lies outside the dataset's episode returns [-900, -400]: "
            "the policy is conditioned on a return it never saw"
        ]
        assert warnings == (expected if warned else [])
