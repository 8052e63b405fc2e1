"""PolicyEvaluation's best-policy checkpoint: written only on improvement, loadable like any checkpoint,
and its best-so-far survives a resume."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import small_train_config
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.eval import load_policy
from vla_hydra.train import train


def _config(run_root, data_dir, best, extra: list[str]):
    overrides = [
        "trainer.max_steps=300",
        "eval.every_n_updates=50",
        "callbacks.policy_eval.episodes=3",
        f"callbacks.policy_eval.best_checkpoint={best}",
        *extra,
    ]
    return small_train_config(run_root, data_dir, overrides)


def test_best_checkpoint_holds_the_best_evaluated_policy_and_survives_resume(tmp_path, data_dir):
    # outside the run dirs: the first run and its resumed continuation share it
    best = tmp_path / "best.ckpt"
    cfg = _config(tmp_path / "a", data_dir, best, [])
    _, results = train(cfg)
    history = results["eval_history"]
    top = max(history, key=lambda entry: entry["eval/return_mean"])
    assert results["best_eval"] == top and results["best_checkpoint"] == str(best)
    # an inference checkpoint: weights + metadata, no optimizer state; it replays the best evaluation
    saved = torch.load(best, weights_only=False)
    assert saved["global_step"] == top["step"] and "optimizer_states" not in saved
    algo, env, _ = load_policy(best)
    replay = rollout_episodes(algo, env, 3, cfg.callbacks.policy_eval.seed)
    assert replay.return_mean == pytest.approx(top["eval/return_mean"], rel=1e-5)

    # resumed for more updates: the best so far comes back from the checkpoint, and the file changes
    # only if a later evaluation beats it
    before = best.read_bytes()
    resume = [f"ckpt_path={results['checkpoint']}", "trainer.max_steps=400"]
    _, resumed = train(_config(tmp_path / "b", data_dir, best, resume))
    later = [e for e in resumed["eval_history"] if e["step"] > 300]
    assert later
    if max(e["eval/return_mean"] for e in later) > top["eval/return_mean"]:
        assert resumed["best_eval"]["step"] > 300
    else:
        assert resumed["best_eval"] == top and best.read_bytes() == before


def test_a_run_resumed_into_a_new_dir_keeps_its_curve_and_its_best_policy_file(tmp_path, data_dir):
    """The best-policy file lives in each run's own dir: the resumed run starts from a copy of the earlier
    one (results.json never names a file that does not exist), and its eval_history and metrics.csv
    continue the earlier curve."""
    best = "${paths.output_dir}/checkpoints/best.ckpt"
    _, first = train(_config(tmp_path / "a", data_dir, best, []))
    resume = [f"ckpt_path={first['checkpoint']}", "trainer.max_steps=400"]
    _, resumed = train(_config(tmp_path / "b", data_dir, best, resume))
    assert resumed["best_checkpoint"] == str(tmp_path / "b" / "run" / "checkpoints" / "best.ckpt")
    saved = torch.load(resumed["best_checkpoint"], weights_only=False)
    assert saved["global_step"] == resumed["best_eval"]["step"]
    steps = [e["step"] for e in resumed["eval_history"]]
    assert steps == [e["step"] for e in first["eval_history"]] + [350, 400]
    assert resumed["eval_history"][:-3] == first["eval_history"][:-1]
    # step 300 re-scored after the restore: the same weights, the same return
    rescored, original = resumed["eval_history"][-3], first["eval_history"][-1]
    assert rescored["eval/return_mean"] == pytest.approx(original["eval/return_mean"], rel=1e-6)


def test_a_run_resumed_off_its_evaluation_grid_evaluates_where_an_uninterrupted_run_does(tmp_path, data_dir):
    """A run stopped at update 125 (a requeued SLURM job, SIGTERM between evaluations) used to evaluate at
    125, 175, 225 after resuming, so its curve did not line up with an uninterrupted run's 0, 50, ..., 250."""
    common = ["trainer.max_steps=250", "algo.updates_per_step=25"]
    _, whole = train(_config(tmp_path / "whole", data_dir, "null", common))
    _, first = train(_config(tmp_path / "a", data_dir, "null", [*common, "trainer.max_steps=125"]))
    resume = [*common, f"ckpt_path={first['checkpoint']}"]
    _, resumed = train(_config(tmp_path / "b", data_dir, "null", resume))
    assert [e["step"] for e in whole["eval_history"]] == [0, 50, 100, 150, 200, 250]
    assert [e["step"] for e in resumed["eval_history"]] == [0, 50, 100, 150, 200, 250]
    # the resume replays the sampler and RNGs: the same returns at every step
    returns = [e["eval/return_mean"] for e in resumed["eval_history"]]
    assert returns == pytest.approx([e["eval/return_mean"] for e in whole["eval_history"]], rel=1e-5)


def test_a_run_continued_in_its_own_dir_appends_to_its_metrics_csv(tmp_path, data_dir):
    import csv

    _, first = train(_config(tmp_path / "a", data_dir, "null", []))
    # continued after the run dir was moved (copied off a cluster, renamed): Lightning wrote last-v1.ckpt
    # beside the last.ckpt it continued from, which then held the older state
    (tmp_path / "a").rename(tmp_path / "b")
    metrics = tmp_path / "b" / "run" / "csv" / "metrics.csv"
    before = list(csv.DictReader(metrics.open()))
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    resume = [f"ckpt_path={last}", "trainer.max_steps=400"]
    _, resumed = train(_config(tmp_path / "b", data_dir, "null", resume))
    after = list(csv.DictReader(metrics.open()))
    assert after[: len(before)] == before and len(after) > len(before)
    assert max(int(row["step"]) for row in after) >= 399
    assert resumed["train_steps"] == 400
    assert resumed["checkpoint"] == str(last) and [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(last, weights_only=False)["global_step"] == 400


def test_a_new_run_refuses_a_best_checkpoint_path_that_holds_a_file_or_is_a_directory(tmp_path, data_dir):
    """A new run's first evaluation replaced whatever file was there (another run's best policy, an
    earlier job's of the same sweep); a directory failed after training had started, without the option."""
    from vla_hydra.core.exceptions import OutputError

    existing = tmp_path / "someone_elses_best.ckpt"
    existing.write_bytes(b"kept")
    with pytest.raises(
        OutputError, match=r"best_checkpoint=.*: file exists, and a new run \(no ckpt_path=\)"
    ):
        train(_config(tmp_path / "a", data_dir, existing, []))
    assert existing.read_bytes() == b"kept"
    with pytest.raises(OutputError, match=r"callbacks.policy_eval.best_checkpoint=.*: a directory"):
        train(_config(tmp_path / "b", data_dir, tmp_path, []))
    assert not (tmp_path / "a" / "run" / "checkpoints").exists()
