"""Sweeps on a real local SLURM through cluster=slurm, as a user runs them: completion, a failing job,
pre-emption with requeue and exact resume, an Optuna search."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import jobs_under
from tests.conftest import run_module

# under pytest-xdist (make test) these share one worker: one local SLURM node, jobs queued one test at a time
pytestmark = pytest.mark.xdist_group("slurm")


def small_job_args(root: Path, data_dir: Path, steps: int = 100) -> list[str]:
    return [
        f"paths.root_dir={root}",
        f"paths.data_dir={data_dir}",
        f"trainer.max_steps={steps}",
        "eval.episodes=2",
        "callbacks.policy_eval.episodes=2",
        f"eval.every_n_updates={max(steps // 4, 50)}",
        "cluster.time_min=15",
        "cluster.signal_delay_s=10",
    ]


def sweep_dirs(root: Path, task: str = "train") -> list[Path]:
    return sorted((root / "logs" / task / "multiruns").glob("*"))


def wait_until(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_two_job_sweep_completes_with_both_results(slurm, pendulum_data, tmp_path):
    proc = run_module(
        "vla_hydra.train",
        "-m",
        "cluster=slurm",
        "seed=0,1",
        *small_job_args(tmp_path, pendulum_data),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    results = [json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["train_steps"] == 100 for r in results)
    # each job ran under SLURM (submitit's per-job folder holds the sbatch script and logs)
    scripts = list((sweep / ".submitit").glob("*/*_submission.sh"))
    assert scripts and "#SBATCH --array=0-1%" in scripts[0].read_text()
    assert (proc.stdout + proc.stderr).count("completed (job") == 2


def test_failing_job_reports_its_error_and_the_other_succeeds(slurm, pendulum_data, tmp_path):
    proc = run_module(
        "vla_hydra.train",
        "-m",
        "cluster=slurm",
        "env.id=Pendulum-v1,NoSuchEnv-v0",
        *small_job_args(tmp_path, pendulum_data),
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    # the job's own one-line error reaches the user, naming the job and the bad option
    output = proc.stdout + proc.stderr
    assert "#1 failed (job " in output, output[-3000:]
    # the command's last line is that error, not a traceback
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: job #1 (cluster=slurm env.id=NoSuchEnv-v0 ")
        and "Traceback" not in proc.stderr
    )
    assert (
        last.split("SLURM/submitit id ")[1].split(": ", 1)[1].startswith("env.id='NoSuchEnv-v0': gymnasium")
    )
    (sweep,) = sweep_dirs(tmp_path)
    assert json.loads((sweep / "0" / "results.json").read_text())["train_steps"] == 100
    assert not (sweep / "1" / "results.json").exists()
    # the failed job left a result file carrying its error line: the launcher reads the failure from it
    # at once, rather than ~15 s later from SLURM's accounting (a bare SystemExit leaves no result file)
    import pickle

    task = _array_task(sweep, 1)
    status, trace = pickle.loads((sweep / ".submitit" / task / f"{task}_0_result.pkl").read_bytes())
    assert status == "error" and "JobExitedWithError: error: env.id='NoSuchEnv-v0'" in trace


def test_a_failing_setup_line_stops_its_job_and_is_named(slurm, pendulum_data, tmp_path):
    """A failing cluster.setup line used to be passed over (the job script has no `set -e`) and the job
    trained anyway. Here it fails in job 1 only: job 1 stops there, job 0 runs to the end."""
    setup = "cluster.setup=['true','test $SLURM_ARRAY_TASK_ID = 0']"
    proc = run_module(
        "vla_hydra.train", "-m", "cluster=slurm", "seed=0,1", setup, *small_job_args(tmp_path, pendulum_data, 20),
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job #1 (cluster=slurm seed=1 ") and last.endswith(
        ": cluster.setup[1] (test $SLURM_ARRAY_TASK_ID = 0) failed with exit status 1"
    ), proc.stderr[-2000:]
    (sweep,) = sweep_dirs(tmp_path)
    assert json.loads((sweep / "0" / "results.json").read_text())["train_steps"] == 20
    assert not (sweep / "1").exists()  # stopped before python started


def _array_task(sweep: Path, task: int) -> str:
    # submitit's folder per job is named after the SLURM id: <array job id>_<task>
    # (a one-job sweep is a plain job: <job id>)
    # (an array's submission script sits in a folder named after the bare array id, which scancel reads as
    # the array's last pending task: picking that folder by glob order once signalled the wrong job)
    def folder():
        names = [p.name for p in (sweep / ".submitit").glob("*") if p.is_dir()]
        tasks = [n for n in names if n.endswith(f"_{task}")]
        if tasks or any("_" in n for n in names):
            return tasks
        return [n for n in names if task == 0 and n.isdigit()]

    return wait_until(folder, 60, "the job's submitit folder")[0]


def _job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith(f"{field}=")), "")


def _release_requeued(job: str, proc: subprocess.Popen) -> None:
    """SLURM holds a requeued job for ~2 min (BeginTime); release it so the test need not wait. Not within
    2 s of the requeue: slurmd revokes the old run's credential with a timestamp in whole seconds, and a
    run started in that same second is killed as 'Job credential revoked' (seen under load)."""
    pending_since: list[float] = []

    def running_again() -> bool:
        if _job_field(job, "JobState") == "PENDING":
            if not pending_since:
                pending_since.append(time.monotonic())
            if time.monotonic() - pending_since[0] >= 2.0:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        return proc.poll() is not None or (
            _job_field(job, "Restarts") == "1" and _job_field(job, "JobState") in ("RUNNING", "COMPLETED")
        )

    wait_until(running_again, 150, "the requeued job to run again", poll=1.0)


def interrupted_sweep(tmp_path: Path, args: list[str], at_step: str, interrupt) -> tuple[str, Path, Path]:
    """Start a cluster=slurm sweep, wait until job 0's log shows `at_step`, call `interrupt(job id, log)`,
    release the requeued job and wait for the sweep; returns (sweep output, sweep dir, job 0's log)."""
    cmd = [sys.executable, "-m", "vla_hydra.train", "-m", "cluster=slurm", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sweep = wait_until(lambda: (sweep_dirs(tmp_path) or [None])[0], 60, "the sweep dir")
        log = sweep / "0" / "train.log"
        wait_until(lambda: log.is_file() and at_step in log.read_text(), 180, "training to reach " + at_step)
        job = _array_task(sweep, 0)
        interrupt(job, log)
        _release_requeued(job, proc)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    return output, sweep, log


def test_preempted_job_checkpoints_requeues_and_matches_uninterrupted_twin(slurm, pendulum_data, tmp_path):
    steps = 4000
    args = [*small_job_args(tmp_path, pendulum_data, steps), "eval.every_n_updates=500", "+twin=0,1"]

    def preempt(job: str, log: Path) -> None:
        # what SLURM does before a time limit or pre-emption (sbatch --signal=USR2@...), sent now
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        wait_until(lambda: "pre-emption signal SIGUSR2: saved" in log.read_text(), 60, "the checkpoint")

    _, sweep, log = interrupted_sweep(tmp_path, args, f"step 500/{steps}", preempt)
    text = log.read_text()
    assert "[ERROR]" not in text  # a pre-emption is no failure of the run
    saved_at = int(text.split("pre-emption signal SIGUSR2: saved")[1].split("at step ")[1].split()[0])
    assert 0 < saved_at < steps
    assert "resuming the requeued job from" in text and str(sweep / "0" / "checkpoints" / "last.ckpt") in text
    preempted, twin = (json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1))
    assert preempted["train_steps"] == twin["train_steps"] == steps
    # exact resume: same batches and RNG after the requeue -> the same final policy and evaluation
    assert preempted["eval_return_mean"] == twin["eval_return_mean"]
    assert preempted["normalized_score"] == twin["normalized_score"]


def test_a_time_limit_warning_during_start_up_requeues_the_job_cleanly(slurm, pendulum_data, tmp_path):
    """The warning used to meet submitit's handler mid-import (torch, Lightning): its SystemExit left a
    partially initialised module and the job failed on an AttributeError instead of being requeued."""
    steps = 400

    def warn_at_start_up(job: str, log: Path) -> None:
        # train.log exists once Hydra has set the job up; the fit starts seconds later (imports, data)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        wait_until(lambda: "pre-emption signal SIGUSR2: saved" in log.read_text(), 60, "the checkpoint")

    output, sweep, log = interrupted_sweep(
        tmp_path, small_job_args(tmp_path, pendulum_data, steps), "", warn_at_start_up
    )
    text = log.read_text()
    assert "[ERROR]" not in text and "AttributeError" not in output, output[-3000:]
    assert "SIGUSR2 arrived during start-up: saving at the first step" in text
    first_block = int(text.split("pre-emption signal SIGUSR2: saved")[1].split("at step ")[1].split()[0])
    assert "Requeued job" in text and f"from update {first_block}" in text
    assert json.loads((sweep / "0" / "results.json").read_text())["train_steps"] == steps


def test_a_job_out_of_time_limit_requeues_names_its_checkpoint(slurm, pendulum_data, tmp_path):
    """With no time-limit requeue left (cluster.max_num_timeout=0) the sweep used to end on submitit's
    "UncompletedJobError: Job not requeued because: timed-out too many times." and no word of the
    checkpoint the job had saved at the warning."""
    args = [*small_job_args(tmp_path, pendulum_data, 10_000_000)[:-2], "callbacks.policy_eval=null"]
    limits = ["cluster.time_min=1", "cluster.signal_delay_s=30", "cluster.max_num_timeout=0"]
    proc = run_module("vla_hydra.train", "-m", "cluster=slurm", *args, *limits, cwd=tmp_path, timeout=240)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    reason = last.split("SLURM/submitit id ")[1].split(": ", 1)[1]
    assert reason.startswith(
        "reached its time limit (cluster.time_min=1) with no requeue left (cluster.max_num_timeout=0)"
    ), last
    (sweep,) = sweep_dirs(tmp_path)
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    # SLURM sends the warning up to a minute early: before the fit has started there is no checkpoint
    if ckpt.is_file():
        assert reason.endswith(f"; continue it with ckpt_path={ckpt}"), last
    else:
        assert "ckpt_path" not in reason


def _study_trials(db: Path, study: str) -> list[str]:
    import optuna

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return [t.state.name for t in loaded.trials]


def test_optuna_search_on_slurm_is_stored_and_resumable(slurm, pendulum_data, tmp_path):
    args = [
        "hparams_search=bc_optuna",
        "cluster=slurm",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        *small_job_args(tmp_path, pendulum_data),
    ]
    proc = run_module("vla_hydra.train", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    assert _study_trials(db, "bc_optuna") == ["COMPLETE"] * 4
    (sweep,) = sweep_dirs(tmp_path, "bc_optuna")
    best = (sweep / "optimization_results.yaml").read_text()
    scores = [json.loads((sweep / str(i) / "results.json").read_text())["normalized_score"] for i in range(4)]
    assert f"best_value: {max(scores)}" in best

    # the same command again continues the stored study
    again = run_module("vla_hydra.train", *args[:2], "hydra.sweeper.n_trials=1", *args[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _study_trials(db, "bc_optuna") == ["COMPLETE"] * 5


def test_an_optuna_search_on_slurm_with_failing_trials_ends_on_one_line(slurm, pendulum_data, tmp_path):
    """Hydra used to add an "Error executing job with overrides" line per failed trial and its
    HYDRA_FULL_ERROR hint; optuna its own "A new study created" line."""
    proc = run_module(
        "vla_hydra.train", "hparams_search=bc_optuna", "cluster=slurm", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2", "data.batch_size=choice(0)", *small_job_args(tmp_path, pendulum_data), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: job #0 (") and line.endswith(
        ": data.batch_size=0: expected an integer >= 1"
    )
    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    assert _study_trials(db, "bc_optuna") == ["FAIL"] * 2  # the study records them


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_ctrl_c_in_an_optuna_search_on_slurm_stores_its_waiting_trials_as_failed(
    slurm, pendulum_data, tmp_path
):
    """Ctrl-C stops the waiting, not the jobs; their results never reach the study, whose trials stayed
    RUNNING for good."""
    import optuna

    db = tmp_path / "logs" / "bc_optuna" / "optuna" / "bc_optuna.db"
    db.parent.mkdir(parents=True)
    stored = optuna.create_study(study_name="bc_optuna", storage=f"sqlite:///{db}", direction="maximize")
    stored.add_trial(optuna.trial.create_trial(value=1.0))
    output = tmp_path / "search.out"
    args = ["hparams_search=bc_optuna", "cluster=slurm", "+cluster.additional_parameters.hold=true"]
    args += ["hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *small_job_args(tmp_path, pendulum_data)]
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vla_hydra.train", *args],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    jobs = None
    try:
        wait_until(lambda: "pending with reason JobHeldUser" in output.read_text(), 90, "the held jobs")
        jobs = output.read_text().split("or cancel: scancel ")[1].splitlines()[0].split()
        proc.send_signal(2)
        assert proc.wait(timeout=60) == 130
        assert _study_trials(db, "bc_optuna") == ["COMPLETE", "FAIL", "FAIL"]
    finally:
        proc.kill()
        if jobs:
            subprocess.run(["scancel", *jobs])


@pytest.mark.parametrize(
    ("signum", "code", "stopped"), [(2, 130, "interrupted"), (15, 143, "terminated (SIGTERM)")]
)
def test_a_job_that_cannot_start_is_reported_and_ctrl_c_leaves_it_queued(
    slurm, pendulum_data, tmp_path, signum, code, stopped
):
    """A held job (any pending reason that waiting does not clear) is named at once, not waited on in
    silence; Ctrl-C stops the waiting, not the job (as after sbatch), and says how to cancel it. SIGTERM
    does the same (it used to end the command in silence)."""
    output = tmp_path / "sweep.out"
    cmd = [
        sys.executable,
        "-m",
        "vla_hydra.train",
        "-m",
        "cluster=slurm",
        "+cluster.additional_parameters.hold=true",
    ]
    with output.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, *small_job_args(tmp_path, pendulum_data)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    job = None
    try:
        wait_until(
            lambda: "pending with reason JobHeldUser" in output.read_text(), 90, "the held-job warning"
        )
        job = output.read_text().split("SLURM job ")[1].split()[0]
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
        text = output.read_text()
        assert "waiting for 1 job(s): 0 running, 1 pending (JobHeldUser: 1)" in text
        last = text.strip().splitlines()[-1]
        assert last.startswith(f"{stopped}: 1 SLURM job(s) of this sweep stay queued or running")
        assert f"cancel them: scancel {job};" in last and "Traceback" not in text
        queued = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True
        ).stdout
        assert queued.strip() == "PENDING"
    finally:
        proc.kill()
        if job:
            subprocess.run(["scancel", job])


def test_detached_submission_returns_at_once_and_the_jobs_finish(slurm, pendulum_data, tmp_path):
    """cluster.wait=false: submit and return like sbatch; the jobs write their results afterwards."""
    args = ["-m", "cluster=slurm", "cluster.wait=false", "seed=0,1", *small_job_args(tmp_path, pendulum_data)]
    proc = run_module("vla_hydra.train", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "2 job(s) queued, not waited for (cluster.wait=false)" in output
    (sweep,) = sweep_dirs(tmp_path)
    assert not list(sweep.glob("*/results.json"))  # returned before any job trained
    results = [sweep / str(i) / "results.json" for i in (0, 1)]
    wait_until(lambda: all(r.is_file() for r in results), 240, "both detached jobs' results")
    assert [json.loads(r.read_text())["seed"] for r in results] == [0, 1]


def test_detached_optuna_search_is_refused_in_one_line(tmp_path, pendulum_data):
    proc = run_module(
        "vla_hydra.train",
        "hparams_search=bc_optuna",
        "cluster=slurm",
        "cluster.wait=false",
        *small_job_args(tmp_path, pendulum_data),
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: cluster.wait=false: an Optuna search (hparams_search=) needs each trial's result to propose "
        "the next"
    )
    assert not list(tmp_path.rglob("*.db")), "a refused search left a study database behind"


@pytest.mark.slow
def test_admin_requeue_resumes_from_last_periodic_checkpoint(slurm, pendulum_data, tmp_path):
    """`scontrol requeue` sends SIGTERM without the USR2 warning: the job saves last.ckpt at its step
    boundary and its requeued run continues from it. The first attempt's log used to end on an ERROR
    "terminated (SIGTERM) ... continue with ckpt_path=" line, as if the run had failed."""
    steps = 4000
    args = [*small_job_args(tmp_path, pendulum_data, steps), "eval.every_n_updates=500"]
    args += ["callbacks.model_checkpoint.every_n_updates=500"]
    requeue = lambda job, log: subprocess.run(["scontrol", "requeue", job], check=True)  # noqa: E731
    _, sweep, log = interrupted_sweep(tmp_path, args, f"step 1000/{steps}", requeue)
    text, ckpt = log.read_text(), sweep / "0" / "checkpoints" / "last.ckpt"
    assert "[ERROR]" not in text and "terminated" not in text, text[-3000:]
    warning = re.search(
        r"\[vla_hydra\]\[WARNING\] - preempted \(SIGTERM, requeued by SLURM\) at update (\d+); (.*)", text
    )
    assert warning and 1000 <= int(warning.group(1)) < steps, text[-3000:]
    assert warning.group(2) == f"saved {ckpt}: the requeued job continues from it"
    assert f"resuming the requeued job from {ckpt}" in text
    assert json.loads((sweep / "0" / "results.json").read_text())["train_steps"] == steps


def test_cluster_settings_flow_into_the_trainer_and_launcher():
    from vla_hydra.core.config import compose_config

    cfg = compose_config(
        "train",
        ["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=4", "cluster.partition=gpu"],
        return_hydra_config=True,
    )
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 4
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.partition) == (2, 4, "gpu")
    assert launcher.max_num_timeout == 3 and cfg.hydra.mode.name == "MULTIRUN"
    # only submitit requeues: Lightning's SLURM plugin is told not to
    assert cfg.trainer.plugins[0].auto_requeue is False


REFUSED = "error: cluster: the scheduler refused the job(s): "


def test_settings_sbatch_would_refuse_or_misread_fail_in_one_line(slurm, pendulum_data, tmp_path):
    """Checked before submitting (a time limit of 0 would be UNLIMITED, one below the pre-emption warning
    never trains), and a scheduler rejection is one line too, sbatch's reason followed by the user's setting
    it is about; no job runs. The local SLURM enforces accounts and QOS (AccountingStorageEnforce) as real
    clusters do: an unknown account or QOS, or a time over the QOS's MaxWall, is refused by sbatch."""
    cases = {
        ("cluster.time_min=0",): ("error: cluster.time_min=0: expected an integer >= 1", ""),
        ("cluster.time_min=1", "cluster.signal_delay_s=120"): (
            "error: cluster.time_min=1: must end after the pre-emption warning "
            "(cluster.signal_delay_s=120 s before the end)",
            "",
        ),
        # an Optuna search whose first batch sbatch refuses: it used to leave a new study database whose
        # trials stayed RUNNING (and counted in the next command's sampler seed)
        ("hparams_search=bc_optuna", "hydra.sweeper.n_trials=1", "cluster.partition=doesnotexist"): (
            REFUSED + "invalid partition specified: doesnotexist; Invalid partition name specified",
            " (cluster.partition=doesnotexist)",
        ),
        ("cluster.partition=doesnotexist",): (
            REFUSED + "invalid partition specified: doesnotexist; Invalid partition name specified",
            " (cluster.partition=doesnotexist)",
        ),
        # before AccountingStorageEnforce, these were queued and ran (or waited) as if all was well
        ("cluster.account=nope",): (
            REFUSED + "Invalid account or account/partition combination specified",
            " (cluster.account=nope)",
        ),
        ("cluster.qos=nope",): (REFUSED + "Invalid qos specification", " (cluster.qos=nope)"),
        # the local SLURM's QOS `short` allows 5 minutes (scripts/local_slurm.sh)
        ("cluster.qos=short", "cluster.time_min=10"): (
            REFUSED + "QOSMaxWallDurationPerJobLimit; Job violates accounting/QOS policy",
            " (cluster.time_min=10 is over the limit of cluster.qos=short: MaxWall 00:05:00)",
        ),
    }
    for i, (overrides, (message, setting)) in enumerate(cases.items()):
        root = tmp_path / str(i)
        proc = run_module(
            "vla_hydra.train",
            "-m",
            "cluster=slurm",
            *small_job_args(root, pendulum_data),
            *overrides,
            cwd=tmp_path,
        )
        assert proc.returncode == 1, (overrides, proc.stderr[-2000:])
        # one line: sbatch's own complaint (which submitit echoes) only inside it
        lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("[")]  # log lines
        assert len(lines) == 1 and lines[0].startswith(message), (overrides, proc.stderr[-2000:])
        # sbatch's refusal is followed by the user's setting it is about
        assert lines[0].endswith(setting), (overrides, lines[0])
        assert "Traceback" not in proc.stderr and "sbatch: error" not in lines[0]
        assert not list(root.glob("logs/train/multiruns/*/0/results.json"))
        # nothing left behind: a refused command used to leave a sweep dir with multirun.yaml (and, when
        # sbatch refused, submitit's pickled jobs) that looked like a sweep whose jobs never wrote anything
        assert not list(root.glob("logs/*/multiruns/*")), list(root.rglob("*"))
        assert not list(root.glob("logs/*/optuna/*")), list(root.rglob("*"))
    # nothing was queued by any of them (other tests' jobs may be: only those submitted from here count)
    queued = jobs_under(tmp_path)
    assert not queued, [subprocess.run(["scontrol", "show", "job", line.split()[0]], capture_output=True,
                                       text=True).stdout for line in queued]  # fmt: skip


def test_a_job_under_the_account_and_qos_it_names_runs_and_is_accounted_there(slurm, pendulum_data, tmp_path):
    """Enforcement refuses what the cluster does not know, not everything: a job naming the local SLURM's
    account and its short QOS, within the QOS's 5 minutes, runs to the end and sacct records it there."""
    proc = run_module(
        "vla_hydra.train",
        "-m",
        "cluster=slurm",
        *small_job_args(tmp_path, pendulum_data, 20),
        "cluster.account=vla_hydra",
        "cluster.qos=short",
        "cluster.time_min=5",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    assert json.loads((sweep / "0" / "results.json").read_text())["train_steps"] == 20
    # the job id the launcher reports ("#0 completed (job 42): <run dir>")
    (job,) = re.findall(r"#0 completed \(job ([0-9_]+)\)", proc.stdout + proc.stderr)

    def accounted() -> list[str]:
        out = subprocess.run(
            ["sacct", "-j", job, "-n", "-X", "-P", "-o", "account,qos,state"], capture_output=True, text=True
        )
        return [line for line in out.stdout.splitlines() if line.endswith("|COMPLETED")]

    assert wait_until(accounted, 30, "sacct's record of the job") == ["vla_hydra|short|COMPLETED"]


def test_a_local_sweep_of_multi_process_jobs_is_refused_in_one_line(tmp_path, pendulum_data):
    """Lightning starts DDP's second process by re-running the command line: in a local -m sweep it
    would re-run the whole sweep."""
    proc = run_module(
        "vla_hydra.train",
        "-m",
        "trainer=ddp",
        "seed=0,1",
        *small_job_args(tmp_path, pendulum_data)[:-2],
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "trainer.devices=2: a local sweep (-m, hparams_search=, cluster=submitit_local) cannot run several "
            "processes per job; run the jobs one at a time without -m, or use cluster=slurm "
            "(2 of 2 jobs failed, each named above)"
        )
    )
    assert not list(tmp_path.glob("logs/train/multiruns/*/0/results.json"))


def test_a_local_sweep_of_multi_node_jobs_names_the_node_count(tmp_path, pendulum_data):
    """One device on each of 2 nodes is two processes too: the refusal named `trainer.devices=1`."""
    proc = run_module(
        "vla_hydra.train", "-m", "trainer=ddp", "trainer.devices=1", "+trainer.num_nodes=2", "seed=0",
        *small_job_args(tmp_path, pendulum_data)[:-2], cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "error: job 0 (trainer=ddp trainer.devices=1 +trainer.num_nodes=2 seed=0 " in proc.stderr
    assert (
        ": trainer.num_nodes=2: a local sweep (-m, hparams_search=, cluster=submitit_local) cannot run "
        in (proc.stderr)
    )
