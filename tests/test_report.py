"""report.py: a real 3-seed sweep reported by the CLI, grouping/aggregation on hand-written runs, command-line
reconstruction, and bad inputs as a user meets them on the command line."""

from __future__ import annotations

import csv
import json
import math
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_module
from vla_hydra.report import (
    RETURN_KEY,
    Curve,
    find_runs,
    group_runs,
    learning_curves,
    plot_learning_curves,
    sweep_commands,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_cli_on_a_real_three_seed_sweep(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    overrides = [
        "algo=bc",
        "seed=0,1,2",
        "trainer.max_steps=300",
        "eval.every_n_updates=100",
        "eval.episodes=2",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
    ]
    proc = run_module("vla_hydra.train", "-m", *overrides, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(3)]
    scores = np.array([r["normalized_score"] for r in results])
    returns = np.array([r["eval_return_mean"] for r in results])
    assert scores.std() > 0  # the seeds really differ, so a wrong std cannot pass by accident
    score_cell = f"{scores.mean():.1f} ± {scores.std(ddof=1):.1f}"
    return_cell = f"{returns.mean():.1f} ± {returns.std(ddof=1):.1f}"

    proc = run_module("vla_hydra.report", str(sweep))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("pendulum-mixed-v0")]
    assert len(rows) == 1 and score_cell in rows[0] and return_cell in rows[0] and " 0,1,2 " in rows[0]
    # a reader that stops early (`| head`, here one that reads nothing): no traceback, SIGPIPE's exit status
    piped = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m vla_hydra.report "{sweep}" | true; echo "${{PIPESTATUS[0]}}"'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert piped.stdout.strip() == "141" and "Traceback" not in piped.stderr, piped.stderr

    md = (sweep / "report.md").read_text()
    assert f"| pendulum-mixed-v0 | bc | 3 | 0,1,2 | {score_cell} | {return_cell} | 300 |" in md
    assert "sample standard deviation (ddof=1)" in md and f"`{sweep.resolve()}`" in md
    command = "python -m vla_hydra.train -m " + " ".join(map(shlex.quote, overrides))
    assert command in md

    with open(sweep / "report.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["dataset"], row["algo"], row["n_runs"], row["seeds"]) == (
        "pendulum-mixed-v0",
        "bc",
        "3",
        "0 1 2",
    )
    assert float(row["normalized_score_mean"]) == pytest.approx(scores.mean(), rel=1e-12)
    assert float(row["normalized_score_std"]) == pytest.approx(scores.std(ddof=1), rel=1e-12)
    assert float(row["eval_return_std"]) == pytest.approx(returns.std(ddof=1), rel=1e-12)
    assert float(row["train_steps_mean"]) == 300 and row["commands"] == command

    png = (sweep / "learning_curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000

    # the plotted curve is the per-step mean/std over seeds of each run's eval history
    curves, _ = learning_curves(group_runs(find_runs([sweep])[0]))
    key, (curve,) = curves["pendulum-mixed-v0"]
    assert key == "eval/normalized_score" and curve.steps == [0, 100, 200, 300] and curve.n == 3
    at_200 = np.array([next(e[key] for e in r["eval_history"] if e["step"] == 200) for r in results])
    assert curve.mean[2] == pytest.approx(at_200.mean()) and curve.std[2] == pytest.approx(at_200.std(ddof=1))


def _write_run(
    run_dir: Path,
    algo,
    dataset,
    seed,
    ret,
    score="absent",
    history=(),
    overrides=None,
    steps=100,
    wall=1.0,
    all_legs="absent",
):
    run_dir.mkdir(parents=True)
    results = {
        "algo": algo,
        "dataset": dataset,
        "env": "Pendulum-v1",
        "seed": seed,
        "train_steps": steps,
        "wall_seconds": wall,
        "eval_return_mean": ret,
        "eval_history": list(history),
        "run_dir": str(run_dir),
    }
    if score != "absent":
        results["normalized_score"] = score
    if all_legs != "absent":
        results["wall_seconds_all_legs"] = all_legs
    (run_dir / "results.json").write_text(json.dumps(results))
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def _hist(*points):
    return [
        {"step": s, "eval/return_mean": r, "eval/return_std": 0.0, "eval/normalized_score": n}
        for s, r, n in points
    ]


def test_grouping_and_aggregation_on_hand_written_runs(tmp_path):
    a, b = tmp_path / "sweep_a", tmp_path / "sweep_b"
    # alpha/x: scores 80, 90, 100 -> mean 90, sample std sqrt((10² + 0² + 10²) / 2) = 10
    #          returns -300, -200, -100 -> mean -200, std 100; wall 1, 2, 3 -> mean 2
    for seed, (ret, score) in enumerate([(-300, 80), (-200, 90), (-100, 100)]):
        extra = [(200, -50, 110)] if seed == 0 else []  # only one run evaluated step 200: not on the curve
        history = _hist((0, -900, seed * 10), (100, ret, score), *extra)
        overrides = ["algo=x", f"seed={seed}", "data=alpha"]
        _write_run(a / str(seed), "x", "alpha", seed, ret, score, history, overrides, wall=seed + 1.0)
    # alpha/y at lr 1e-3: scores 60, 66 -> mean 63, std sqrt((3² + 3²) / 1) = 4.243; returns -400, -380 ->
    # -390 ± 14.14. A third run at lr 3e-3 is another configuration: a row of its own, not in that mean
    _write_run(a / "3", "y", "alpha", 0, -400, 60, overrides=["algo=y", "seed=0", "algo.lr=1e-3"], steps=100)
    _write_run(a / "4", "y", "alpha", 1, -380, 66, overrides=["algo=y", "seed=1", "algo.lr=1e-3"], steps=200)
    _write_run(a / "7", "y", "alpha", 0, -300, 70, overrides=["algo=y", "seed=0", "algo.lr=3e-3"], steps=100)
    (a / "5" / ".hydra").mkdir(parents=True)  # a training job that never wrote results.json
    (a / "5" / "train.log").write_text("")
    (a / "6" / ".hydra").mkdir(parents=True)  # not a training job (e.g. a vla_hydra.eval run): not listed
    (a / "6" / "eval.log").write_text("")
    # beta/x: no normalized score (null); returns -10, -14 -> mean -12, std sqrt((2² + 2²) / 1) = 2.828
    beta_hist = [{"step": 0, "eval/return_mean": -20.0}, {"step": 50, "eval/return_mean": -11.0}]
    # wall: a run continued from a checkpoint counts all its legs (5 s); null (unknown) -> its last leg's
    _write_run(b / "deep" / "0", "x", "beta", 0, -10, None, beta_hist, all_legs=5.0)
    _write_run(b / "deep" / "1", "x", "beta", 1, -14, None, beta_hist, all_legs=None)
    # beta/y: one run, no normalized_score key at all -> return only, no std
    _write_run(b / "deep" / "2", "y", "beta", 7, -5)

    report = write_report([a, b, a], out=tmp_path / "out")  # a given twice: its runs count once
    by_key = {(g.dataset, g.algo): g for g in report.groups}
    assert list(by_key) == [
        ("alpha", "x"),
        ("alpha", "y [algo.lr=1e-3]"),
        ("alpha", "y [algo.lr=3e-3]"),
        ("beta", "x"),
        ("beta", "y"),
    ]
    ax, ay, ay_other, bx, by = by_key.values()
    assert ay_other.seeds == [0] and ay_other.score == (70.0, None)
    assert (
        ax.seeds == [0, 1, 2]
        and ax.score == pytest.approx((90.0, 10.0))
        and ax.return_ == pytest.approx((-200, 100))
    )
    assert ax.wall_seconds_mean == 2.0 and ax.train_steps_mean == 100
    assert ay.score == pytest.approx((63.0, math.sqrt(18))) and ay.return_ == pytest.approx(
        (-390, math.sqrt(200))
    )
    assert ay.train_steps_mean == 150
    assert bx.score is None and bx.return_ == pytest.approx((-12.0, math.sqrt(8)))
    assert bx.wall_seconds_mean == 3.0
    assert by.score is None and by.return_ == (-5.0, None) and by.seeds == [7]

    md = report.files["report.md"].read_text()
    assert "| alpha | x | 3 | 0,1,2 | 90.0 ± 10.0 | -200.0 ± 100.0 | 100 | — | 2.0 |" in md
    assert "| alpha | y [algo.lr=1e-3] | 2 | 0,1 | 63.0 ± 4.2 | -390.0 ± 14.1 | 150 |" in md
    assert "| alpha | y [algo.lr=3e-3] | 1 | 0 | 70.0 | -300.0 | 100 |" in md
    assert "| beta | x | 2 | 0,1 | — | -12.0 ± 2.8 | 100 |" in md
    assert "| beta | y | 1 | 7 | — | -5.0 | 100 |" in md
    assert "Seeds found: 0, 1, 2, 7." in md
    assert "over all legs of a run continued from a checkpoint (`wall_seconds_all_legs`" in md
    assert "python -m vla_hydra.train -m algo=x seed=0,1,2 data=alpha\n" in md
    assert "python -m vla_hydra.train -m algo=y seed=0,1 algo.lr=1e-3\n" in md
    assert "python -m vla_hydra.train algo=y seed=0 algo.lr=3e-3\n" in md
    assert f"skipped {(a / '5').resolve()}: no results.json" in md and f"{(a / '6').resolve()}" not in md
    assert "(no .hydra/overrides.yaml in its run dirs)" in md  # beta groups
    assert report.table.splitlines()[2].split() == [
        "alpha",
        "x",
        "3",
        "0,1,2",
        "90.0",
        "±",
        "10.0",
        "-200.0",
        "±",
        "100.0",
        "100",
        "—",
        "2.0",
    ]

    with open(report.files["report.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["algo"], r["n_runs"]) for r in rows] == [
        ("alpha", "x", "3"),
        ("alpha", "y [algo.lr=1e-3]", "2"),
        ("alpha", "y [algo.lr=3e-3]", "1"),
        ("beta", "x", "2"),
        ("beta", "y", "1"),
    ]
    assert float(rows[1]["normalized_score_std"]) == pytest.approx(math.sqrt(18))
    assert rows[3]["normalized_score_mean"] == "" and rows[4]["eval_return_std"] == ""

    curves, _ = learning_curves(report.groups)
    key, (cx,) = curves["alpha"]  # alpha/y wrote no eval history: no curve
    # alpha/x: step 0 scores 0, 10, 20 -> 10 ± 10; step 100 scores 80, 90, 100 -> 90 ± 10; step 200 dropped
    assert (
        key == "eval/normalized_score" and cx.steps == [0, 100] and cx.mean == [10, 90] and cx.std == [10, 10]
    )
    key, (bcurve,) = curves["beta"]  # beta/y has no history: no curve; no scores: the return is plotted
    # the final evaluations (-10, -14 at train step 100) end the curve at the step the table reports
    assert key == "eval/return_mean" and bcurve.steps == [0, 50, 100] and bcurve.mean == [-20, -11, -12]
    assert bcurve.std == [0, 0, pytest.approx(math.sqrt(8))]
    assert "alpha / y [algo.lr=1e-3]: no eval_history in its runs, no learning curve" in report.notes
    assert "beta / y: no eval_history in its runs, no learning curve" in report.notes
    png = report.files["learning_curves.png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_mixed_configurations_are_found_in_the_composed_configs_not_the_override_strings(tmp_path):
    """Typing the default out (`data=alpha`) is the same experiment; a default changed in a yaml between
    runs is not, though no override shows it."""
    config = "seed: {seed}\npaths:\n  output_dir: /runs/{seed}\nalgo:\n  lr: {lr}\n  hidden: [64, 64]\n"
    runs = [("0", ["seed=0"], "0.001"), ("1", ["seed=1", "data=alpha"], "0.001"), ("2", ["seed=2"], "0.0003")]
    for name, overrides, lr in runs:
        history = _hist((0, -900, 10), (100, -100, 50)) if name == "0" else []
        _write_run(tmp_path / name, "x", "alpha", int(name), -100.0, 50.0, history, overrides=overrides)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(config.format(seed=name, lr=lr))
    same = write_report([tmp_path / "0", tmp_path / "1"], out=tmp_path / "same")
    assert [(g.algo, g.seeds) for g in same.groups] == [("x", [0, 1])]
    mixed = write_report([tmp_path], out=tmp_path / "mixed")
    # a default changed in the yaml (lr) is another configuration: one row each, named by the setting
    assert [(g.algo, g.seeds) for g in mixed.groups] == [
        ("x [algo.lr=0.0003]", [2]),
        ("x [algo.lr=0.001]", [0, 1]),
    ]
    # only run 0 has an eval history: its curve is not the table's 2 runs, and the report says so
    assert (
        "alpha / x [algo.lr=0.001]: learning curve over 1 of its 2 runs (the others have no eval_history)"
        in (mixed.notes)
    )


def test_where_a_run_was_launched_and_newer_config_keys_do_not_make_it_another_experiment(tmp_path):
    local = "seed: {seed}\ntrainer:\n  devices: 1\nalgo:\n  lr: 0.001\ncluster:\n  auto_resume: false\n"
    slurm = (
        "seed: {seed}\ntrainer:\n  devices: ${{cluster.tasks_per_node}}\n  plugins: [x]\nalgo:\n  lr: 0.001\n"
        "cluster:\n  auto_resume: true\n  wait: true\ncallbacks:\n  preemption: {{a: 1}}\ndata:\n  cut: error\n"
    )
    for seed, (config, overrides) in enumerate([(local, ["seed=0"]), (slurm, ["seed=1", "cluster=slurm"])]):
        _write_run(tmp_path / str(seed), "x", "alpha", seed, -100.0, 50.0, overrides=overrides)
        (tmp_path / str(seed) / ".hydra" / "config.yaml").write_text(config.format(seed=seed))
    assert [g.algo for g in write_report([tmp_path], out=tmp_path / "r1").groups] == ["x"]
    # a key only one run has, set on its command line, is a real difference
    _write_run(tmp_path / "2", "x", "alpha", 2, -100.0, 50.0, overrides=["seed=2", "+algo.extra=3"])
    extra = local.replace("  lr: 0.001\n", "  lr: 0.001\n  extra: 3\n")
    (tmp_path / "2" / ".hydra" / "config.yaml").write_text(extra.format(seed=2))
    groups = write_report([tmp_path], out=tmp_path / "r2").groups
    assert [(g.algo, g.seeds) for g in groups] == [
        ("x [algo.extra=(unset)]", [0, 1]),
        ("x [algo.extra=3]", [2]),
    ]


def test_how_a_run_was_watched_does_not_make_it_another_experiment(tmp_path):
    """Its eval interval, loggers, tags or videos: a run continued with another eval interval (or one with
    logger=tensorboard) used to get a row of its own beside its seeds."""
    base = "seed: {seed}\nalgo:\n  lr: 0.001\neval:\n  episodes: 20\n  every_n_updates: {every}\n  video: {video}\n"
    watched = "logger:\n  {logger}: {{save_dir: x}}\ntags: [{tag}]\ntrainer:\n  log_every_n_steps: {log}\n"
    for seed, (every, video, logger, tag, log) in enumerate(
        [(1000, "false", "csv", "dev", 1), (250, "true", "tensorboard", "paper", 10)]
    ):
        _write_run(tmp_path / str(seed), "x", "alpha", seed, -100.0, 50.0, overrides=[f"seed={seed}"])
        config = (base + watched).format(seed=seed, every=every, video=video, logger=logger, tag=tag, log=log)
        (tmp_path / str(seed) / ".hydra" / "config.yaml").write_text(config)
    assert [(g.algo, g.seeds) for g in write_report([tmp_path], out=tmp_path / "r1").groups] == [
        ("x", [0, 1])
    ]
    # the final evaluation's episodes are part of the score: still two rows
    _write_run(tmp_path / "2", "x", "alpha", 2, -100.0, 50.0, overrides=["seed=2", "eval.episodes=50"])
    config = (base + watched).format(seed=2, every=1000, video="false", logger="csv", tag="dev", log=1)
    (tmp_path / "2" / ".hydra" / "config.yaml").write_text(config.replace("episodes: 20", "episodes: 50"))
    groups = write_report([tmp_path], out=tmp_path / "r2").groups
    assert [(g.algo, g.seeds) for g in groups] == [
        ("x [eval.episodes=20]", [0, 1]),
        ("x [eval.episodes=50]", [2]),
    ]


def test_rows_of_numeric_settings_follow_their_values(tmp_path):
    """Sorted as text, `[256, 256]` came before `[64, 64]` and lr 0.001 before 0.0003."""
    runs = [("[256, 256]", 0.001), ("[64, 64]", 0.001), ("[64, 64]", 0.0003), ("[1024, 1024]", 0.0003)]
    for seed, (hidden, lr) in enumerate(runs):
        overrides = [f"seed={seed}", f"model.hidden_dims={hidden}", f"algo.lr={lr}"]
        _write_run(tmp_path / str(seed), "x", "alpha", seed, -100.0, 50.0, overrides=overrides)
        config = f"seed: {seed}\nalgo:\n  lr: {lr}\nmodel:\n  hidden_dims: {hidden}\n"
        (tmp_path / str(seed) / ".hydra" / "config.yaml").write_text(config)
    labels = [g.algo for g in write_report([tmp_path], out=tmp_path / "r").groups]
    assert labels == [
        "x [algo.lr=0.0003, model.hidden_dims=[64, 64]]",
        "x [algo.lr=0.0003, model.hidden_dims=[1024, 1024]]",
        "x [algo.lr=0.001, model.hidden_dims=[64, 64]]",
        "x [algo.lr=0.001, model.hidden_dims=[256, 256]]",
    ], labels


# what .hydra/config.yaml holds for a `algo=dt` training run and for an `eval_only=true ckpt_path=...` run
# (its own composition: the default algo=bc and model=mlp, which the checkpoint's config replaces)
_DT_CONFIG = """seed: {seed}
eval_only: false
algo:
  _target_: vla_hydra.algos.dt.DecisionTransformer
  lr: {lr}
model:
  _target_: vla_hydra.models.transformer.DecisionTransformerNet
trainer:
  max_steps: 300
"""
_EVAL_CONFIG = """seed: 0
eval_only: true
ckpt_path: {ckpt}
algo:
  _target_: vla_hydra.algos.bc.BC
  lr: 0.001
model:
  _target_: vla_hydra.models.actors.DeterministicActor
trainer:
  max_steps: ${{oc.select:algo.max_updates,10000}}
"""


def _write_config(run_dir: Path, text: str) -> None:
    (run_dir / ".hydra" / "config.yaml").write_text(text)


def _dt_runs_and_their_re_evaluations(root: Path) -> None:
    """Two DT runs (lr 1e-4 and 3e-4), and each checkpoint re-evaluated by `eval_only=true ckpt_path=`."""
    for seed, lr in enumerate(["0.0001", "0.0003"]):
        run_dir = root / "train" / str(seed)
        overrides = ["algo=dt", f"seed={seed}", f"algo.lr={lr}", "trainer.max_steps=300"]
        _write_run(run_dir, "dt", "pendulum-mixed-v0", seed, -300.0, 70.0, overrides=overrides, steps=300)
        _write_config(run_dir, _DT_CONFIG.format(seed=seed, lr=lr))
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        eval_dir = root / "eval" / str(seed)
        # train.py's eval_only results: the checkpoint's algo, dataset and seed, and the checkpoint
        _write_run(
            eval_dir,
            "dt",
            "pendulum-mixed-v0",
            seed,
            -310.0,
            69.0,
            overrides=["eval_only=true", f"ckpt_path={ckpt}"],
        )
        results = json.loads((eval_dir / "results.json").read_text())
        (eval_dir / "results.json").write_text(
            json.dumps({**results, "eval_only": True, "checkpoint": str(ckpt)})
        )
        _write_config(eval_dir, _EVAL_CONFIG.format(ckpt=ckpt))


def test_a_run_continued_in_its_own_dir_is_rerun_without_its_checkpoint(tmp_path):
    """A continued run's overrides.yaml is its last leg's (`... ckpt_path=<its dir>/checkpoints/last.ckpt`):
    rebuilt as is, the group's command continued the finished checkpoint instead of rerunning the sweep."""
    for seed in (0, 1):
        run_dir = tmp_path / "sweep" / str(seed)
        resumed = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"] if seed == 0 else []
        _write_run(run_dir, "bc", "alpha", seed, -100.0, overrides=["algo=bc", f"seed={seed}", *resumed])
    (group,) = write_report([tmp_path / "sweep"], out=tmp_path / "out").groups
    assert group.commands == ["python -m vla_hydra.train -m algo=bc seed=0,1"]


def test_a_re_evaluated_checkpoint_is_labelled_with_its_training_settings(tmp_path):
    """A report on `eval_only=true` runs used to compare the eval command's own config (algo=bc's
    _target_, trainer.max_steps=${...}): labels of ~450 characters, and checkpoints trained with
    different settings in one mean."""
    _dt_runs_and_their_re_evaluations(tmp_path)
    evals = write_report([tmp_path / "eval"], out=tmp_path / "r1")
    assert [(g.algo, g.seeds) for g in evals.groups] == [
        ("dt [algo.lr=0.0001]", [0]),
        ("dt [algo.lr=0.0003]", [1]),
    ]
    # the eval runs next to the training runs: the same two configurations, whatever command ran them, but
    # a re-evaluated checkpoint is not a second run of its seed (they were one mean: n=2, seeds 0,0)
    both = write_report([tmp_path], out=tmp_path / "r2")
    assert [(g.algo, g.seeds) for g in both.groups] == [
        ("dt [algo.lr=0.0001, eval_only=false]", [0]),
        ("dt [algo.lr=0.0003, eval_only=false]", [1]),
        ("dt [algo.lr=0.0001, eval_only=true]", [0]),
        ("dt [algo.lr=0.0003, eval_only=true]", [1]),
    ]
    # rerunning a re-evaluation's group reruns that re-evaluation
    assert all("eval_only=true" in c for c in both.groups[2].commands)
    # its wall time is the evaluation's, not the training's its train steps suggest
    assert "a re-evaluation's (`eval_only`: the checkpoint's train steps) is its evaluation's alone" in (
        both.files["report.md"].read_text()
    )

    # a checkpoint whose training run dir is gone: no settings to compare, so no split by its eval config
    shutil.rmtree(tmp_path / "train")
    assert [g.algo for g in write_report([tmp_path / "eval"], out=tmp_path / "r3").groups] == ["dt"]


def test_a_checkpoint_exported_into_an_evaluation_dir_is_labelled_with_its_training_settings(tmp_path):
    """`vla_hydra.eval ... export=<its run dir>/policy.ckpt`: re-evaluations of that file and of the
    checkpoint it was exported from used to be two rows, the export's labelled with the vla_hydra.eval
    command's config (task_name=eval, episodes, ...) as if that had trained it."""
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    _write_run(
        train_dir, "dt", "pendulum-mixed-v0", 0, -300.0, 70.0, overrides=["algo=dt", "eval.episodes=2"]
    )
    _write_config(
        train_dir, "task_name: train\n" + _DT_CONFIG.format(seed=0, lr="0.0001") + "eval:\n  episodes: 2\n"
    )
    ckpt, export = train_dir / "checkpoints" / "last.ckpt", eval_dir / "policy.ckpt"
    # vla_hydra.eval's run dir: its own config, eval_results.json and the exported policy
    (eval_dir / ".hydra").mkdir(parents=True)
    (eval_dir / ".hydra" / "overrides.yaml").write_text(f"- ckpt_path={ckpt}\n- export={export}\n")
    _write_config(
        eval_dir, f"task_name: eval\nckpt_path: {ckpt}\nepisodes: 20\nseed: 100000\nexport: {export}\n"
    )
    (eval_dir / "eval_results.json").write_text("{}")
    for job, evaluated in enumerate([ckpt, export]):  # experiment=eval ckpt_path=<ckpt>,<export>
        job_dir = tmp_path / "evals" / str(job)
        _write_run(job_dir, "dt", "pendulum-mixed-v0", 0, -310.0, 69.0, overrides=[f"ckpt_path={evaluated}"])
        results = json.loads((job_dir / "results.json").read_text())
        (job_dir / "results.json").write_text(
            json.dumps({**results, "eval_only": True, "checkpoint": str(evaluated)})
        )
        _write_config(job_dir, _EVAL_CONFIG.format(ckpt=evaluated))
    groups = write_report([tmp_path / "evals"], out=tmp_path / "r").groups
    assert [(g.algo, len(g.runs)) for g in groups] == [("dt", 2)]


def test_labels_are_short_and_never_show_interpolations(tmp_path):
    long_path = "/data/" + "very-long-directory-name/" * 6 + "hopper-medium-v2.hdf5"
    configs = [
        (
            "0",
            "${cluster.tasks_per_node}",  # resolves to nothing here (an interpolation that resolves: below)
            "vla_hydra.models.actors.DeterministicActor",
            "/d/a.hdf5",
        ),
        ("1", "300", "vla_hydra.models.transformer.DecisionTransformerNet", long_path),
        ("2", "500", "vla_hydra.models.actors.DeterministicActor", "/d/a.hdf5"),
    ]
    for seed, steps, model, path in configs:
        run_dir = tmp_path / seed
        _write_run(
            run_dir, "x", "alpha", int(seed), -100.0, 50.0, overrides=[f"seed={seed}", f"data.path={path}"]
        )
        config = f"seed: {seed}\ndata:\n  path: {path}\nmodel:\n  _target_: {model}\ntrainer:\n  max_steps: '{steps}'\n"
        _write_config(run_dir, config)
    labels = [g.algo for g in write_report([tmp_path], out=tmp_path / "out").groups]
    assert all("${" not in label and len(label) <= 70 for label in labels), labels
    # only the settings that tell the rows apart, the one typed on the command line first (model._target_
    # differs too: the ellipsis); a long value is cut in the middle
    assert labels == [
        "x [data.path=/d/a.hdf5, trainer.max_steps=(interpolated), …]",
        "x [data.path=/d/a.hdf5, trainer.max_steps=500, …]",
        "x [data.path=/data/very-…dium-v2.hdf5, trainer.max_steps=300, …]",
    ]


def test_long_labels_in_many_subplots_draw_without_a_matplotlib_warning(tmp_path):
    """Legends of long labels spilled over the neighbouring subplots and matplotlib printed
    `UserWarning: constrained_layout not applied` on stderr."""
    for d, dataset in enumerate(["alpha", "beta", "gamma", "delta"]):
        for i in range(6 if d % 2 == 0 else 1):
            run_dir = tmp_path / dataset / str(i)
            history = _hist((0, -900, 10), (100, -100 + i, 50 + i))
            _write_run(run_dir, "dt", dataset, 0, -100.0, 50.0, history, overrides=[f"algo.lr={i}e-4"])
            _write_config(run_dir, _DT_CONFIG.format(seed=0, lr=f"{i}e-4-{'x' * 400}"))
    proc = run_module("vla_hydra.report", str(tmp_path))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    png = (tmp_path / "learning_curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    # a legend of many labels of the longest kind: below its subplot, in a figure made tall enough
    label = "dt [data.path=/data/very-…dium-v2.hdf5, trainer.max_steps=300, …]"
    many = [Curve(f"{label} {i}", [0, 100], [i, i + 1], None, 1) for i in range(20)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_learning_curves(
            {"alpha": (RETURN_KEY, many), "beta": (RETURN_KEY, many[:1])}, tmp_path / "p.png"
        )
    assert [str(w.message) for w in caught] == []


def test_online_runs_are_grouped_by_their_env(tmp_path):
    for seed, ret in enumerate([-200.0, -180.0]):
        _write_run(tmp_path / str(seed), "sac", "online", seed, ret)
        path = tmp_path / str(seed) / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "env_steps": 20000}))
    _write_run(tmp_path / "2", "bc", "pendulum-expert-v0", 0, -300.0)  # offline: keeps its dataset
    # online and with a dataset (GAIL's expert data): next to the offline runs on that dataset
    _write_run(tmp_path / "3", "gail", "pendulum-expert-v0", 0, -190.0)
    path = tmp_path / "3" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "env_steps": 50000}))
    report = write_report([tmp_path], out=tmp_path / "out")
    assert [(g.dataset, g.algo, len(g.runs)) for g in report.groups] == [
        ("Pendulum-v1 (online)", "sac", 2),
        ("pendulum-expert-v0", "bc", 1),
        ("pendulum-expert-v0", "gail", 1),
    ]
    # their env steps, the online budget's unit, in the table (none for the offline run)
    assert [g.env_steps_mean for g in report.groups] == [20000, None, 50000]
    assert (
        "| Pendulum-v1 (online) | sac | 2 | 0,1 |" in report.table.replace("  ", " ")
        or "20000" in report.table
    )
    with open(tmp_path / "out" / "report.csv") as f:
        assert [row["env_steps_mean"] for row in csv.DictReader(f)] == ["20000.0", "", "50000.0"]


def test_the_curve_ends_on_the_table_s_final_evaluation(tmp_path):
    """A periodic evaluation at the last update (10 episodes) ended the curve while the table showed the
    final evaluation (20 episodes) of the same step: curve 84.1 vs table 71.6 for one BC run."""
    history = _hist((0, -1200, 0), (50, -700, 50), (100, -500, 70))  # the periodic ones, step 100 included
    _write_run(tmp_path / "0", "bc", "alpha", 0, -400.0, 80.0, history, steps=100)
    _write_run(
        tmp_path / "1", "bc", "alpha", 1, -300.0, 90.0, _hist((0, -1100, 0), (50, -600, 60)), steps=100
    )
    curves, _ = learning_curves(write_report([tmp_path], out=tmp_path / "out").groups)
    (_, (bc,)) = curves["alpha"]
    # normalized scores, the last one the final evaluations' (80 + 90) / 2, not the periodic 70's
    assert bc.steps == [0, 50, 100] and bc.mean == [0.0, 55.0, 85.0]


def test_online_learning_curves_are_drawn_over_env_steps(tmp_path):
    """experiment=online_rl's report drew SAC (1500 updates), PPO (960) and GRPO (160) after the same
    6000 env steps at three different x positions, over 'gradient updates'."""
    for algo, updates in (("sac", 1500), ("grpo", 160)):
        history = [
            {**e, "env_steps": env}
            for e, env in zip(_hist((0, -1300, 0), (updates // 2, -900, 0)), (0, 3000), strict=True)
        ]
        _write_run(tmp_path / algo, algo, "online", 0, -400.0, history=history, steps=updates)
        path = tmp_path / algo / "results.json"
        path.write_text(
            json.dumps({**json.loads(path.read_text()), "env_steps": 6000, "normalized_score": None})
        )
    report = write_report([tmp_path])
    curves, _ = learning_curves(report.groups)
    _, (grpo, sac) = curves["Pendulum-v1 (online)"]
    # the final evaluation ends each curve at the run's env steps, not at its gradient updates
    assert grpo.steps == sac.steps == [0, 3000, 6000] and grpo.x == sac.x == "env_steps"
    assert sac.mean == [-1300, -900, -400]
    # GRPO's seeds evaluate at the same updates after different env steps (episode lengths): matched by
    # update, placed at their mean env steps
    history = [
        {**e, "env_steps": env} for e, env in zip(_hist((0, -1300, 0), (80, -700, 0)), (0, 3400), strict=True)
    ]
    _write_run(tmp_path / "grpo1", "grpo", "online", 1, -600.0, history=history, steps=160)
    path = tmp_path / "grpo1" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "env_steps": 6400, "normalized_score": None}))
    curves, _ = learning_curves(write_report([tmp_path]).groups)
    _, (grpo, _) = curves["Pendulum-v1 (online)"]
    assert grpo.steps == [0, 3200, 6200] and grpo.mean == [-1300, -800, -500] and grpo.n == 2
    # offline runs keep gradient updates
    _write_run(tmp_path / "off", "bc", "pendulum-mixed-v0", 0, -300.0, 80.0, _hist((0, -900, 10)), steps=100)
    curves, _ = learning_curves(write_report([tmp_path]).groups)
    assert curves["pendulum-mixed-v0"][1][0].x == "step" and curves["pendulum-mixed-v0"][1][0].steps == [
        0,
        100,
    ]


def test_sweep_commands_rebuild_a_grid_as_one_multirun_and_quote_for_the_shell():
    grid = [["a=1", "s=0"], ["a=1", "s=1"], ["a=2", "s=0"], ["a=2", "s=1"]]
    assert sweep_commands(grid) == ["python -m vla_hydra.train -m a=1,2 s=0,1"]
    # three of the four grid points: a -m sweep would run a fourth job, so one command per run
    assert sweep_commands(grid[:3]) == [f"python -m vla_hydra.train {' '.join(o)}" for o in grid[:3]]
    assert sweep_commands([["model.hidden_dims=[64,64]"]] * 2) == [
        "python -m vla_hydra.train 'model.hidden_dims=[64,64]'"
    ]
    lists = [["x=[1,2]", "seed=0"], ["x=[1,2]", "seed=1"]]
    assert sweep_commands(lists) == ["python -m vla_hydra.train -m 'x=[1,2]' seed=0,1"]


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing_dir", "error: sweep dir {d}: no such directory"),
        ("no_results", "error: sweep dir {d}: no results.json found in it or any subdirectory (expected run"),
        # jobs started but not ended (a cluster.wait=false sweep): their run dirs are not "expected" ones
        (
            "running",
            "error: sweep dir {d}: no results.json found in it or any subdirectory yet: its 1 run dir(s) have "
            "none (the jobs failed or are still running)",
        ),
        # submitted SLURM jobs not yet started: only their submitit logs
        (
            "queued",
            "error: sweep dir {d}: no results.json found in it or any subdirectory yet: its jobs have not "
            "started training (their logs: {d}/.submitit)",
        ),
        (
            "eval_results_only",
            "error: sweep dir {d}: no results.json found in it or any subdirectory (it holds "
            "vla_hydra.eval's eval_results.json; to table re-evaluations of several checkpoints, run",
        ),
        (
            "corrupt",
            "error: {d}/3/results.json: not valid JSON (Expecting ',' delimiter at line 1 column 15)",
        ),
        # cut short (a copy of a run dir while it was written): was "... starting at at line 1 ..."
        (
            "truncated",
            "error: {d}/3/results.json: not valid JSON (Unterminated string starting at line 1 column 10)",
        ),
        ("not_object", "error: {d}/3/results.json: expected a JSON object, got list"),
        ("missing_key", "error: {d}/3/results.json: missing key 'dataset'"),
        ("bad_type", "error: {d}/3/results.json [seed]: expected an integer, got 'zero'"),
    ],
)
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, case, expected):
    d = tmp_path / "sweep"
    if case != "missing_dir":
        (d / "0" / "csv").mkdir(parents=True)
    if case == "running":  # a training job's dir from its start: .hydra/ and train.log
        (d / "0" / ".hydra").mkdir()
        (d / "0" / "train.log").write_text("")
    if case == "queued":
        (d / ".submitit" / "1234").mkdir(parents=True)
    if case == "eval_results_only":  # `vla_hydra.eval -m ...` wrote its sweep
        (d / "0" / "eval_results.json").write_text('{"algo": "bc", "seed": 0, "train_seed": 0}')
    if case not in ("missing_dir", "no_results", "eval_results_only", "running", "queued"):
        _write_run(d / "1", "bc", "pendulum", 0, -100.0, 50.0)
        bad = d / "3" / "results.json"
        bad.parent.mkdir()
        bad.write_text(
            {
                "corrupt": '{"algo": "bc" "dataset": "p"}',
                "truncated": '{"algo": "b',
                "not_object": "[1, 2]",
                "missing_key": '{"algo": "bc"}',
                "bad_type": '{"algo": "bc", "dataset": "p", "seed": "zero"}',
            }[case]
        )
    proc = run_module("vla_hydra.report", str(d))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(d=d)), proc.stderr
    assert not (d / "report.md").exists() and not (d / "report.csv").exists()


def test_an_empty_sweep_dir_among_several_is_named_not_fatal(tmp_path):
    """`report logs/il/multiruns/*` with one aborted sweep among them used to stop the whole report."""
    _write_run(tmp_path / "good" / "0", "bc", "pendulum", 0, -100.0, 50.0)
    (tmp_path / "aborted").mkdir()
    report = write_report([tmp_path / "good", tmp_path / "aborted"], out=tmp_path / "out")
    assert [(g.algo, g.seeds) for g in report.groups] == [("bc", [0])]
    assert (
        f"skipped {(tmp_path / 'aborted').resolve()}: no results.json (the job failed or is still running)"
        in report.notes
    )


def test_an_interrupted_run_is_noted_with_the_checkpoint_to_continue_from(tmp_path):
    """A job stopped by Ctrl-C / SIGTERM / a time limit leaves last.ckpt and no results.json: it was
    noted as failed, with nothing on how to finish it."""
    sweep = tmp_path / "sweep"
    _write_run(sweep / "0", "bc", "alpha", 0, -100.0)
    for job in ("1", "2"):  # 1 interrupted at a checkpoint, 2 failed before its first one
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / "train.log").write_text("")
    (sweep / "1" / "checkpoints").mkdir()
    (sweep / "1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    notes = write_report([sweep], out=tmp_path / "out").notes
    interrupted, failed = (sweep / "1").resolve(), (sweep / "2").resolve()
    assert (
        f"skipped {interrupted}: no results.json (interrupted or still running; continue it with "
        f"python -m vla_hydra.train ckpt_path={interrupted}/checkpoints/last.ckpt hydra.run.dir={interrupted})"
        in notes
    )
    # a job of `experiment=offline_rl` (a sweep by its config): `ckpt_path=` alone was refused (a checkpoint of
    # algo=iql, not algo=bc), and its overrides without hydra.mode=RUN continued it in a new sweep dir
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("- algo=iql\n- seed=1\n- experiment=offline_rl\n")
    (sweep / "1" / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    notes = write_report([sweep], out=tmp_path / "out").notes
    assert (
        f"skipped {interrupted}: no results.json (interrupted or still running; continue it with "
        f"python -m vla_hydra.train algo=iql seed=1 experiment=offline_rl ckpt_path={interrupted}/checkpoints/last.ckpt "
        f"hydra.run.dir={interrupted} hydra.mode=RUN)" in notes
    )
    assert f"skipped {failed}: no results.json (the job failed or is still running)" in notes


def test_a_usage_error_is_one_line_and_exit_code_1():
    proc = run_module("vla_hydra.report")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: the following arguments are required: SWEEP_DIR (usage: python -m vla_hydra.report [-h] "
        "[--out OUT] SWEEP_DIR [SWEEP_DIR ...])"
    ]


def test_an_empty_dir_argument_is_refused_not_taken_for_the_current_dir(tmp_path):
    """`report "$SWEEP"` with SWEEP unset reported every run under the current dir and wrote report.md there
    (`--out ""` too)."""
    _write_run(tmp_path / "runs" / "0", "bc", "alpha", 0, -100.0, 50.0)
    for args, line in [
        ([""], "error: sweep dir '': empty; expected a sweep or run dir, e.g. logs/train/multiruns/<time>"),
        (
            ["runs", "--out", ""],
            "error: --out '': empty; expected a dir to write the report into (default: the first sweep dir)",
        ),
    ]:
        proc = run_module("vla_hydra.report", *args, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
        assert proc.returncode == 1 and proc.stderr.splitlines() == [line], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_many_run_dirs_without_results_are_noted_in_one_line(tmp_path):
    """`report logs/train` over many refused runs used to print one note per run dir."""
    sweep = tmp_path / "sweep"
    _write_run(sweep / "ok", "x", "alpha", 0, -100)
    for i in range(5):
        (sweep / f"failed{i}" / ".hydra").mkdir(parents=True)
        (sweep / f"failed{i}" / "train.log").write_text("")
    report = write_report([sweep], out=tmp_path / "out")
    skipped = [note for note in report.notes if note.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped 5 run dirs with no results.json")
    assert skipped[0].endswith("and 2 more")


def test_a_seed_run_twice_in_one_group_is_noted(tmp_path):
    """`report <sweep> <the same sweep rerun>` averaged seeds 0, 0, 1 as three independent runs (n=3, a
    smaller std) without a word."""
    for sweep, seeds in (("a", (0, 1)), ("b", (0,))):
        for seed in seeds:
            _write_run(tmp_path / sweep / str(seed), "bc", "alpha", seed, -100.0 - seed, 50.0 + seed)
    report = write_report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")
    (group,) = report.groups
    assert group.seeds == [0, 0, 1]
    runs = ", ".join(str((tmp_path / s / "0").resolve()) for s in ("a", "b"))
    note = f"alpha / bc: seed 0 counted 2 times in its mean and std ({runs}); report one of them for independent seeds"
    assert note in report.notes and f"- {note}" in report.files["report.md"].read_text()
    assert not any("seed" in n for n in write_report([tmp_path / "a"], out=tmp_path / "out").notes)


def test_a_file_of_the_users_in_the_out_dir_is_not_overwritten(tmp_path):
    """`--out docs` replaced a report.md (or learning_curves.png) of the user's there without a word; a
    report's own files are still replaced by the next report."""
    _write_run(tmp_path / "sweep" / "0", "bc", "alpha", 0, -100.0, 50.0)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.md", "learning_curves.png"):
        (out / name).write_text("my notes\n")
        proc = run_module("vla_hydra.report", str(tmp_path / "sweep"), "--out", str(out))
        assert proc.returncode == 1 and proc.stderr.splitlines() == [
            f"error: {out / name}: exists and was not written by vla_hydra.report (its report.md would begin "
            "with '# Sweep report'); not overwriting it: pass another --out, or move the file"
        ]
        assert (out / name).read_text() == "my notes\n" and sorted(p.name for p in out.iterdir()) == [name]
        (out / name).unlink()
    first = write_report([tmp_path / "sweep"], out=out)
    _write_run(tmp_path / "sweep" / "1", "bc", "alpha", 1, -200.0, 40.0)
    assert write_report([tmp_path / "sweep"], out=out).groups[0].seeds == [0, 1]  # its own files: replaced
    assert "| alpha | bc | 2 | 0,1 |" in first.files["report.md"].read_text()


def test_a_default_given_by_an_interpolation_is_compared_by_its_value(tmp_path):
    """trainer.max_steps is `${oc.select:algo.max_updates,10000}` by default: a run with the default budget
    and one with `trainer.max_steps=100` were one mean (interpolations were no values). Typed out, the
    default is the same experiment, and `${seed}` (another value per run) splits nothing."""
    default = "${oc.select:algo.max_updates,10000}"
    for seed, max_steps in enumerate([default, default, "100", "10000"]):
        overrides = [f"seed={seed}"] + ([] if max_steps == default else [f"trainer.max_steps={max_steps}"])
        _write_run(tmp_path / str(seed), "x", "alpha", seed, -100.0 * seed, overrides=overrides)
        config = {
            "seed": seed,
            "algo": {"lr": 0.001},
            "data": {"seed": "${seed}"},
            "trainer": {"max_steps": max_steps, "default_root_dir": "${hydra:runtime.output_dir}"},
        }
        (tmp_path / str(seed) / ".hydra" / "config.yaml").write_text(json.dumps(config))
    short = write_report([tmp_path / "0", tmp_path / "1", tmp_path / "2"], out=tmp_path / "r1").groups
    assert [(g.algo, g.seeds) for g in short] == [
        ("x [trainer.max_steps=100]", [2]),
        ("x [trainer.max_steps=10000]", [0, 1]),
    ]
    groups = write_report([tmp_path], out=tmp_path / "r2").groups
    assert [(g.algo, g.seeds) for g in groups] == [
        ("x [trainer.max_steps=100]", [2]),
        ("x [trainer.max_steps=10000]", [0, 1, 3]),
    ]
    assert groups[1].return_ == pytest.approx(
        (-400 / 3, math.sqrt(((0 + 400 / 3) ** 2 + (100 - 400 / 3) ** 2 + (300 - 400 / 3) ** 2) / 2))
    )
