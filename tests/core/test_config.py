"""Known hyper-parameters outside their valid range are refused before anything is built."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config, run_module
from vla_hydra.core.config import check_config_values
from vla_hydra.core.exceptions import ConfigError


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.batch_size=0"], "data.batch_size=0: expected an integer >= 1"),
        (["algo.updates_per_step=0"], "algo.updates_per_step=0: expected an integer >= 1"),
        (["algo.lr=-1"], "algo.lr=-1: expected a learning rate > 0"),
        (["algo=iql", "algo.expectile=1.5"], "algo.expectile=1.5: expected a number in (0, 1)"),
        (["algo=td3bc", "algo.tau=0"], "algo.tau=0: expected a number in (0, 1]"),
        (
            ["algo=ppo", "env=cartpole", "algo.total_timesteps=0"],
            "algo.total_timesteps=0: expected an integer >= 1",
        ),
        (["algo=sac", "algo.batch_size=0"], "algo.batch_size=0: expected an integer >= 1"),
        (["algo=dt", "algo.context_length=0"], "algo.context_length=0: expected an integer >= 1"),
        (
            ["model.hidden_dims=[256,0]"],
            "model.hidden_dims=[256, 0]: expected a list of integers >= 1 (layer widths)",
        ),
        (["eval.episodes=0"], "eval.episodes=0: expected an integer >= 1"),
        (["data.recipe.episodes=two"], "data.recipe.episodes=two: expected an integer >= 1"),
        (["algo=ppo", "env=cartpole", "algo.gamma=1.01"], "algo.gamma=1.01: expected a number in [0, 1]"),
        (["trainer.max_steps=abc"], "trainer.max_steps=abc: expected an integer >= 0, or -1 for no limit"),
        (["trainer.max_steps=null"], "trainer.max_steps=None: expected an integer >= 0, or -1 for no limit"),
        (["trainer.max_steps=-5"], "trainer.max_steps=-5: expected an integer >= 0, or -1 for no limit"),
        (["seed=abc"], "seed=abc: expected an integer in [0, 4294967295]"),
        (["seed=4294967296"], "seed=4294967296: expected an integer in [0, 4294967295]"),
        (["torch_threads=0"], "torch_threads=0: expected an integer >= 1"),
        (["eval.video=nope"], "eval.video=nope: expected true or false"),
        (["algo=dt", "algo.target_return=abc"], "algo.target_return=abc: expected a number"),
        (
            ["algo=dt", "algo.betas=[0.9]"],
            "algo.betas=[0.9]: expected two numbers in [0, 1) (Adam's beta1, beta2)",
        ),
        (["data.normalize_observations=maybe"], "data.normalize_observations=maybe: expected true or false"),
        (["algo=iql", "algo.beta=-1"], "algo.beta=-1: expected a number >= 0"),
        (["algo=td3bc", "algo.alpha=-1"], "algo.alpha=-1: expected a number >= 0"),
        (["algo=dagger", "algo.beta0=2"], "algo.beta0=2: expected a number in [0, 1]"),
        (["algo=ppo_continuous", "algo.target_kl=-1"], "algo.target_kl=-1: expected a number in (0, inf)"),
        (["algo=cql", "algo.cql_temp=0"], "algo.cql_temp=0: expected a number in (0, inf)"),
    ],
)
def test_out_of_range_values_name_the_option(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_config_values(compose_config("train", overrides))
    assert str(err.value) == message


def test_boundary_values_and_optional_settings_pass():
    check_config_values(
        compose_config(
            "train",
            ["algo=ppo", "env=cartpole", "algo.gamma=1.0", "algo.gae_lambda=0", "algo.target_kl=null"],
        )
    )
    check_config_values(compose_config("train", ["algo=td3bc", "algo.tau=1.0", "algo.policy_noise=0"]))
    check_config_values(compose_config("train", ["algo=td3bc", "algo.alpha=0"]))  # pure BC: allowed


def test_cli_refuses_a_value_that_used_to_hang_before_touching_the_run_dir(tmp_path):
    """updates_per_step=0 made the training loop spin forever; now: one line, exit 1, nothing written."""
    run_dir = tmp_path / "run"
    proc = run_module("vla_hydra.train", "algo.updates_per_step=0", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: algo.updates_per_step=0: expected an integer >= 1"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    # the run dir Hydra created says why it holds no results
    assert (
        (run_dir / "train.log")
        .read_text()
        .strip()
        .endswith("[ERROR] - error: algo.updates_per_step=0: expected an integer >= 1")
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["+algo.lrr=1"], "algo.lrr: vla_hydra.algos.bc.BC takes no argument 'lrr'; did you mean algo.lr?"),
        (
            ["algo=sac", "+algo.learning_start=5"],
            "algo.learning_start: vla_hydra.algos.sac.SAC takes no argument 'learning_start'; "
            "did you mean algo.learning_starts?",
        ),
        (["+trainer.gpus=1"], "trainer.gpus: lightning.pytorch.Trainer takes no argument 'gpus'"),
        (
            ["algo._target_=vla_hydra.algos.bc.Nope"],
            "algo._target_=vla_hydra.algos.bc.Nope: cannot be imported (vla_hydra.algos.bc has no 'Nope')",
        ),
        # items of a list of objects too (it was Hydra's "Error locating target ... full_key: env.wrappers0")
        (
            ["env.wrappers=[{_target_: gymnasium.wrappers.NoSuchWrapper, _partial_: true}]"],
            "env.wrappers[0]._target_=gymnasium.wrappers.NoSuchWrapper: cannot be imported "
            "(gymnasium.wrappers has no 'NoSuchWrapper')",
        ),
        (
            ["env.wrappers=[{_target_: gymnasium.wrappers.ClipReward, _partial_: true, min_rewrd: 0}]"],
            "env.wrappers[0].min_rewrd: gymnasium.wrappers.ClipReward takes no argument 'min_rewrd'; "
            "did you mean env.wrappers[0].min_reward?",
        ),
    ],
)
def test_arguments_a_constructor_does_not_take_are_named(overrides, message):
    """A `+key` that reached the object's constructor used to fail mid-build with a TypeError traceback."""
    with pytest.raises(ConfigError) as err:
        check_config_values(compose_config("train", overrides))
    assert str(err.value).startswith(message)


def test_an_unimportable_target_says_why_in_a_few_words(tmp_path, monkeypatch):
    """Hydra's own text ('Error loading ...: ModuleNotFoundError(...) Are you sure that ...?') was passed on."""
    from vla_hydra.core.config import import_target

    package = tmp_path / "user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("x = = 1\n")
    (package / "needs_dep.py").write_text("import a_dependency_not_installed\n")
    (package / "algos.py").write_text("class HuberBC:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = {
        "no_such_pkg.Algo": "no module named 'no_such_pkg' (is its package installed, or its folder on PYTHONPATH?)",
        "user_pkg.algos.HuberBc": "user_pkg.algos has no 'HuberBc'; did you mean user_pkg.algos.HuberBC?",
        "user_pkg.nomodule.Algo": "user_pkg has no 'nomodule'",
        "user_pkg.broken.Algo": "importing user_pkg.broken raised SyntaxError: invalid syntax (broken.py, line 1)",
        "user_pkg.needs_dep.Algo": "importing user_pkg.needs_dep failed: No module named 'a_dependency_not_installed'",
    }
    for target, why in expected.items():
        with pytest.raises(ConfigError) as err:
            import_target(target, "algo._target_")
        assert str(err.value) == f"algo._target_={target}: cannot be imported ({why})"
    assert import_target("user_pkg.algos.HuberBC", "algo._target_").__name__ == "HuberBC"


def test_cli_names_an_unknown_constructor_argument_before_the_run_dir_is_written(tmp_path):
    proc = run_module("vla_hydra.train", "+algo.lrr=1", f"hydra.run.dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: algo.lrr: vla_hydra.algos.bc.BC takes no argument 'lrr'; did you mean algo.lr?"
    ]
    # an unimportable _target_: the one line only (Hydra's own 3-line log of the failure is silenced)
    proc = run_module(
        "vla_hydra.train", "algo._target_=vla_hydra.algos.bc.Nope", f"hydra.run.dir={tmp_path}/b"
    )
    assert proc.returncode == 1 and proc.stdout.strip() == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: algo._target_=")
    assert not (tmp_path / "run" / "results.json").exists()


def test_every_switch_in_the_conf_tree_is_checked_as_a_boolean():
    """A new true/false setting in conf/ is covered too (`overwrite=no` used to mean overwrite)."""
    import re

    from tests.conftest import CONF_DIR
    from vla_hydra.core.config import _BOOL_KEYS

    not_only_boolean = {"_partial_", "chdir", "deterministic", "fast_dev_run"}  # Hydra's or Lightning's
    found = set()
    for path in CONF_DIR.rglob("*.yaml"):
        found |= set(re.findall(r"^\s*([a-z_]+):\s*(?:true|false)\b", path.read_text(), flags=re.M))
    assert found - not_only_boolean <= _BOOL_KEYS, sorted(found - not_only_boolean - _BOOL_KEYS)


def test_collect_refuses_a_word_for_overwrite_and_keeps_the_file(tmp_path):
    out = tmp_path / "data.hdf5"
    out.write_bytes(b"an earlier file")
    proc = run_module(
        "vla_hydra.collect", f"output={out}", "overwrite=no", "data.recipe.episodes=2", timeout=120
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: overwrite=no: expected true or false"]
    assert out.read_bytes() == b"an earlier file"
