"""train.py end to end: fast_dev_run per algorithm, checkpoints, resume, eval round trip, sweeps,
and bad inputs as a user meets them on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import CONF_DIR, run_module, small_train_config
from vla_hydra.algos.base import PolicyAlgorithm
from vla_hydra.algos.bc import BC
from vla_hydra.algos.online import OnlineAlgorithm
from vla_hydra.algos.ppo import PPO
from vla_hydra.core.exceptions import CheckpointError
from vla_hydra.train import train

ALGOS = sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))


@pytest.mark.parametrize("algo", ALGOS)
def test_fast_dev_run(tmp_path, data_dir, algo):
    cfg = small_train_config(tmp_path, data_dir, [f"algo={algo}", "debug=fdr"])
    _, results = train(cfg)
    if results["env_steps"] is None:  # offline: one Lightning step, cut to fast_dev_run's one update
        assert results["train_steps"] == 1
    else:  # online: one iteration of collection (+ its updates) in env.num_envs envs
        assert results["env_steps"] > 0 and results["env_steps"] % cfg.env.num_envs == 0
        assert results["train_steps"] >= 1  # the smoke test ran the update code too (SAC: past its warm-up)
    assert np.isfinite(results["eval_return_mean"])
    # a smoke test leaves no checkpoint behind
    assert results["checkpoint"] is None and not (tmp_path / "run" / "checkpoints").exists()


def test_max_steps_counts_updates_exactly_when_not_a_multiple_of_the_block(tmp_path, data_dir):
    """trainer.max_steps=120 with blocks of 50 updates per Lightning step: the last block is cut to 20."""
    cfg = small_train_config(tmp_path, data_dir, ["trainer.max_steps=120", "algo.updates_per_step=50"])
    _, results = train(cfg)
    assert results["train_steps"] == 120
    assert torch.load(results["checkpoint"], weights_only=False)["global_step"] == 120
    # 3 Lightning steps: the rate is timed over the two after the first (70 updates), in the run's wall time
    assert results["train_updates_per_s"] > 70 / results["wall_seconds"]


def test_a_run_of_one_lightning_step_reports_no_rate_rather_than_zero(tmp_path, data_dir):
    _, results = train(
        small_train_config(tmp_path, data_dir, ["trainer.max_steps=10", "algo.updates_per_step=50"])
    )
    assert results["train_steps"] == 10
    assert results["train_updates_per_s"] is None  # it used to say 0.0 updates/s


def test_a_run_without_the_checkpoint_callback_writes_no_checkpoint(tmp_path, data_dir):
    """callbacks.model_checkpoint=null: Lightning's own default checkpoint callback took over and wrote
    checkpoints/epoch=0-step=N.ckpt at the epoch's end, a file results.json did not name."""
    cfg = small_train_config(tmp_path, data_dir, ["callbacks.model_checkpoint=null", "trainer.max_steps=100"])
    _, results = train(cfg)
    assert results["train_steps"] == 100 and results["checkpoint"] is None
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_checkpoint_carries_inference_metadata_and_resume_continues_step_count(tmp_path, data_dir):
    first = small_train_config(tmp_path / "a", data_dir, ["trainer.max_steps=200"])
    _, results = train(first)
    ckpt = torch.load(results["checkpoint"], map_location="cpu", weights_only=False)
    meta = ckpt["vla_hydra"]
    assert meta["env_spec"]["env_id"] == "Pendulum-v1" and meta["env_spec"]["action_high"] == [2.0]
    assert len(meta["obs_mean"]) == 3 and meta["ref_returns"]["random"] < -900
    assert meta["config"]["algo"]["_target_"] == "vla_hydra.algos.bc.BC"
    assert ckpt["global_step"] == 200

    second = small_train_config(
        tmp_path / "b", data_dir, ["trainer.max_steps=400", f"ckpt_path={results['checkpoint']}"]
    )
    _, resumed = train(second)
    assert resumed["train_steps"] == 400
    assert torch.load(resumed["checkpoint"], weights_only=False)["global_step"] == 400

    # another dataset: the checkpoint's normalisation statistics are its own dataset's
    other = small_train_config(
        tmp_path / "c",
        data_dir,
        ["trainer.max_steps=600", f"ckpt_path={results['checkpoint']}", "data.name=other"],
    )
    with pytest.raises(
        CheckpointError, match="trained on dataset pendulum-mixed-v0, but this run's data is other"
    ):
        train(other)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["data.segment_length=10"],
            "data.segment_length=10: algo=bc trains on single transitions; expected null",
        ),
        (
            ["algo=dt", "data.segment_length=10"],
            "data.segment_length=10: algo=dt trains on segments of its algo.context_length=20",
        ),
        (["model=decision_transformer"], "algo=bc: model= built a DecisionTransformerNet, a sequence model"),
        (["algo=iql", "model=decision_transformer"], "algo=iql: model= built a DecisionTransformerNet"),
        (
            ["+data.cut_final_episode=yes"],
            "data.cut_final_episode='yes': expected one of ['error', 'truncate']",
        ),
        # Lightning refused these (manual optimization) with a traceback as the fit started
        (
            ["+trainer.gradient_clip_val=1.0"],
            "trainer.gradient_clip_val=1.0: vla_hydra's algorithms step their own optimizers, which "
            "Lightning does not clip; the algos that clip have their own option (algo.max_grad_norm",
        ),
        (
            ["+trainer.accumulate_grad_batches=2"],
            "trainer.accumulate_grad_batches=2: vla_hydra's algorithms step their own optimizers",
        ),
        # an offline algo on data=rollouts failed in its first update with a TypeError traceback; an
        # online one given a dataset ignored it, while results.json named it as the run's dataset
        (["data=rollouts"], "data=rollouts: algo=bc learns from a dataset, and data=rollouts holds none"),
        (
            ["algo=sac", "data=pendulum_mixed"],
            "data=pendulum-mixed-v0: algo=sac learns only from the experience it collects in env= and would "
            "ignore this dataset",
        ),
        # without torch_xla: an ImportError inside Hydra's instantiate, reported over two lines
        (
            ["trainer.accelerator=tpu"],
            "trainer (accelerator=tpu, devices=1, strategy=None): Lightning refuses it here:",
        ),
    ],
)
def test_settings_that_do_not_fit_the_algorithm_are_refused_before_training(
    tmp_path, data_dir, overrides, message
):
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(Exception) as err:
        train(small_train_config(tmp_path, data_dir, overrides))
    error = err.value
    while not isinstance(error, ConfigError) and error.__cause__ is not None:  # as the CLI unwraps Hydra's
        error = error.__cause__
    assert isinstance(error, ConfigError) and str(error).startswith(message), str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_on_shorter_episodes_than_the_references_gets_no_normalized_score(tmp_path, data_dir, caplog):
    """The dataset's references are 200-step returns: 50-step episodes used to score ~75 untrained."""
    _, results = train(
        small_train_config(tmp_path, data_dir, ["env.max_episode_steps=50", "trainer.max_steps=20"])
    )
    assert results["eval_length_mean"] == 50
    assert results["normalized_score"] is None and results["eval_return_mean"] < 0
    assert (
        "no normalized scores: the reference returns are for 200-step episodes, this run's end at 50"
        in caplog.text
    )


def test_another_env_id_is_not_scored_with_the_env_configs_references(tmp_path, data_dir, caplog):
    """`env=cartpole env.id=Acrobot-v1` (README: any gymnasium id via env.id=) kept cartpole.yaml's
    CartPole-v1 returns: Acrobot's -500 was reported as normalized score -109.2, periodic evaluations too;
    given this env's own references, they score it."""
    overrides = [
        "algo=ppo",
        "env=cartpole",
        "env.id=Acrobot-v1",
        "algo.total_timesteps=512",
        "eval.episodes=2",
    ]
    _, results = train(small_train_config(tmp_path, data_dir, overrides))
    assert results["eval_return_mean"] == -500.0 and results["normalized_score"] is None
    assert all("eval/normalized_score" not in entry for entry in results["eval_history"])
    assert (
        "no normalized scores: env.ref_returns are CartPole-v1's published returns, not Acrobot-v1's"
        in caplog.text
    )
    own = [*overrides, "env.ref_returns={random: -500, expert: -100}"]
    _, results = train(small_train_config(tmp_path / "own", data_dir, own))
    assert results["normalized_score"] == 0.0


def test_a_bad_gail_reward_type_is_refused_before_the_expert_dataset_is_collected(tmp_path):
    from vla_hydra.core.exceptions import ConfigError

    data_dir = tmp_path / "data"
    with pytest.raises(ConfigError, match=r"algo.reward_type='foo': expected one of \['gail', 'airl'\]"):
        train(small_train_config(tmp_path, data_dir, ["algo=gail", "algo.reward_type=foo"]))
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_final_evaluation_runs_the_policy_with_dropout_off(tmp_path, data_dir):
    """Lightning leaves the module in training mode after fit; the final evaluation used to run with
    dropout on (a noisy policy, a score that eval of the checkpoint did not reproduce)."""
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import load_policy

    cfg = small_train_config(tmp_path, data_dir, ["model.dropout=0.5", "callbacks.policy_eval=null"])
    _, results = train(cfg)
    algo, env, _ = load_policy(results["checkpoint"])  # load_policy returns it in eval mode
    again = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed)
    assert results["eval_return_mean"] == pytest.approx(again.return_mean, rel=1e-9)
    algo.train()  # a module in training mode is evaluated in eval mode and handed back as it was
    assert rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed).return_mean == again.return_mean
    assert algo.training


def test_eval_cli_reproduces_training_evaluation_from_checkpoint(tmp_path, data_dir, capsys):
    cfg = small_train_config(tmp_path, data_dir, ["trainer.max_steps=300"])
    _, results = train(cfg)

    from vla_hydra.eval import load_policy

    algo, env, _ = load_policy(results["checkpoint"])
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    # the loaded policy's actions equal a hand-rolled forward pass through the saved weights/stats
    state = torch.load(results["checkpoint"], weights_only=False)["state_dict"]
    normalized = (torch.from_numpy(obs) - state["obs_normalizer.mean"]) / state["obs_normalizer.std"]
    algo_copy, _, _ = load_policy(results["checkpoint"])
    expected = torch.tanh(algo_copy.actor.net(normalized)) * 2.0
    np.testing.assert_allclose(algo.act(obs), expected.detach().numpy(), rtol=1e-5, atol=1e-6)

    exported = tmp_path / "policy.ckpt"
    proc = run_module(
        "vla_hydra.eval",
        f"ckpt_path={results['checkpoint']}",
        f"episodes={cfg.eval.episodes}",
        f"seed={cfg.eval.seed}",
        f"export={exported}",
        f"hydra.run.dir={tmp_path}/eval",
    )
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    # same deterministic policy, same env seeds -> the same returns as the end-of-training evaluation
    assert evaluated["eval_return_mean"] == pytest.approx(results["eval_return_mean"], rel=1e-6)
    assert evaluated["normalized_score"] == pytest.approx(results["normalized_score"], rel=1e-6)
    assert "results:" in proc.stdout
    # the run dir's log keeps the result lines (it used to stay empty)
    eval_log = (tmp_path / "eval" / "eval.log").read_text()
    assert f"eval return {evaluated['eval_return_mean']:.1f}" in eval_log and "exported: " in eval_log

    # a video that cannot be written fails the command, but the evaluation's results are kept
    (tmp_path / "eval_video" / "videos").parent.mkdir()
    (tmp_path / "eval_video" / "videos").write_text("a file where the videos folder would go")
    failed = run_module(
        "vla_hydra.eval",
        f"ckpt_path={results['checkpoint']}",
        f"episodes={cfg.eval.episodes}",
        f"seed={cfg.eval.seed}",
        "video=true",
        f"hydra.run.dir={tmp_path}/eval_video",
    )
    assert failed.returncode == 1 and "cannot write the video there" in failed.stderr.strip().splitlines()[-1]
    kept = json.loads((tmp_path / "eval_video" / "eval_results.json").read_text())
    assert kept["eval_return_mean"] == pytest.approx(results["eval_return_mean"], rel=1e-6)

    # export=: a smaller inference-only checkpoint that evaluates the same
    small = torch.load(exported, weights_only=False)
    assert "optimizer_states" not in small and small["global_step"] == 300
    assert exported.stat().st_size < Path(results["checkpoint"]).stat().st_size / 2
    again = run_module(
        "vla_hydra.eval",
        f"ckpt_path={exported}",
        f"episodes={cfg.eval.episodes}",
        f"seed={cfg.eval.seed}",
        f"export={exported}",  # exists: refused before anything is written
        f"hydra.run.dir={tmp_path}/eval2",
    )
    assert again.returncode == 1 and again.stderr.strip() == (
        f"error: export={exported}: file exists; delete it or choose another path"
    )
    algo_small, _, _ = load_policy(exported)
    np.testing.assert_allclose(algo_small.act(obs), algo.act(obs), rtol=0, atol=0)

    # an evaluation into a dir that holds a run replaced that run's .hydra/ config, or an earlier
    # evaluation's eval_results.json: refused before anything is written
    run_dir = Path(results["checkpoint"]).parents[1]
    for occupied, held in [(run_dir, "results.json, checkpoints"), (tmp_path / "eval", "eval_results.json")]:
        before = {p: p.read_bytes() for p in occupied.rglob("*") if p.is_file()}
        refused = run_module(
            "vla_hydra.eval", f"ckpt_path={results['checkpoint']}", "episodes=2", f"hydra.run.dir={occupied}"
        )
        assert refused.returncode == 1 and refused.stderr.strip() == (
            f"error: hydra.run.dir={occupied}: holds another run ({held}); an evaluation writes its own config "
            "and eval_results.json: choose a new dir (or leave hydra.run.dir at its default)"
        )
        assert {p: p.read_bytes() for p in occupied.rglob("*") if p.is_file()} == before
    # vla_hydra.collect into a training run's dir replaced its .hydra/ config the same way
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = run_module("vla_hydra.collect", f"hydra.run.dir={run_dir}")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: hydra.run.dir={run_dir}: holds another run (results.json, checkpoints); a collection writes its "
        "own config and log: choose a new dir (or leave hydra.run.dir at its default)"
    )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # and a training run into an evaluation's dir replaced the evaluation's config (refused before Hydra writes)
    from vla_hydra.cli.run_dirs import refuse_finished_run_dir_early

    with pytest.raises(SystemExit):
        refuse_finished_run_dir_early([f"hydra.run.dir={tmp_path / 'eval'}", "trainer.max_steps=5"])
    assert capsys.readouterr().err.splitlines() == [
        f"error: hydra.run.dir={tmp_path / 'eval'}: holds an evaluation (eval_results.json); a training run "
        "writes its own config there: choose another hydra.run.dir"
    ]


def test_an_eval_multirun_into_a_training_sweep_is_refused_and_leaves_it_as_it_was(tmp_path):
    """`vla_hydra.eval -m ... hydra.sweep.dir=<a training sweep>` replaced its jobs' .hydra/ configs (and
    its multirun.yaml) with the evaluation's, as hydra.run.dir=<a run> did before it was refused."""
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "config.yaml").write_text("algo: {_target_: vla_hydra.algos.bc.BC}\n")
    (sweep / "0" / "results.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    refused = run_module(
        "vla_hydra.eval", "-m", f"ckpt_path={tmp_path}/a.ckpt,{tmp_path}/b.ckpt", f"hydra.sweep.dir={sweep}"
    )
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: hydra.sweep.dir={sweep}: holds another run ({sweep / '0'}: results.json); an evaluation "
        "writes its own config and eval_results.json: choose a new dir (or leave hydra.sweep.dir at its default)"
    )
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_eval_cli_bad_checkpoint_is_one_line_error_and_does_not_stop_a_sweep(tmp_path):
    """One line for a bad checkpoint. `vla_hydra.eval -m ckpt_path=A,B` (and collect's sweeps) ran under
    Hydra's basic launcher: a bad A ended the sweep and B was never evaluated, without a word. Every job
    runs now, as in train's sweeps."""
    from vla_hydra.core.config import compose_config

    bad = tmp_path / "last.ckpt"
    bad.write_text("not a checkpoint")
    missing = tmp_path / "missing.ckpt"
    proc = run_module("vla_hydra.eval", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: ckpt_path={bad}: not a readable torch") and len(lines) == 1, (
        proc.stderr
    )
    proc = run_module(
        "vla_hydra.eval", "-m", f"ckpt_path={bad},{missing}", f"hydra.sweep.dir={tmp_path}/sweep"
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0] == f"error: job 0 (ckpt_path={bad}): {lines[0].removeprefix('error: ')}"
    assert errors[1] == f"error: job 1 (ckpt_path={missing}): ckpt_path={missing}: file not found"
    assert errors[-1].endswith("(2 of 2 jobs failed, each named above)")
    # collect's sweeps (-m data.recipe.behavior_policy.ckpt_path=A,B) run under the same launcher
    launchers = {
        compose_config(name, [], return_hydra_config=True).hydra.launcher._target_
        for name in ("eval", "collect")
    }
    assert launchers == {"hydra_plugins.vla_hydra_cluster.launchers.SequentialLauncher"}


@pytest.mark.parametrize(
    "change",
    ["config.algo.old_option", "config.algo._target_", "state_dict names"],
)
def test_a_checkpoint_whose_policy_cannot_be_rebuilt_is_one_line_error(tmp_path, change):
    """A checkpoint another vla_hydra version wrote (a renamed class or argument, other weight names) was
    a TypeError / RuntimeError traceback in vla_hydra.eval (and wherever load_policy reads one)."""
    from vla_hydra.core.config import ASSETS_DIR
    from vla_hydra.eval import load_policy

    checkpoint = torch.load(ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt", weights_only=False)
    algo_config = checkpoint["vla_hydra"]["config"]["algo"]
    if change == "config.algo.old_option":
        algo_config["old_option"] = 1
    elif change == "config.algo._target_":
        algo_config["_target_"] += "Renamed"
    else:
        checkpoint["state_dict"] = {f"old.{k}": v for k, v in checkpoint["state_dict"].items()}
    path = tmp_path / "other_version.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"its policy cannot be rebuilt from the config and weights"):
        load_policy(path, option="algo.expert_ckpt")


class _PlainModule(L.LightningModule):
    """A user's algorithm that is not a PolicyAlgorithm."""

    def __init__(
        self, spec, model, stats=None, lr=1e-3, weight_decay=0.0, updates_per_step=1, compile_losses=False
    ):
        super().__init__()


class _NoStatsBC(BC):
    """A user's subclass whose constructor leaves out `stats`."""

    def __init__(self, spec, model, lr=1e-3, weight_decay=0.0, updates_per_step=50, compile_losses=False):
        super().__init__(spec, model, lr, weight_decay, updates_per_step, compile_losses)


class _KwargsBC(BC):
    """A user's subclass that passes its options on through **kwargs."""

    def __init__(self, spec, model, delta=0.5, **kwargs):
        super().__init__(spec, model, **kwargs)


class _NoUpdateBC(PolicyAlgorithm):
    """A user's offline algorithm that implements neither update nor normalized_action."""

    def __init__(self, spec, model, stats=None, **kwargs):
        super().__init__(spec, stats=stats)

    def configure_optimizers(self):
        return None


class _NoIterationPPO(PPO):
    """A user's online algorithm that implements update (the offline hook) instead of train_iteration."""

    train_iteration = OnlineAlgorithm.train_iteration

    def update(self, batch, optimizers):
        return {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algo._target_=tests.test_train._NoUpdateBC"],
            "algo._target_=tests.test_train._NoUpdateBC: _NoUpdateBC does not implement "
            "normalized_action(normalized_obs), update(batch, optimizers), which training calls",
        ),
        (
            ["algo=ppo", "env=cartpole", "algo._target_=tests.test_train._NoIterationPPO"],
            "algo._target_=tests.test_train._NoIterationPPO: _NoIterationPPO does not implement "
            "train_iteration(optimizers), which training calls",
        ),
        (
            ["algo=ppo", "env=cartpole", "~algo.env"],
            "algo._target_=vla_hydra.algos.ppo.PPO: an online algorithm is built with the env= factory "
            "(missing a required argument: 'env'); add `env: ${env}` to its algo yaml",
        ),
        (
            ["algo._target_=tests.test_train._PlainModule"],
            "algo._target_=tests.test_train._PlainModule: not a subclass of vla_hydra.algos.base.PolicyAlgorithm",
        ),
        (  # not an algorithm, and without BC's options: named as such, not as `algo.lr: ... takes no argument`
            ["algo._target_=torch.nn.Linear"],
            "algo._target_=torch.nn.Linear: not a subclass of vla_hydra.algos.base.PolicyAlgorithm",
        ),
        (
            ["algo._target_=tests.test_train._NoStatsBC"],
            "algo._target_=tests.test_train._NoStatsBC: its constructor cannot be called as _NoStatsBC(spec=, "
            "model=, stats=, <the algo.* options>) (got an unexpected keyword argument 'stats')",
        ),
        (
            ["algo._target_=tests.test_train._KwargsBC", "+algo.foo=1"],
            "algo.foo: tests.test_train._KwargsBC takes no argument 'foo' (its **kwargs pass it on to "
            "BC.__init__, which does not take it)",
        ),
    ],
)
def test_a_users_algorithm_that_breaks_the_constructor_contract_is_one_line(
    tmp_path, data_dir, overrides, message
):
    """Each of these was a traceback: Lightning's "No `training_step()` method defined", or a TypeError
    from the algorithm's constructor."""
    from vla_hydra.core.exceptions import ConfigError

    cfg = small_train_config(tmp_path, data_dir, [*overrides, "debug=fdr"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("algo", "my_missing_pkg.algos.MyAlgo", "algo my_missing_pkg.algos.MyAlgo"),
        ("model", "my_missing_pkg.models.MyNet", "model my_missing_pkg.models.MyNet"),
        ("env", "my_missing_pkg.envs:MyRobot-v0", "env my_missing_pkg.envs:MyRobot-v0"),
    ],
)
def test_a_checkpoint_of_a_users_own_package_names_it_when_it_is_not_importable(tmp_path, key, value, named):
    """A checkpoint of the user's own algorithm evaluated without their package on the path said "was it
    written by another version of vla_hydra?" (an env of theirs: `env.id=...: cannot import`, an option
    the user had not passed)."""
    from vla_hydra.core.config import ASSETS_DIR
    from vla_hydra.eval import load_policy

    checkpoint = torch.load(ASSETS_DIR / "behavior_policies" / "hopper_sac.ckpt", weights_only=False)
    config = checkpoint["vla_hydra"]["config"]
    config[key]["id" if key == "env" else "_target_"] = value
    path = tmp_path / "mine.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as err:
        load_policy(path)
    assert str(err.value) == (
        f"ckpt_path={path}: its {named} comes from package 'my_missing_pkg', which is not importable here; "
        "install it or add its directory to PYTHONPATH"
    )


@pytest.mark.parametrize(
    "option", ["env=cartpole", "+env=cartpole", "algo.lr=1", "+trainer.max_steps=5", "eval.every_n_updates=5"]
)
def test_eval_refuses_training_options_instead_of_ignoring_them(tmp_path, option):
    """Hydra advised `+env=cartpole` for `env=cartpole`, and the evaluation then ran in the checkpoint's
    env all the same (exit 0)."""
    proc = run_module("vla_hydra.eval", "ckpt_path=x.ckpt", option, f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 1 and proc.stderr.strip().startswith(
        f"error: {option}: vla_hydra.eval rolls out the checkpoint with the env, algo and model it was trained "
        "with (stored in it) and takes no training options; its options: ckpt_path, episodes,"
    )
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("option", "hint"), [("eval.video=true", "video=true"), ("+eval.episodes=50", "episodes=50")]
)
def test_eval_answers_trains_spelling_of_its_options_with_its_own(tmp_path, option, hint):
    """`eval.video=true` (how train.py asks for a video) failed on eval's command line with "the config
    has no option 'eval'", leaving the user to find that eval spells it `video=true`."""
    proc = run_module("vla_hydra.eval", "ckpt_path=x.ckpt", option, f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {option}: train.py's spelling; vla_hydra.eval takes {hint}"
    )
    assert not (tmp_path / "eval").exists()


def test_multirun_sweep_gives_each_job_its_own_run_dir(tmp_path, data_dir):
    proc = run_module(
        "vla_hydra.train",
        "-m",
        "algo=bc",
        "seed=0,1",
        "trainer.max_steps=100",
        "eval.episodes=2",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["train_steps"] == 100 for r in results)
    assert results[0]["eval_return_mean"] != results[1]["eval_return_mean"]
    sweep = tmp_path / "sweep"
    assert (
        proc.stdout.strip()
        .splitlines()[-1]
        .endswith(
            f"sweep dir {sweep}: 2 of 2 job(s) finished; table and learning curves: python -m vla_hydra.report {sweep}"
        )
    )
    for i in (0, 1):
        assert (tmp_path / "sweep" / str(i) / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / "sweep" / str(i) / ".hydra" / "overrides.yaml").is_file()
        # each job's config in its loggers, with the config-group choices runs are filtered by
        hparams = yaml.safe_load((tmp_path / "sweep" / str(i) / "csv" / "hparams.yaml").read_text())
        assert (hparams["seed"], hparams["choices"]["algo"], hparams["choices"]["data"]) == (
            i,
            "bc",
            "pendulum_mixed",
        )
        assert (
            "hydra" not in hparams["choices"]
        )  # conf/hydra (run-dir settings): not a setting runs differ by


def _write(path: Path, obs_dim=3, nan=False, drop=None):
    rng = np.random.default_rng(0)
    n = 400
    arrays = {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-2, 2, size=(n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": (np.arange(n) % 200) == 199,
    }
    if nan:
        arrays["actions"][10, 0] = np.nan
    if drop:
        del arrays[drop]
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "file not found"),
        ("not_hdf5", "not an HDF5 file"),
        ("missing_key", "[rewards]: missing required key"),
        (
            "obs_dim",
            "[observations]: shape per step (4,) does not match env Pendulum-v1 observation shape (3,)",
        ),
        ("nan", "[actions]: contains NaN or inf (first at row 10)"),
    ],
)
def test_bad_dataset_fails_in_one_line_and_keeps_earlier_results(tmp_path, case, expected):
    path = tmp_path / f"{case}.hdf5"
    if case == "not_hdf5":
        path.write_bytes(b"\x00garbage" * 10)
    elif case != "missing":
        _write(
            path,
            obs_dim=4 if case == "obs_dim" else 3,
            nan=case == "nan",
            drop="rewards" if case == "missing_key" else None,
        )
    run_dir = tmp_path / "run"
    # an earlier file the failed run must leave alone (a finished run's results.json is refused upfront:
    # test_rerun_into_a_finished_run_dir_is_refused_and_continuing_it_is_not)
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "csv" / "metrics.csv").write_text("step,earlier\n1,2\n")
    proc = run_module("vla_hydra.train", "data=hdf5", f"data.path={path}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: dataset {path}") and expected in lines[0], lines[0]
    assert (run_dir / "csv" / "metrics.csv").read_text() == "step,earlier\n1,2\n"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()


def test_cached_dataset_from_another_recipe_is_refused(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path, data_dir, ["data.recipe.episodes=100", "debug=fdr", f"data.path={tmp_path}/p.hdf5"]
    )
    train(cfg)  # collects with 100 episodes
    changed = small_train_config(
        tmp_path / "again",
        data_dir,
        ["data.recipe.episodes=150", "debug=fdr", f"data.path={tmp_path}/p.hdf5"],
    )
    from vla_hydra.core.exceptions import DatasetError

    with pytest.raises(DatasetError, match="recipe_fingerprint") as err:
        train(changed)
    advice = f"train on it as it is with data=hdf5 data.path={tmp_path}/p.hdf5"
    assert str(err.value).endswith(advice), err.value
    # the advice works (it used to say "point data.path at another file", which the file did not need)
    as_it_is = small_train_config(
        tmp_path / "as_it_is", data_dir, ["data=hdf5", "debug=fdr", f"data.path={tmp_path}/p.hdf5"]
    )
    assert train(as_it_is) is not None


def test_a_file_of_ones_own_at_data_path_is_named_by_its_file_not_the_recipes_dataset(tmp_path, data_dir):
    """data=pendulum_mixed data.path=<another file> used to be labelled pendulum-mixed-v0 in results and
    reports; a D4RL file name outside D4RL's naming keeps its underscores."""
    from vla_hydra.data.d4rl_format import d4rl_name_from_file

    mine = _write(tmp_path / "my_pendulum.hdf5")
    _, results = train(small_train_config(tmp_path, data_dir, [f"data.path={mine}", "trainer.max_steps=20"]))
    assert results["dataset"] == "my_pendulum"
    assert d4rl_name_from_file("hop_named.hdf5") == "hop_named"
    assert d4rl_name_from_file("hopper_medium_replay-v2.hdf5") == "hopper-medium-replay-v2"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (trainer=gpu)")
def test_train_on_gpu_matches_cpu_pipeline(tmp_path, data_dir):
    cfg = small_train_config(tmp_path, data_dir, ["trainer=gpu", "trainer.max_steps=1000"])
    _, results = train(cfg)
    assert results["train_steps"] == 1000 and results["normalized_score"] > 50
    from vla_hydra.eval import load_policy

    algo, _, _ = load_policy(results["checkpoint"], device="cuda")
    assert algo.device.type == "cuda"


def test_missing_d4rl_dataset_is_one_line_saying_where_it_looked(tmp_path):
    proc = run_module(
        "vla_hydra.train",
        "data=d4rl",
        "data.name=hopper-medium-v2",
        "env=hopper",
        f"hydra.run.dir={tmp_path}/run",
        env={"D4RL_DATASET_DIR": str(tmp_path / "d4rl")},
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"looked for {tmp_path}/d4rl/hopper_medium-v2.hdf5" in lines[0] and "data.path=" in lines[0]


def test_rerun_into_a_finished_run_dir_is_refused_and_continuing_it_is_not(tmp_path, data_dir):
    first = small_train_config(tmp_path, data_dir, ["trainer.max_steps=100"])
    _, a = train(first)
    run_dir = Path(a["run_dir"])
    kept = {p: p.read_bytes() for p in (Path(a["checkpoint"]), run_dir / "results.json")}
    second = small_train_config(tmp_path, data_dir, ["trainer.max_steps=150"])
    with pytest.raises(CheckpointError, match=r"holds a finished run \(results.json\)"):
        train(second)
    assert all(p.read_bytes() == data for p, data in kept.items())
    # the CLI refuses before Hydra writes .hydra/ into it, in one line
    config_before = (
        (run_dir / ".hydra" / "config.yaml").read_bytes() if (run_dir / ".hydra").exists() else None
    )
    (run_dir / ".hydra").mkdir(exist_ok=True)  # the run's command, as Hydra records it
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=2\n- trainer.max_steps=100\n")
    proc = run_module("vla_hydra.train", f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}")
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    # the whole command that continues it: `ckpt_path=` alone started a new dir with seed 0
    assert "holds a finished run" in proc.stderr and proc.stderr.strip().endswith(
        f"continue that run with python -m vla_hydra.train seed=2 trainer.max_steps=100 "
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} hydra.run.dir={run_dir} and a larger "
        "trainer.max_steps (online algos: algo.total_timesteps)"
    )
    if config_before is not None:
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config_before
    # continuing the run from its checkpoint in its own dir is what resume is for
    third = small_train_config(tmp_path, data_dir, ["trainer.max_steps=150", f"ckpt_path={a['checkpoint']}"])
    _, c = train(third)
    assert c["train_steps"] == 150
    # the continued run's checkpoint is the run's last.ckpt again (as after a SLURM requeue)
    assert torch.load(c["checkpoint"], weights_only=False)["global_step"] == 150


def test_bf16_mixed_precision_trains_through_the_manual_optimization_path(tmp_path, data_dir):
    """trainer.precision=bf16-mixed (autocast; CPUs support it too): every backward and optimizer step
    goes through Lightning's precision plugin instead of the direct fp32 path, and BC still learns."""
    cfg = small_train_config(tmp_path, data_dir, ["trainer.precision=bf16-mixed", "trainer.max_steps=1000"])
    _, results = train(cfg)
    assert results["train_steps"] == 1000
    # random ~ -1230, the behaviour policy ~ -145 on this dataset (fp32 BC: most of the gap by 1500 steps)
    assert results["eval_return_mean"] > results["ref_returns"]["random"] + 500


def test_a_failing_sweep_job_names_itself_in_its_one_line_error(tmp_path, data_dir):
    proc = run_module(
        "vla_hydra.train",
        "-m",
        "algo=bc",
        "data.batch_size=0",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: job 0 (algo=bc data.batch_size=0 paths.data_dir={data_dir}): "
        "data.batch_size=0: expected an integer >= 1"
    )


def test_a_failing_job_of_a_local_sweep_does_not_stop_the_jobs_after_it(tmp_path, data_dir):
    """Hydra's basic launcher ended the sweep at the first failing job: the jobs after it never ran."""
    sweep = tmp_path / "sweep"
    proc = run_module(
        "vla_hydra.train", "-m", "data.batch_size=0,64,-1", "trainer.max_steps=50", "eval.episodes=2",
        "callbacks.policy_eval.episodes=2", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 1
    assert json.loads((sweep / "1" / "results.json").read_text())["train_steps"] == 50
    assert not (sweep / "0" / "results.json").exists() and not (sweep / "2" / "results.json").exists()
    assert f"sweep dir {sweep}: 1 of 3 job(s) finished; table and learning curves" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    first = (
        f"error: job 0 (data.batch_size=0 trainer.max_steps=50 eval.episodes=2 callbacks.policy_eval.episodes=2 "
        f"paths.data_dir={data_dir}): data.batch_size=0: expected an integer >= 1"
    )
    assert errors[0] == first and errors[1].startswith("error: job 2 (data.batch_size=-1 ")
    # the last line: the first failure again, after the other jobs' output
    assert (
        errors[-1]
        == proc.stderr.strip().splitlines()[-1]
        == f"{first} (2 of 3 jobs failed, each named above)"
    )


def test_a_bug_in_one_job_of_a_local_sweep_shows_its_traceback_and_the_next_job_runs(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = run_module(
        "vla_hydra.train", "-m", "+callbacks.probe._target_=tests.cluster.probes.FailAtStart",
        "+callbacks.probe.fail=true,false", "trainer.max_steps=50", "eval.episodes=2",
        "callbacks.policy_eval.episodes=2", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" in proc.stdout and "RuntimeError: probe failure at train start" in proc.stdout
    assert json.loads((sweep / "1" / "results.json").read_text())["train_steps"] == 50
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: job 0 (+callbacks.probe._target_=tests.cluster.probes.FailAtStart +callbacks.probe.fail=True "
        f"trainer.max_steps=50 eval.episodes=2 callbacks.policy_eval.episodes=2 paths.data_dir={data_dir}): "
        "RuntimeError: probe failure at train start"
    )


def test_a_sweep_into_a_finished_sweep_dir_is_refused_before_anything_is_written(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0", "trainer.max_steps=50", "eval.episodes=2", f"paths.data_dir={data_dir}"]
    first = run_module("vla_hydra.train", *args, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {p: p.read_bytes() for p in [sweep / "multirun.yaml", *sweep.glob("0/**/*.*")] if p.is_file()}
    again = run_module("vla_hydra.train", *args, "trainer.max_steps=100", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 1
    # it used to name the job's dir and say to continue it with ckpt_path=, which the sweep then refused:
    # ckpt_path= goes to every job of a sweep, so a run is continued alone, in its own dir
    assert again.stderr.strip().splitlines() == [
        f"error: hydra.sweep.dir={sweep}: holds runs ({sweep / '0'}); a sweep writes its own job dirs: choose "
        f"a new dir (continue one of its runs alone with python -m vla_hydra.train seed=0 trainer.max_steps=50 "
        f"eval.episodes=2 paths.data_dir={data_dir} ckpt_path={sweep / '0' / 'checkpoints' / 'last.ckpt'} "
        f"hydra.run.dir={sweep / '0'} hydra.mode=RUN)"
    ]
    assert all(p.read_bytes() == data for p, data in kept.items())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+callbacks.bad._target_=builtins.dict", "callbacks.bad._target_=builtins.dict: built a dict, expected a lightning Callback"),
        ("+logger.bad._target_=builtins.list", "logger.bad._target_=builtins.list: built a list, expected a lightning Logger"),
    ],
)  # fmt: skip
def test_a_callback_or_logger_entry_that_builds_something_else_is_named(
    tmp_path, data_dir, override, message
):
    """Lightning failed on such an entry with OmegaConf's "Missing key on_exception full_key: [3]"."""
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError) as err:
        train(small_train_config(tmp_path, data_dir, [override]))
    assert str(err.value) == message
