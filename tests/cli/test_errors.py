"""Hydra's own errors (composing the config, parsing overrides) end an entry point with one `error:` line."""

from __future__ import annotations

import pytest
from hydra.errors import HydraException

from tests.conftest import compose_config, run_module
from vla_hydra.cli.errors import hydra_error_line


@pytest.mark.parametrize(
    "overrides,line",
    [
        (
            ["algo.lrr=1"],
            "algo.lrr=1: algo (vla_hydra.algos.bc.BC) has no option 'lrr'; did you mean algo.lr=1?",
        ),
        (
            ["algo=iql", "algo.expectle=0.9"],
            "algo.expectle=0.9: algo (vla_hydra.algos.iql.IQL) has no option 'expectle'; "
            "did you mean algo.expectile=0.9?",
        ),
        (
            ["algoo=cql"],
            "algoo=cql: the config has no option 'algoo'; did you mean algo=cql?",
        ),
        # a top-level key that exists deeper: named, not only "no option"
        (
            ["max_steps=5"],
            "max_steps=5: the config has no option 'max_steps'; did you mean trainer.max_steps=5?",
        ),
        (
            ["paths.dat_dir=/x"],
            "paths.dat_dir=/x: paths has no option 'dat_dir'; did you mean paths.data_dir=/x?",
        ),
        # an option of another choice of the same group: name that choice, do not suggest adding the key
        (
            ["cluster=submitit_local", "cluster.wait=false"],
            "cluster.wait=false: cluster has no option 'wait'; cluster=slurm has it",
        ),
        (
            ["algo.expert_ckpt=x.ckpt"],
            "algo.expert_ckpt=x.ckpt: algo (vla_hydra.algos.bc.BC) has no option 'expert_ckpt'; algo=dagger has it",
        ),
        # an argument the node's constructor takes but its yaml does not list: not "no option", nor a
        # "did you mean trainer.max_steps" for max_time
        (
            ["trainer.max_time=00:00:01:00"],
            "trainer.max_time=00:00:01:00: trainer (lightning.pytorch.Trainer) takes 'max_time', but this "
            "config does not set it; add it with +trainer.max_time=00:00:01:00",
        ),
        # ... also where other choices of the group list it: the + line, naming them (it said "has no
        # option", wrong for a constructor argument)
        (
            ["trainer.strategy=ddp"],
            "trainer.strategy=ddp: trainer (lightning.pytorch.Trainer) takes 'strategy', but this config does "
            "not set it; add it with +trainer.strategy=ddp (trainer=ddp and trainer=deepspeed and trainer=fsdp "
            "set it)",
        ),
        (
            ["data=cartpole_mixed", "data.recipe.env_kwargs={max_episode_steps:50}"],
            "data.recipe.env_kwargs={max_episode_steps:50}: data.recipe (vla_hydra.collect.CollectionRecipe) "
            "takes 'env_kwargs', but this config does not set it; add it with "
            "+data.recipe.env_kwargs={max_episode_steps:50}",
        ),
        # CleanRL's / SB3's / CORL's name for an option: ours, though the strings are not alike
        (
            ["algo=ppo", "algo.learning_rate=1e-3"],
            "algo.learning_rate=1e-3: algo (vla_hydra.algos.ppo.PPO) has no option 'learning_rate'; "
            "did you mean algo.lr=1e-3?",
        ),
        (
            ["algo=iql", "algo.iql_tau=0.9"],
            "algo.iql_tau=0.9: algo (vla_hydra.algos.iql.IQL) has no option 'iql_tau'; did you mean "
            "algo.expectile=0.9?",
        ),
        (
            ["env=nope"],
            "env=nope: no such choice; env= choices: cartpole, halfcheetah, hopper, pendulum, walker2d",
        ),
        (
            ["seed=0,1"],
            "seed=0,1: a comma-separated value; add -m (--multirun) to sweep over it, or write seed=[0,1] for a list",
        ),
        (
            ["trainer.max_steps=[1"],
            "trainer.max_steps=[1: cannot parse this override (no viable alternative at input '[1'; "
            "see https://hydra.cc/docs/advanced/override_grammar/basic/)",
        ),
        (["~algo.nope"], "Could not delete from config. 'algo.nope' does not exist."),
        # a typed node of Hydra's own: what it takes, not only "Error merging override ..."
        (
            ["hparams_search=bc_optuna", "hydra.sweeper.n_trials=abc"],
            "hydra.sweeper.n_trials=abc: Value 'abc' of type 'str' could not be converted to Integer",
        ),
    ],
)
def test_composition_errors_become_one_line(overrides, line):
    with pytest.raises(HydraException) as err:
        compose_config("train", overrides)
    assert hydra_error_line(err.value) == line


@pytest.mark.parametrize(
    "entry,args,line",
    [
        (
            "vla_hydra.train",
            ["algo=ppo", "algo.num_step=64"],
            "error: algo.num_step=64: algo (vla_hydra.algos.ppo.PPO) has no option 'num_step'; "
            "did you mean algo.num_steps=64?",
        ),
        ("vla_hydra.train", ["-m", "algo=bc,nope"], "error: algo=nope: no such choice; algo= choices: "),
        (
            "vla_hydra.eval",
            ["ckpt_path=x.ckpt", "epsiodes=3"],
            "error: epsiodes=3: the config has no option 'epsiodes'; did you mean episodes=3?",
        ),
        (
            "vla_hydra.collect",
            ["data=pendulum_mixd"],
            "error: data=pendulum_mixd: no such choice; data= choices: ",
        ),
        # CleanRL / SB3-style options: argparse's usage text and exit code 2 before
        (
            "vla_hydra.train",
            ["algo=ppo", "--total-timesteps", "10000"],
            "error: --total-timesteps: vla_hydra.train takes Hydra overrides (key=value), not --options; "
            "write algo.total_timesteps=10000",
        ),
        (
            "vla_hydra.eval",
            ["ckpt_path=x.ckpt", "--episodes=5"],
            "error: --episodes=5: vla_hydra.eval takes Hydra overrides (key=value), not --options; write episodes=5",
        ),
        # a group set to null (how some templates switch a logger off) was Hydra's ValueError traceback
        (
            "vla_hydra.train",
            ["logger=null"],
            "error: logger=null: a config group takes one of its choices, not null; leave it out with ~logger",
        ),
        # an experiment that sweeps by itself: Hydra used to call the sweep's comma values ambiguous
        (
            "vla_hydra.train",
            ["experiment=il", "algo=bc,dagger", "algo.total_timesteps=400"],
            "error: algo.total_timesteps=400: algo (vla_hydra.algos.bc.BC) has no option 'total_timesteps'",
        ),
    ],
)
def test_entry_points_print_one_line_and_write_nothing(tmp_path, entry, args, line):
    proc = run_module(
        entry, *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep", timeout=120
    )
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(line), proc.stderr
    # no run dir; a sweep leaves only Hydra's multirun.yaml (written before it composes the jobs)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == (["sweep/multirun.yaml"] if "-m" in args else [])


def test_an_option_every_swept_choice_has_is_answered_with_the_way_to_give_it(tmp_path):
    """`-m algo=ppo,grpo algo.total_timesteps=400` used to say BC lacks the option, with a list of the
    algos that have it, the two the user swept among them."""
    args = [
        "-m",
        "algo=ppo,grpo",
        "env=cartpole",
        "algo.total_timesteps=400",
        f"hydra.sweep.dir={tmp_path}/s",
    ]
    proc = run_module("vla_hydra.train", *args, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: algo.total_timesteps=400: in a sweep over algo=ppo,grpo, Hydra first composes the default "
        "algo= choice, which has no option 'total_timesteps'; write ++algo.total_timesteps=400 (every swept "
        "choice has it)"
    ]


def test_cfg_of_a_sweep_is_one_line_saying_how_to_see_a_jobs_config(tmp_path):
    """Hydra refuses --cfg with -m by a ValueError traceback."""
    proc = run_module("vla_hydra.train", "-m", "seed=0,1", "--cfg", "job", cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: -m (--multirun) cannot be combined with --cfg/--info/-r: Hydra shows one job's config; "
        "drop -m and give each swept option one value (seed=0, not seed=0,1)"
    ]
    assert not list(tmp_path.rglob("*"))


def test_hydra_full_error_keeps_hydras_own_report(tmp_path):
    proc = run_module(
        "vla_hydra.train", "algo.lrr=1", f"hydra.run.dir={tmp_path}/run", env={"HYDRA_FULL_ERROR": "1"}
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "Key 'lrr' is not in struct" in proc.stderr


def test_a_config_file_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    """A user's cluster file (or conf/local/default.yaml) with a YAML syntax error ended in PyYAML's
    parser traceback through Hydra's composition."""
    mine = tmp_path / "conf" / "cluster" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# @package _global_\ndefaults: [slurm]\ncluster: {partition: gpu\n")
    proc = run_module(
        "vla_hydra.train",
        "--config-dir",
        str(tmp_path / "conf"),
        "cluster=mine",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: {mine}, line 4, column 1: expected ',' or '}}', but got '<stream end>' (while parsing a flow "
        "mapping); not valid YAML"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("entry,args", [("vla_hydra.train", []), ("vla_hydra.eval", ["ckpt_path=x.ckpt"])])
def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path, entry, args):
    """Hydra creates the run dir before the entry point runs: a traceback used to end the command."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    proc = run_module(entry, *args, f"hydra.run.dir={a_file}", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot create the directory {a_file}: a file of that name exists (runs go to hydra.run.dir / "
        "hydra.sweep.dir, under paths.root_dir or $VLA_HYDRA_ROOT)"
    ]
    assert a_file.read_text() == "mine"


def test_a_log_file_that_cannot_be_written_is_one_line(tmp_path):
    """An existing run dir where Hydra cannot open its log file (a read-only dir; here, as tests run as root,
    a directory in its place): logging's ValueError ended the command with Hydra's traceback."""
    (tmp_path / "eval.log").mkdir()
    proc = run_module("vla_hydra.eval", "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path}", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot write {tmp_path / 'eval.log'}: Is a directory (runs go to hydra.run.dir / "
        "hydra.sweep.dir, under paths.root_dir or $VLA_HYDRA_ROOT)"
    ]
