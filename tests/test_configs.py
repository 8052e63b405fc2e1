"""Every config group choice composes; objects instantiate; config-only CLI paths work and stay light."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from tests.conftest import CONF_DIR, compose_config, run_module, run_python
from vla_hydra.core.config import check_config_values

GROUPS = [
    "algo",
    "model",
    "data",
    "env",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "extras",
    "cluster",
    "experiment",
    "hparams_search",
    "debug",
]


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in _choices(g)])
def test_every_group_choice_composes(group, choice):
    overrides = [f"{group}={choice}"]
    # the values these choices require (`???`)
    required = {
        ("data", "hdf5"): "data.path=/tmp/some.hdf5",
        ("data", "minari"): "data.dataset_id=local/some-v0",
        ("data", "checkpoint_rollouts"): "data.recipe.behavior_policy.ckpt_path=/tmp/some.ckpt",
    }
    if (group, choice) in required:
        overrides.append(required[group, choice])
    # a multirun experiment composes as each of its jobs does: with the first value of each swept key
    if group == "experiment":
        sweep = OmegaConf.select(OmegaConf.load(CONF_DIR / group / f"{choice}.yaml"), "hydra.sweeper.params")
        overrides += [f"{key}={str(values).split(',')[0]}" for key, values in (sweep or {}).items()]
    cfg = compose_config("train", overrides)
    assert cfg.algo._target_ and cfg.trainer._target_
    # every interpolation resolves (an algo key and a trainer key pointing at each other would not),
    # except those that need a Hydra run (run dirs, choices)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/out"
        cfg.paths.log_dir = "/tmp/logs"
    for node in ("algo", "trainer", "model", "env", "data", "callbacks", "logger", "cluster"):
        OmegaConf.to_container(cfg[node], resolve=True)
    # and every value and constructor argument passes the checks train() makes before building anything
    check_config_values(cfg)


@pytest.mark.parametrize("choice", [c for c in _choices("data") if c not in ("checkpoint_rollouts",)])
def test_a_generated_dataset_selects_the_env_it_was_collected_in(choice):
    """`data=hopper_sac_medium` alone trains and evaluates in Hopper-v5; `env=` on the command line wins."""
    cfg = compose_config("train", [f"data={choice}"])
    recipe_env = (cfg.data.get("recipe") or {}).get("env_id")
    assert cfg.env.id == (recipe_env or "Pendulum-v1")  # datasets without a recipe keep the default env
    if recipe_env and recipe_env != "Pendulum-v1":
        assert compose_config("train", [f"data={choice}", "env=pendulum"]).env.id == "Pendulum-v1"
        assert compose_config("train", ["env=pendulum", f"data={choice}"]).env.id == "Pendulum-v1"


def test_objects_instantiate_from_default_config(tmp_path):
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}"])
    env = instantiate(cfg.env)
    assert env.spec().observation_shape == (3,)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == 256 and datamodule.updates_per_step == cfg.algo.updates_per_step
    assert datamodule.recipe.env_id == "Pendulum-v1"
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("name", ["eval", "collect"])
def test_other_entry_configs_compose(name):
    overrides = ["ckpt_path=x.ckpt"] if name == "eval" else []
    cfg = compose_config(name, overrides)
    assert cfg.task_name == name


def test_cfg_job_prints_config_without_importing_lightning():
    probe = (
        "import sys, runpy; sys.argv=['vla_hydra.train','--cfg','job']\n"
        "try:\n    runpy.run_module('vla_hydra.train', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "assert 'lightning' not in sys.modules and 'torch' not in sys.modules, 'heavy import on config path'"
    )
    proc = run_python(probe)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: vla_hydra.algos.bc.BC" in proc.stdout


def test_help_lists_groups_and_choices():
    proc = run_module("vla_hydra.train", "--help")
    assert proc.returncode == 0, proc.stderr
    for group in ["algo", "data", "env", "trainer", "logger", "cluster", "debug"]:
        assert f"{group}: {', '.join(_choices(group))}" in proc.stdout, group
    assert "bc" in _choices("algo") and "pendulum_mixed" in _choices("data")


def test_unknown_group_choice_fails_with_valid_choices(tmp_path):
    proc = run_module("vla_hydra.train", "algo=nope", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode != 0
    choices = ", ".join(_choices("algo"))
    assert proc.stderr.splitlines() == [f"error: algo=nope: no such choice; algo= choices: {choices}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", ["vla-train", "vla-eval", "vla-collect"])
def test_console_scripts_find_the_config_tree(script):
    import subprocess
    import sys
    from pathlib import Path

    executable = Path(sys.executable).parent / script
    if not executable.exists():
        pytest.skip(f"{script} not installed next to {sys.executable} (package not pip-installed)")
    proc = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    # train lists its config groups; eval and collect their own options (they use no train groups)
    expected = {
        "vla-train": "== Configuration groups ==",
        "vla-eval": "ckpt_path: ???",
        "vla-collect": "data= choices",
    }
    assert expected[script] in proc.stdout and "log_dir: ${paths.root_dir}/logs" in proc.stdout
    assert script == "vla-train" or "trainer:" not in proc.stdout


@pytest.mark.parametrize("entry", ["vla_hydra.train", "vla_hydra.collect", "vla_hydra.eval"])
def test_machine_local_settings_reach_every_entry_point(tmp_path, entry):
    """conf/local/default.yaml, as the README shows it (here found through --config-dir, which adds
    the folder to the config search path like conf/ itself)."""
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        "# @package _global_\npaths:\n  data_dir: /scratch/me/vla_data\n"
    )
    extra = ["ckpt_path=x.ckpt"] if entry == "vla_hydra.eval" else []
    proc = run_module(entry, "--config-dir", str(tmp_path), *extra, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "data_dir: /scratch/me/vla_data" in proc.stdout
