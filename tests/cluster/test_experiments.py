"""experiment= configs that replace the seed's sbatch scripts: every sweep combination composes, and
shrunken sweeps run end to end (the same command takes cluster=slurm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_config, run_module

SWEEPS = {
    "offline_rl": ["bc", "td3bc", "iql", "cql", "dt"],
    "online_rl": ["ppo_continuous", "sac", "grpo"],
    "il": ["bc", "dagger", "gail"],
    "all_training": ["bc", "td3bc", "iql", "cql", "dt", "ppo_continuous", "sac", "grpo", "dagger", "gail"],
}
SHRINK = [
    "trainer.max_steps=100",
    "eval.episodes=2",
    "callbacks.policy_eval.episodes=2",
    "eval.every_n_updates=100",
]


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_every_combination_of_the_sweep_composes(experiment):
    sweep = compose_config(
        "train", [f"experiment={experiment}"], return_hydra_config=True
    ).hydra.sweeper.params
    assert sweep.algo.split(",") == SWEEPS[experiment]
    for algo in SWEEPS[experiment]:
        cfg = compose_config("train", [f"experiment={experiment}", f"algo={algo}"])
        assert cfg.task_name == experiment and cfg.env.id == "Pendulum-v1"
        assert cfg.algo._target_.split(".")[-2] == algo.split("_")[0]


def _run_sweep(tmp_path: Path, data_dir: Path, *overrides: str) -> list[dict]:
    proc = run_module(
        "vla_hydra.train",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
        *overrides,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs").glob("*/multiruns/*")
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]


def test_all_training_shrunk_runs_one_algorithm_of_each_family(tmp_path, data_dir):
    results = _run_sweep(
        tmp_path, data_dir, "experiment=all_training", "algo=iql,sac,dagger", "seed=0", *SHRINK,
    )  # fmt: skip
    assert [r["algo"] for r in results] == ["iql", "sac", "dagger"]
    assert all(r["env"] == "Pendulum-v1" and r["train_steps"] > 0 for r in results)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["offline_rl", "online_rl", "il", "all_training"])
def test_whole_experiment_sweep_shrunk_runs(tmp_path, data_dir, experiment):
    results = _run_sweep(tmp_path, data_dir, f"experiment={experiment}", "seed=0", *SHRINK)
    assert len(results) == len(SWEEPS[experiment])
    if experiment == "online_rl":  # keeps each run's best periodic policy next to last.ckpt
        assert all(Path(r["best_checkpoint"]).name == "best.ckpt" for r in results)
        assert all(Path(r["best_checkpoint"]).parent == Path(r["checkpoint"]).parent for r in results)


def test_eval_experiment_reproduces_the_runs_final_evaluation(tmp_path, data_dir):
    """Checkpoints of different algorithms in one sweep: each job rebuilds its checkpoint's own
    algorithm, networks and env (no algo=/model= on the command line)."""
    from tests.conftest import small_train_config
    from vla_hydra.train import train

    trained = {}
    for algo in ("bc", "td3bc"):
        cfg = small_train_config(tmp_path / algo, data_dir, [f"algo={algo}", "trainer.max_steps=100"])
        trained[algo] = train(cfg)[1]
    evaluated = _run_sweep(
        tmp_path, data_dir, "experiment=eval",
        f"ckpt_path={trained['bc']['checkpoint']},{trained['td3bc']['checkpoint']}", "eval.episodes=4",
    )  # fmt: skip
    assert [r["algo"] for r in evaluated] == ["bc", "td3bc"]
    for result in evaluated:
        run = trained[result["algo"]]
        # no further updates; same weights and evaluation seeds -> the same returns, labelled like the run
        assert result["train_steps"] == run["train_steps"] == 100
        assert result["eval_return_mean"] == run["eval_return_mean"]
        assert (result["dataset"], result["seed"]) == (run["dataset"], run["seed"])
        assert result["checkpoint"] == run["checkpoint"]

    # options an evaluation would not use are refused (env=hopper used to evaluate Pendulum BC, exit 0);
    # eval.video=true writes the video (it used to be ignored)
    bc = f"ckpt_path={trained['bc']['checkpoint']}"
    proc = run_module("vla_hydra.train", "eval_only=true", bc, "env=hopper", f"hydra.run.dir={tmp_path}/e1")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: env=hopper: eval_only=true evaluates the checkpoint with the algo, model, data and env it was "
        "trained with; only eval.* options apply (vla_hydra.eval takes the same)"
    ]
    args = ["eval_only=true", bc, "eval.video=true", "eval.episodes=2", f"hydra.run.dir={tmp_path}/e2"]
    assert run_module("vla_hydra.train", *args).returncode == 0
    video = json.loads((tmp_path / "e2" / "results.json").read_text())["video"]
    assert Path(video).is_file() and Path(video).stat().st_size > 1000


def test_eval_experiment_without_a_checkpoint_is_refused(tmp_path):
    """`ckpt_path: ???` in the experiment never took effect (train.yaml's null wins the merge): the job
    evaluated an untrained policy and exited 0."""
    proc = run_module(
        "vla_hydra.train", "experiment=eval", f"paths.root_dir={tmp_path}", cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job 0 (") and last.endswith(
        "): ckpt_path: required with eval_only=true (experiment=eval); pass ckpt_path=<checkpoint>, or "
        "several separated by commas (one job each)"
    )
    assert not list(tmp_path.rglob("results.json"))


def test_submitit_local_sweep_waits_for_jobs_longer_than_a_status_poll(tmp_path, data_dir):
    """cluster=submitit_local: each job is its own process (~5 s of imports alone), so the launcher
    waits past its 5 s status-poll interval, which only SLURM jobs may use."""
    results = _run_sweep(
        tmp_path, data_dir, "hydra.mode=MULTIRUN", "cluster=submitit_local", "seed=0,1", "trainer.max_steps=100",
        "eval.episodes=2", "callbacks.policy_eval=null",
    )  # fmt: skip
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["train_steps"] == 100 for r in results)
    # one log folder per job, not also submitit's unexpanded `%j` template
    (submitit_dir,) = tmp_path.rglob(".submitit")
    job_folders = [p.name for p in submitit_dir.iterdir()]
    assert len(job_folders) == 2 and all(name.isdigit() for name in job_folders), job_folders


@pytest.mark.parametrize(
    ("signum", "code", "stopped"), [(2, 130, "interrupted"), (15, 143, "terminated (SIGTERM)")]
)
def test_ctrl_c_on_a_submitit_local_sweep_cancels_its_job_processes(
    tmp_path, data_dir, signum, code, stopped
):
    """Local jobs are this command's children: Ctrl-C ends them too, and says so (exit 130). SIGTERM used
    to end the command in silence (143) and leave its jobs training, orphaned."""
    import subprocess
    import sys
    import time

    import psutil

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "vla_hydra.train", "-m", "cluster=submitit_local", "seed=0,1",
           "trainer.max_steps=1000000", "callbacks.policy_eval=null", f"paths.data_dir={data_dir}",
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def job_processes() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if any(str(sweep) in part for part in (p.info["cmdline"] or [])) and p.pid != proc.pid:
                found.append(p)
        return found

    try:
        deadline = time.monotonic() + 120
        while not all((sweep / str(i) / "train.log").is_file() for i in (0, 1)):
            assert time.monotonic() < deadline, "the jobs did not start"
            time.sleep(0.5)
        assert job_processes()
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == code, output[-2000:]
        assert output.strip().splitlines()[-1] == f"{stopped}: cancelled 2 unfinished local job(s) of {sweep}"
        deadline = time.monotonic() + 60
        while job_processes():
            assert time.monotonic() < deadline, f"job processes left running: {job_processes()}"
            time.sleep(0.5)
        assert not list(sweep.glob("*/results.json"))
    finally:
        proc.kill()
        for p in job_processes():
            p.kill()
