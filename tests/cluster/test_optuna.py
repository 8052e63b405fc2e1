"""hparams_search=*_optuna run locally (the SLURM variant is in test_slurm.py): a stored study that the
same command continues with fresh proposals."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cluster.test_slurm import small_job_args
from tests.conftest import run_module


def stored_trials(db: Path, study: str) -> list[dict]:
    import optuna

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return [{"state": t.state.name, **t.params} for t in loaded.trials]


def test_rerunning_an_optuna_sweep_continues_the_study_with_new_proposals(pendulum_data, tmp_path):
    args = [
        "hparams_search=bc_optuna",
        "cluster=local",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        *small_job_args(tmp_path, pendulum_data)[:-2],  # no SLURM time/signal settings
    ]
    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    first = run_module("vla_hydra.train", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [t["state"] for t in stored_trials(db, "bc_optuna")] == ["COMPLETE"] * 2

    again = run_module("vla_hydra.train", *args, cwd=tmp_path)  # the very same command
    assert again.returncode == 0, again.stderr[-3000:]
    trials = stored_trials(db, "bc_optuna")
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4
    # TPE is still in its random start-up trials: a sampler restarted from the same seed would propose
    # trials 0 and 1 again; the continuation is seeded with seed + 2 (stored trials) instead
    learning_rates = [t["algo.lr"] for t in trials]
    assert len(set(learning_rates)) == 4, learning_rates
    assert "continuing it with sampler seed 2 " in again.stderr + again.stdout


def test_a_local_optuna_search_records_failing_trials_as_failed(pendulum_data, tmp_path):
    """A failing trial's exit used to end the local search at once, its trial left RUNNING in the study."""
    proc = run_module(
        "vla_hydra.train", "hparams_search=bc_optuna", "cluster=local", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2", "data.batch_size=choice(0)", *small_job_args(tmp_path, pendulum_data)[:-2],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    # each trial's line as it failed, then the search's last line: the first failure
    assert [e.split(" (")[0] for e in errors] == ["error: job 0", "error: job 1", "error: job 0"]
    assert all(e.endswith("): data.batch_size=0: expected an integer >= 1") for e in errors)
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    assert [t["state"] for t in stored_trials(db, "bc_optuna")] == ["FAIL"] * 2


def test_a_failed_trial_is_stored_as_failed_and_the_search_goes_on(pendulum_data, tmp_path):
    """One failed trial (weight_decay=-1 here; a diverged run in practice) used to end the whole search
    after its batch: no further trials, no best parameters, no optimization_results.yaml."""
    import yaml

    proc = run_module(
        "vla_hydra.train", "hparams_search=bc_optuna", "cluster=local", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2", "algo.weight_decay=choice(0.0,-1.0)",
        *small_job_args(tmp_path, pendulum_data)[:-2], cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    trials = stored_trials(db, "bc_optuna")
    # TPE's seeded start-up proposals: trials 1 and 3 draw weight_decay=-1
    assert [t["state"] for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    assert [t["algo.weight_decay"] for t in trials] == [0.0, -1.0, 0.0, -1.0]
    (sweep,) = sorted((tmp_path / "logs" / "bc_optuna" / "multiruns").glob("*"))
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: 2 of 4 trials failed (jobs 1, 3, named above); the best of the others: "
        f"{sweep}/optimization_results.yaml"
    )
    assert "Failed experiment" not in proc.stdout + proc.stderr
    scores = [json.loads((sweep / str(i) / "results.json").read_text())["normalized_score"] for i in (0, 2)]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(scores) and best["best_params"]["algo.weight_decay"] == 0.0


def test_a_stored_study_is_not_continued_by_a_command_with_other_settings(pendulum_data, tmp_path):
    """The study is named after the task only: a search with another budget (or dataset) used to add its
    trials to the same study, and TPE and the best value mixed scores that cannot be compared."""
    args = [
        "hparams_search=bc_optuna",
        "cluster=local",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.n_jobs=1",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={pendulum_data}",
        "eval.episodes=1",
        "callbacks.policy_eval.episodes=1",
    ]
    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    first = run_module("vla_hydra.train", *args, "trainer.max_steps=50", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    other = run_module("vla_hydra.train", *args, "trainer.max_steps=100", cwd=tmp_path)
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: hydra.sweeper.study_name=bc_optuna: the stored study (sqlite:///{db}) was run with "
        "trainer.max_steps=50 where this command has trainer.max_steps=100; their scores are not comparable: "
        "name a new study (hydra.sweeper.study_name=<name>) or rerun with the study's overrides"
    )
    assert [t["state"] for t in stored_trials(db, "bc_optuna")] == ["COMPLETE"]
    assert len(list((tmp_path / "logs" / "bc_optuna" / "multiruns").glob("*"))) == 1  # no sweep dir made


def test_a_key_given_twice_counts_with_its_last_value_when_a_study_is_compared():
    """`<the study's command> trainer.max_steps=40` kept both values: the refusal read "was run with no
    override where this command has trainer.max_steps=40", and `a=1 a=2` was refused against `a=2`."""
    from hydra_plugins.vla_hydra_cluster.sweepers import fixed_overrides

    assert fixed_overrides(
        [
            "hparams_search=bc_optuna",
            "trainer.max_steps=30",
            "seed=1",
            "trainer.max_steps=40",
            "cluster=local",
        ]
    ) == ["hparams_search=bc_optuna", "seed=1", "trainer.max_steps=40"]


def test_search_settings_optuna_cannot_run_are_one_line_before_the_study_is_opened(tmp_path):
    """n_trials=0 ended in a traceback from the empty study's best-trial lookup, n_jobs=0 in a
    ZeroDivisionError, an unknown direction in Optuna's ValueError; each left an empty study database."""
    from types import SimpleNamespace

    import pytest

    from hydra_plugins.vla_hydra_cluster.sweepers import check_search_settings
    from vla_hydra.core.exceptions import ConfigError

    for settings, line in [
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0: expected an integer >= 1"),
        ({"n_jobs": -1}, "hydra.sweeper.n_jobs=-1: expected an integer >= 1"),
        ({"direction": "up"}, "hydra.sweeper.direction=up: expected minimize or maximize"),
    ]:
        impl = SimpleNamespace(**{"n_trials": 20, "n_jobs": 2, "direction": "maximize", **settings})
        impl._get_directions = lambda impl=impl: [impl.direction]
        with pytest.raises(ConfigError) as err:
            check_search_settings(impl)
        assert str(err.value) == line
    proc = run_module(
        "vla_hydra.train", "hparams_search=bc_optuna", "hydra.sweeper.n_jobs=0", f"paths.root_dir={tmp_path}"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: hydra.sweeper.n_jobs=0: expected an integer >= 1", proc.stderr[
        -2000:
    ]
    assert not (tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db").exists()
