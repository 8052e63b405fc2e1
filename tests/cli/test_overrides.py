"""The command line read for what the user meant: a `+key` nothing reads is refused where an existing key
was meant, and a `~` in an override is expanded."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config, run_module


@pytest.mark.parametrize(
    "overrides,line",
    [
        (["+max_steps=5"], "+max_steps=5: adds 'max_steps' to the config's top level, where nothing reads it; did "
         "you mean trainer.max_steps=5?"),
        (["+eval.episode=3"], "+eval.episode=3: adds 'episode' to eval (a settings node), where nothing reads it; "
         "did you mean eval.episodes=3?"),
        (["+paths.dat_dir=/x"], "+paths.dat_dir=/x: adds 'dat_dir' to paths (a settings node), where nothing "
         "reads it; did you mean paths.data_dir=/x?"),
        # a key of the user's own that an interpolation reads, one that resembles nothing
        (["+max_steps=5", "trainer.max_steps=${max_steps}"], None),
        (["+foo=1"], None),
        (["cluster=slurm", "+cluster.additional_parameters.exclusive=true", "+cluster.additional_parameters.exclude=n1"], None),
        (["+callbacks.model_checkpoints={_target_:lightning.pytorch.callbacks.ModelCheckpoint}"], None),
        (["cluster=slurm", "+cluster.partion=gpu"], "+cluster.partion=gpu: adds 'partion' to cluster (a settings node), "
         "where nothing reads it; did you mean cluster.partition=gpu?"),
    ],
)  # fmt: skip
def test_a_plus_key_nothing_reads_is_refused_when_an_existing_one_was_meant(monkeypatch, overrides, line):
    """`+max_steps=5` used to train with the default trainer.max_steps, silently."""
    import vla_hydra.cli.job as cli_job
    from vla_hydra.cli.overrides import refuse_unread_additions
    from vla_hydra.core.exceptions import ConfigError

    cfg = compose_config("train", overrides)
    given = [(o, o.split("=", 1)[0].lstrip("+~")) for o in overrides]
    monkeypatch.setattr(cli_job, "command_line_overrides", lambda: given)
    if line is None:
        refuse_unread_additions(cfg)
    else:
        with pytest.raises(ConfigError) as err:
            refuse_unread_additions(cfg)
        assert str(err.value) == line


@pytest.mark.parametrize(
    "config,overrides,line",
    [
        ("eval", ["ckpt_path=x.ckpt", "+episode=3"], "+episode=3: adds 'episode' to the config's top level, "
         "where nothing reads it; did you mean episodes=3?"),
        ("collect", ["+episodes=3"], "+episodes=3: adds 'episodes' to the config's top level, where nothing "
         "reads it; did you mean data.recipe.episodes=3?"),
        ("eval", ["ckpt_path=x.ckpt", "+foo=3"], None),
    ],
)  # fmt: skip
def test_eval_and_collect_refuse_a_plus_key_nothing_reads(monkeypatch, config, overrides, line):
    """`vla_hydra.eval +episode=3` evaluated 20 episodes and `collect +episodes=3` the recipe's 200, silently."""
    import vla_hydra.cli.job as cli_job
    from vla_hydra.collect import collect
    from vla_hydra.core.exceptions import VlaHydraError
    from vla_hydra.eval import evaluate

    given = [(o, o.split("=", 1)[0].lstrip("+~")) for o in overrides]
    monkeypatch.setattr(cli_job, "command_line_overrides", lambda: given)
    entry = {"eval": evaluate, "collect": collect}[config]
    with pytest.raises(VlaHydraError) as err:
        entry(compose_config(config, overrides))
    if line is None:  # a key of the user's own passes: the missing checkpoint is what stops it
        assert "x.ckpt: file not found" in str(err.value)
    else:
        assert str(err.value) == line


def test_train_refuses_a_plus_key_nothing_reads_before_training(tmp_path):
    proc = run_module("vla_hydra.train", "+max_steps=5", f"hydra.run.dir={tmp_path}/run", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        "error: +max_steps=5: adds 'max_steps' to the config's top"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_home_path_in_an_override_is_expanded_as_bash_expands_it(monkeypatch, tmp_path):
    """`output=~/data/x.hdf5` from zsh or in quotes reached Hydra with its `~`: a parse error for train's
    ckpt_path, and vla_hydra.collect wrote into a directory named `~` under the working directory."""
    from vla_hydra.cli.overrides import read_argv_as_meant

    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["vla_hydra.collect", "output=~/x.hdf5", "hydra.run.dir=~", "~logger", "tags=[a~b]", "+k=~x"]
    monkeypatch.setattr("sys.argv", argv)
    read_argv_as_meant()
    assert argv[1:] == [
        f"output={tmp_path}/x.hdf5",
        f"hydra.run.dir={tmp_path}",
        "~logger",
        "tags=[a~b]",
        "+k=~x",
    ]


def test_a_multirun_flag_typed_between_overrides_runs_the_sweep(tmp_path, data_dir):
    """`train debug=fdr -m seed=0,1`: Hydra's argument parser takes its flags before the overrides only,
    and answered with its usage text and 'unrecognized arguments: seed=0,1' (exit 2)."""
    sweep = tmp_path / "sweep"
    args = ["debug=fdr", f"paths.data_dir={data_dir}", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = run_module("vla_hydra.train", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads((sweep / job / "results.json").read_text())["seed"] for job in ("0", "1")] == [0, 1]
