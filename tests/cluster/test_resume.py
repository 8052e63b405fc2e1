"""Exact resume (no scheduler needed): a run stopped at a checkpoint and resumed equals an uninterrupted
run, and a requeued job picks its own run dir's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from tests.conftest import run_module, small_train_config
from vla_hydra.cluster.resume import advance_iterable, resume_checkpoint
from vla_hydra.core.exceptions import CheckpointError
from vla_hydra.train import train
from vla_hydra.training.callbacks import Throughput


def test_resumed_run_equals_uninterrupted_run(tmp_path, data_dir):
    steps = ["trainer.max_steps=400", "callbacks.model_checkpoint.every_n_updates=100"]
    _, straight = train(small_train_config(tmp_path / "straight", data_dir, steps))

    _, first = train(small_train_config(tmp_path / "split", data_dir, ["trainer.max_steps=150", *steps[1:]]))
    resumed_cfg = small_train_config(
        tmp_path / "resumed", data_dir, [*steps, f"ckpt_path={first['checkpoint']}"]
    )
    _, resumed = train(resumed_cfg)

    assert resumed["train_steps"] == straight["train_steps"] == 400
    # same batches, same RNG, same optimizer state -> bit-identical weights and evaluation
    a = torch.load(straight["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["eval_return_mean"] == straight["eval_return_mean"]
    # wall time across legs: the first leg's, up to its last checkpoint, travels in that checkpoint
    assert straight["wall_seconds_all_legs"] == straight["wall_seconds"]
    first_leg = torch.load(first["checkpoint"], weights_only=False)["callbacks"]["Throughput"]
    assert 0 < first_leg["wall_seconds_all_legs"] <= first["wall_seconds"]
    assert resumed["wall_seconds_all_legs"] >= first_leg["wall_seconds_all_legs"] + resumed["wall_seconds"]
    assert resumed["wall_seconds_all_legs"] > resumed["wall_seconds"]
    # a checkpoint saved before this record: the earlier legs' time is unknown, not zero
    assert Throughput(resuming=True).wall_seconds_all_legs(1.0) is None


def test_a_run_continued_from_a_budget_that_cut_its_last_block_equals_an_uninterrupted_run(
    tmp_path, data_dir
):
    """trainer.max_steps=70 trains 50 + 20 of TD3+BC's 50-update blocks; continued to 150, the run skipped the
    cut block's other 30 batches and its blocks ended at 120, 170 instead of 100, 150: other weights,
    other evaluation steps than the uninterrupted run's. It now trains the cut block's rest first."""
    steps = ["algo=td3bc", "trainer.max_steps=150", "eval.every_n_updates=50"]
    _, straight = train(small_train_config(tmp_path / "straight", data_dir, steps))
    _, cut = train(small_train_config(tmp_path / "split", data_dir, [*steps, "trainer.max_steps=70"]))
    _, resumed = train(
        small_train_config(tmp_path / "resumed", data_dir, [*steps, f"ckpt_path={cut['checkpoint']}"])
    )

    a = torch.load(straight["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in resumed["eval_history"]] == [h["step"] for h in straight["eval_history"]]


def test_resume_checkpoint_prefers_own_run_dir_only_with_auto_resume(tmp_path):
    own = tmp_path / "checkpoints" / "last.ckpt"
    given = tmp_path / "given.ckpt"
    torch.save({"state_dict": {}}, given)
    cfg = OmegaConf.create({"ckpt_path": str(given), "cluster": {"auto_resume": True}})
    assert resume_checkpoint(cfg, tmp_path) == str(given)  # nothing in the run dir yet
    own.parent.mkdir()
    own.write_bytes(b"")
    assert resume_checkpoint(cfg, tmp_path) == str(own)
    cfg.cluster.auto_resume = False
    assert resume_checkpoint(cfg, tmp_path) == str(given)


def test_a_job_requeued_after_its_run_finished_hands_back_the_results(tmp_path, data_dir, monkeypatch):
    """`scontrol requeue` during a job's final evaluation: the job finished before SLURM killed it, and
    its restart was refused as a new run into a finished run's dir (job FAILED, its submitit result
    replaced by that error). The restart now returns the finished run's results without training."""
    cfg = small_train_config(tmp_path, data_dir, ["trainer.max_steps=50"])
    with open_dict(cfg):
        cfg.cluster.auto_resume = True
    _, first = train(cfg)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _, again = train(cfg)
    assert again == first
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a new job into that dir is still refused
    with pytest.raises(CheckpointError, match="holds a finished run"):
        train(cfg)


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "directory", "checkpoints_dir"])
def test_a_bad_ckpt_path_fails_in_one_line_before_any_work(tmp_path, case):
    path = tmp_path / "x.ckpt"
    if case == "not_a_checkpoint":
        path.write_text('{"results": 1}')
    if case == "directory":
        path = tmp_path
    if (
        case == "checkpoints_dir"
    ):  # a run's checkpoints/ dir: its last.ckpt, not checkpoints/checkpoints/last.ckpt
        path = tmp_path / "checkpoints"
        path.mkdir()
    run_dir = tmp_path / "run"
    proc = run_module("vla_hydra.train", f"ckpt_path={path}", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 1
    expected = {
        "missing": "file not found",
        "not_a_checkpoint": "not a complete checkpoint (truncated, or not written by torch.save); use "
        "another one, e.g. the run's checkpoints/last.ckpt",
        "directory": f"a directory; expected a checkpoint file, e.g. {path / 'checkpoints' / 'last.ckpt'}",
        "checkpoints_dir": f"a directory; expected a checkpoint file, e.g. {path / 'last.ckpt'}",
    }[case]
    assert proc.stderr.strip().splitlines() == [f"error: ckpt_path={path}: {expected}"]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()


def test_checkpoints_that_cannot_continue_this_config_are_refused_in_one_line(tmp_path, data_dir, caplog):
    """Another algorithm, other network widths, an inference-only file, Lightning's aliases: each a
    one-line CheckpointError before any training."""
    from vla_hydra.core.exceptions import CheckpointError
    from vla_hydra.eval import export_policy

    _, bc = train(small_train_config(tmp_path / "bc", data_dir, ["trainer.max_steps=50"]))
    exported = export_policy(bc["checkpoint"], tmp_path / "policy.ckpt")
    cases = {
        ("algo=iql", f"ckpt_path={bc['checkpoint']}"): "a checkpoint of algo=bc, not algo=iql",
        ("model.hidden_dims=[64,64]", f"ckpt_path={bc['checkpoint']}"): "its weights do not fit this config",
        (f"ckpt_path={exported}",): "an inference-only checkpoint",
        ("ckpt_path=best",): "ckpt_path=best: not supported here",
        ("ckpt_path=last",): "ckpt_path=last: no checkpoint at",
    }
    for i, (overrides, message) in enumerate(cases.items()):
        cfg = small_train_config(tmp_path / f"case{i}", data_dir, ["trainer.max_steps=100", *overrides])
        with pytest.raises(CheckpointError, match=message.replace("[", "\\[")) as err:
            train(cfg)
        assert "\n" not in str(err.value)
        assert not (tmp_path / f"case{i}" / "run" / "results.json").exists()
    # a budget already behind the checkpoint: allowed (nothing to train), but said; so is another seed
    # than the checkpoint's run (a continuation on other minibatches), which used to pass silently
    # ...and so are changed algo settings (what depends on them continues on the new values)
    behind = ["trainer.max_steps=20", "seed=1", "algo.lr=2e-3", f"ckpt_path={bc['checkpoint']}"]
    with caplog.at_level("WARNING"):
        _, again = train(small_train_config(tmp_path / "behind", data_dir, behind))
    assert (
        again["train_steps"] == 50
        and "trainer.max_steps=20 is behind the checkpoint's step 50" in caplog.text
        and f"seed=1, but the run that wrote ckpt_path={bc['checkpoint']} had seed=0" in caplog.text
        and "add seed=0 to continue it exactly" in caplog.text
        and "with algo settings other than its run's (algo.lr: 0.001 -> 0.002)" in caplog.text
    )


def test_resuming_an_online_run_in_another_env_names_the_env_to_use(tmp_path, data_dir):
    """algo=ppo ckpt_path=<a CartPole run> without env=cartpole used to fail on weight shapes
    ("actor.log_std missing; 6 more") instead of naming the env the checkpoint was trained in."""
    from vla_hydra.core.exceptions import CheckpointError

    budget = ["algo=ppo", "algo.total_timesteps=512", "env.num_envs=4", "algo.num_steps=128"]
    _, cartpole = train(small_train_config(tmp_path / "a", data_dir, [*budget, "env=cartpole"]))
    resumed = small_train_config(tmp_path / "b", data_dir, [*budget, f"ckpt_path={cartpole['checkpoint']}"])
    with pytest.raises(CheckpointError) as err:
        train(resumed)
    assert str(err.value) == (
        f"ckpt_path={cartpole['checkpoint']}: trained in CartPole-v1, but this run's env is Pendulum-v1; "
        "resume with env=cartpole"
    )


def test_an_algo_option_that_changes_the_networks_is_named_when_a_resume_is_refused(tmp_path, data_dir):
    """GRPO resumed with algo.kl_coef > 0 (a reference policy) or SAC with other algo.critic_hidden_dims:
    the refusal told the user to resume with the model=/data=/env= settings, none of which had changed."""
    budget = ["algo=grpo", "env=cartpole", "algo.group_size=2", "algo.num_groups=1", "eval.episodes=2"]
    _, grpo = train(small_train_config(tmp_path / "a", data_dir, [*budget, "algo.total_timesteps=50"]))
    resumed = [*budget, "algo.total_timesteps=100", "algo.kl_coef=0.1", f"ckpt_path={grpo['checkpoint']}"]
    with pytest.raises(CheckpointError) as err:
        train(small_train_config(tmp_path / "b", data_dir, resumed))
    assert str(err.value) == (
        f"ckpt_path={grpo['checkpoint']}: its weights do not fit this config (ref_policy.net.0.weight missing; "
        "5 more): resume with the model=/data=/env= settings of the run that wrote it and its algo settings "
        "(algo.kl_coef: 0.0 -> 0.1)"
    )


def test_resuming_with_the_other_ppo_choice_names_the_algo_choice(tmp_path, data_dir, monkeypatch):
    """algo=ppo and algo=ppo_continuous are one class, so ckpt_path= of a ppo run under
    algo=ppo_continuous passed the algorithm check and failed on weight shapes, telling the user to
    resume with other model=/data=/env= settings when the algo= choice was what differed."""
    from vla_hydra.core.exceptions import CheckpointError

    budget = ["env=cartpole", "algo.total_timesteps=512", "env.num_envs=4", "algo.num_steps=128"]
    # the algo= choice as a command line under Hydra gives it (compose gives none)
    monkeypatch.setattr("vla_hydra.train.hydra_choice", lambda group: "ppo")
    _, ppo = train(small_train_config(tmp_path / "a", data_dir, ["algo=ppo", *budget, "eval.episodes=2"]))
    monkeypatch.setattr("vla_hydra.train.hydra_choice", lambda group: "ppo_continuous")
    resumed = ["algo=ppo_continuous", *budget, f"ckpt_path={ppo['checkpoint']}"]
    with pytest.raises(CheckpointError) as err:
        train(small_train_config(tmp_path / "b", data_dir, resumed))
    assert str(err.value).endswith(
        "resume with the algo=ppo (not ppo_continuous) and the model=/data=/env= settings of the run that wrote it"
    )


def test_advance_iterable_restarts_finished_epochs():
    class Counter(torch.utils.data.IterableDataset):
        def __init__(self):
            self.drawn = 0

        def __iter__(self):
            for _ in range(3):  # a 3-item "epoch"
                self.drawn += 1
                yield self.drawn

    dataset = Counter()
    assert advance_iterable(dataset, 7) == 7 and dataset.drawn == 7


def test_a_mid_epoch_resume_from_the_command_line_does_not_warn_of_an_unresumable_dataloader(
    tmp_path, data_dir
):
    """ResumeState positions the sampler itself, so Lightning's warning that a mid-epoch resume with a
    non-resumable dataloader is unreliable does not apply and is not shown."""
    common = [f"paths.data_dir={data_dir}", "eval.episodes=2", "callbacks.policy_eval=null"]
    first = run_module("vla_hydra.train", "trainer.max_steps=175", f"hydra.run.dir={tmp_path / 'a'}", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    resumed = run_module(
        "vla_hydra.train",
        "trainer.max_steps=250",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={tmp_path / 'b'}",
        *common,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert "resume: sampler advanced past the" in output
    assert "dataloader is not resumable" not in output


def test_a_run_dir_in_use_or_holding_an_interrupted_run_is_refused_before_anything_is_written(
    tmp_path, data_dir, capsys
):
    """Two runs into one hydra.run.dir overwrote each other's results.json and interleaved metrics.csv; a
    fresh run into an interrupted run's dir appended a second step history beside the old last.ckpt."""
    import shutil

    from tests.conftest import run_module
    from vla_hydra.cluster.resume import lock_run_dir

    _, first = train(small_train_config(tmp_path / "a", data_dir, ["trainer.max_steps=50"]))
    args = ["trainer.max_steps=50", f"paths.data_dir={data_dir}"]

    busy = tmp_path / "busy"
    held = lock_run_dir(busy)  # as a run in progress holds it
    try:
        proc = run_module("vla_hydra.train", *args, f"hydra.run.dir={busy}", timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"error: run dir {busy} is in use by another running process; wait for it or choose another "
            "hydra.run.dir"
        ]
    finally:
        held.close()
    assert not list(busy.iterdir())  # nothing written into it

    interrupted = tmp_path / "interrupted"
    shutil.copytree(Path(first["checkpoint"]).parent, interrupted / "checkpoints")
    # the interrupted run's command, as Hydra recorded it
    (interrupted / ".hydra").mkdir()
    (interrupted / ".hydra" / "overrides.yaml").write_text("- seed=3\n- trainer.max_steps=50\n")
    proc = run_module("vla_hydra.train", *args, f"hydra.run.dir={interrupted}", timeout=120)
    assert proc.returncode == 1
    ckpt = interrupted / "checkpoints" / "last.ckpt"
    # the whole command that continues it, its own overrides included: `ckpt_path=` alone started a new run
    # dir with seed 0 (or was refused as another algo=)
    assert proc.stderr.strip().splitlines() == [
        f"error: run dir {interrupted} holds an unfinished run (checkpoints/last.ckpt); continue it with "
        f"python -m vla_hydra.train seed=3 trainer.max_steps=50 ckpt_path={ckpt} hydra.run.dir={interrupted}, "
        "or choose another hydra.run.dir"
    ]
    assert [p.name for p in (interrupted / ".hydra").iterdir()] == ["overrides.yaml"]
    # a local sweep into the sweep dir holding an interrupted job: refused before Hydra replaced that job's
    # .hydra/ config and the sweep's multirun.yaml (only the job itself was refused); not under cluster=slurm,
    # whose jobs continue the last.ckpt they find (cluster.auto_resume)
    from vla_hydra.cli.run_dirs import refuse_finished_run_dir_early

    sweep = tmp_path / "sweep"
    shutil.copytree(interrupted / "checkpoints", sweep / "1" / "checkpoints")
    with pytest.raises(SystemExit):
        refuse_finished_run_dir_early(["-m", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert capsys.readouterr().err.splitlines() == [
        f"error: hydra.sweep.dir={sweep}: holds runs ({sweep / '1'}); a sweep writes its own job dirs: choose "
        f"a new dir (continue one of its runs alone with python -m vla_hydra.train "
        f"ckpt_path={sweep / '1' / 'checkpoints' / 'last.ckpt'} hydra.run.dir={sweep / '1'})"
    ]
    refuse_finished_run_dir_early(["-m", "cluster=slurm", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    again = run_module(
        "vla_hydra.train",
        *args[1:],
        "trainer.max_steps=80",
        f"hydra.run.dir={interrupted}",
        f"ckpt_path={ckpt}",
    )
    assert again.returncode == 0, again.stderr


def test_a_refused_continuation_leaves_the_run_dir_as_it_was(tmp_path, data_dir, capsys):
    """A continuation into a run's own dir (ckpt_path= + hydra.run.dir=) that was refused (another algo's
    checkpoint, a typo, the run still going) replaced the run's .hydra/ config with the refused command's
    and appended to its train.log: the report then named the refused command as the run's."""
    import shutil

    from tests.conftest import run_module
    from vla_hydra.cli.run_dirs import refuse_finished_run_dir_early
    from vla_hydra.cluster.resume import lock_run_dir

    run = tmp_path / "run"
    args = [
        "eval.episodes=2",
        "callbacks.policy_eval=null",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
    ]
    first = run_module("vla_hydra.train", "trainer.max_steps=50", *args, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"

    def snapshot() -> dict:
        return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    before = snapshot()
    assert (run / "train.log").stat().st_size > 0
    refusals = {
        ("algo=td3bc",): "a checkpoint of algo=bc, not algo=td3bc",
        ("algo.lrr=1",): "algo (vla_hydra.algos.bc.BC) has no option 'lrr'",
    }
    for extra, message in refusals.items():
        proc = run_module("vla_hydra.train", "trainer.max_steps=100", *extra, f"ckpt_path={ckpt}", *args)
        assert proc.returncode == 1 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
        assert snapshot() == before, extra
    held = lock_run_dir(run)  # as the run would while still going
    try:
        proc = run_module("vla_hydra.train", "trainer.max_steps=100", f"ckpt_path={ckpt}", *args)
    finally:
        held.close()
    assert proc.returncode == 1 and "is in use by another running process" in proc.stderr
    assert snapshot() == before
    # another run's checkpoint continued into this run's dir, or a sweep (-m, experiment=eval) into the
    # sweep dir that holds it, replaced this run's results.json and config: refused before Hydra writes
    other = tmp_path / "other" / "last.ckpt"
    other.parent.mkdir()
    shutil.copy(ckpt, other)
    for argv, line in [
        (
            [f"ckpt_path={other}", f"hydra.run.dir={run}"],
            f"error: ckpt_path={other}: run dir {run} holds another run (results.json, checkpoints/last.ckpt), "
            f"which this continuation would replace; choose another hydra.run.dir (or continue that run with "
            f"python -m vla_hydra.train trainer.max_steps=50 eval.episodes=2 callbacks.policy_eval=null "
            f"paths.data_dir={data_dir} ckpt_path={ckpt} hydra.run.dir={run} and a larger trainer.max_steps "
            "(online algos: algo.total_timesteps))",
        ),
        (
            ["-m", f"ckpt_path={other}", f"hydra.sweep.dir={tmp_path}"],
            f"error: hydra.sweep.dir={tmp_path}: holds runs ({run}); a sweep writes its own job dirs: choose a "
            f"new dir (continue one of its runs alone with python -m vla_hydra.train trainer.max_steps=50 "
            f"eval.episodes=2 callbacks.policy_eval=null paths.data_dir={data_dir} ckpt_path={ckpt} "
            f"hydra.run.dir={run})",
        ),
    ]:
        with pytest.raises(SystemExit):
            refuse_finished_run_dir_early(argv)
        assert capsys.readouterr().err.splitlines() == [line]
    with pytest.raises(CheckpointError, match="holds another run"):  # train() from Python, too
        resume_checkpoint(OmegaConf.create({"ckpt_path": str(other)}), run)
    assert snapshot() == before

    # an accepted continuation keeps the first leg's config as .hydra/earlier/1/
    again = run_module("vla_hydra.train", "trainer.max_steps=80", f"ckpt_path={ckpt}", *args, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in (run / ".hydra" / "earlier").iterdir()) == ["1"]
    assert "trainer.max_steps=50" in (run / ".hydra" / "earlier" / "1" / "overrides.yaml").read_text()
    assert "trainer.max_steps=80" in (run / ".hydra" / "overrides.yaml").read_text()


def test_a_moved_run_continued_with_nothing_left_to_train_still_names_its_checkpoint(tmp_path, data_dir):
    """A run dir copied elsewhere (e.g. from the cluster) and continued there with trainer.max_steps at
    the checkpoint's step evaluates that checkpoint, but its results.json said "checkpoint": null:
    Lightning saved nothing, and restores the last checkpoint's name only for the dir it was saved in."""
    import shutil

    _, first = train(small_train_config(tmp_path / "cluster", data_dir, ["trainer.max_steps=50"]))
    shutil.copytree(tmp_path / "cluster" / "run", tmp_path / "laptop" / "run")
    moved_ckpt = tmp_path / "laptop" / "run" / "checkpoints" / "last.ckpt"
    continued = ["trainer.max_steps=50", f"ckpt_path={moved_ckpt}"]
    _, again = train(small_train_config(tmp_path / "laptop", data_dir, continued))
    assert again["train_steps"] == 50 and again["checkpoint"] == str(moved_ckpt)
