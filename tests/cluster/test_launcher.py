"""The cluster launcher's pieces that need no scheduler: which pending reasons are reported at once, the
grouping of those reports, and which sweepers must get every result back."""

from __future__ import annotations

import logging
import os
import zipfile

import pytest

from tests.conftest import compose_config
from vla_hydra.cluster import launcher


@pytest.mark.parametrize(
    "reason,blocked",
    [
        ("JobHeldUser", True),
        ("PartitionTimeLimit", True),
        ("QOSMaxWallDurationPerJobLimit", True),
        ("AssocMaxCpuPerJobLimit", True),
        ("ReqNodeNotAvail, UnavailableNodes:node3", True),
        ("NodeDown", True),
        ("InvalidAccount", True),
        ("Resources", False),  # the normal waits
        ("Priority", False),
        ("BeginTime", False),  # a requeued job's short hold
        ("None", False),
    ],
)
def test_pending_reasons_that_keep_a_job_from_starting(reason, blocked):
    assert launcher.blocked_reason(reason) is blocked


class _Job:
    def __init__(self, job_id: str):
        self.job_id = job_id


def test_blocked_jobs_are_reported_once_in_one_line_per_reason(monkeypatch, caplog):
    queue = {f"7_{i}": ("PENDING", "PartitionTimeLimit") for i in range(10)}
    queue |= {"8": ("PENDING", "JobHeldUser"), "9": ("RUNNING", "None"), "10": ("PENDING", "Resources")}
    monkeypatch.setattr(launcher, "_queue_states", lambda ids: {i: queue[i] for i in ids if i in queue})
    jobs = [_Job(i) for i in queue]
    report = launcher.QueueReport()
    with caplog.at_level(logging.INFO, logger=launcher.__name__):
        report.update(jobs)
        report.update(jobs)  # the same picture again: nothing new to say
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    limit = next(w for w in warnings if "PartitionTimeLimit" in w)
    assert limit.startswith("SLURM job 7_0 7_1 7_2 7_3 7_4 7_5 7_6 7_7 ... (10 jobs) pending with reason")
    assert limit.endswith("scancel " + " ".join(f"7_{i}" for i in range(10)))
    held = next(w for w in warnings if "JobHeldUser" in w)
    assert "release it: scontrol release 8" in held
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [
        "waiting for 13 job(s): 1 running, 12 pending (JobHeldUser: 1, PartitionTimeLimit: 10, Resources: 1)"
    ]


def test_an_optuna_search_gets_every_result_back_and_a_grid_sweep_does_not():
    optuna = compose_config("train", ["hparams_search=bc_optuna", "cluster=slurm"], return_hydra_config=True)
    assert launcher.sweeper_needs_results(optuna)
    grid = compose_config("train", ["hparams_search=bc_lr_grid", "cluster=slurm"], return_hydra_config=True)
    assert not launcher.sweeper_needs_results(grid)


@pytest.mark.parametrize(
    "override,line",
    [
        # any word used to count as true (and cluster.wait=0 detached the sweep, whose jobs then failed)
        ("cluster.wait=maybe", "error: cluster.wait=maybe: expected true or false"),
        ("cluster.wait=0", "error: cluster.wait=0: expected true or false"),
        ("cluster.auto_resume=no", "error: cluster.auto_resume=no: expected true or false"),
        ("cluster.max_num_timeout=-1", "error: cluster.max_num_timeout=-1: expected a number >= 0"),
        # sbatch refused these without naming the option ("Invalid --mem specification")
        ("cluster.mem_gb=-1", "error: cluster.mem_gb=-1: expected a number >= 0"),
        ("cluster.gpus_per_node=-2", "error: cluster.gpus_per_node=-2: expected a number >= 0"),
        # a wrong type for the launcher's typed config used to be an OmegaConf traceback
        (
            "cluster.time_min=abc",
            "error: cluster.time_min: Value 'abc' of type 'str' could not be converted to Integer "
            "(it sets hydra.launcher.timeout_min)",
        ),
        # a string for the launcher's list named no option ("Invalid value assigned: str is not a ListConfig")
        (
            "cluster.setup=module load cuda",
            "error: cluster.setup: Invalid value assigned: str is not a ListConfig, list or tuple. "
            "(it sets hydra.launcher.setup)",
        ),
        # a near miss of a setting (as from a user's cluster yaml) was passed over: the job got the default
        (
            "+cluster.partiton=gpu",
            "error: cluster.partiton: not a cluster=slurm setting, nothing reads it; did you mean "
            "cluster.partition?",
        ),
        # Lightning's ValueError inside the job, after queueing, hinting at `devices=1`
        (
            "trainer.devices=2",
            "error: trainer.devices=2: with cluster=slurm it follows cluster.tasks_per_node (1; SLURM starts "
            "the processes): set cluster.tasks_per_node=2 instead",
        ),
        # swept values the launcher never saw: both jobs went to the default partition / task layout
        (
            "cluster.partition=a,b",
            "error: cluster.partition=a,b: one sweep submits all its jobs with one set of cluster settings "
            "(composed without the swept values); run one sweep per value",
        ),
        (
            "trainer.devices=1,2",
            "error: trainer.devices=1,2: one sweep submits all its jobs with one set of cluster settings "
            "(composed without the swept values); run one sweep per value",
        ),
        # the job found it only once it ran, after queueing; the line is the one a local run prints
        ("ckpt_path=/no/such.ckpt", "error: ckpt_path=/no/such.ckpt: file not found"),
        (
            "ckpt_path=best",
            "error: ckpt_path=best: not supported here; pass a checkpoint file (or ckpt_path=last)",
        ),
        (
            "experiment=eval",
            "error: ckpt_path: required with eval_only=true (experiment=eval); pass ckpt_path=<checkpoint>, "
            "or several separated by commas (one job each)",
        ),
    ],
)
def test_cluster_settings_are_refused_in_one_line_before_anything_is_submitted(tmp_path, override, line):
    """No SLURM needed: these stop before sbatch is called."""
    from tests.conftest import run_module

    proc = run_module(
        "vla_hydra.train", "-m", "cluster=slurm", override, f"hydra.sweep.dir={tmp_path}/sweep", timeout=120
    )
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if not ln.startswith("[")] == [line]
    assert not list(tmp_path.rglob(".submitit"))
    assert not (tmp_path / "sweep").exists()  # not even Hydra's multirun.yaml is left


def test_a_missing_checkpoint_of_one_job_is_refused_before_any_job_starts(tmp_path):
    """experiment=eval over two checkpoints, one missing: nothing runs (cluster=submitit_local would have
    run the good one and failed the other in its job)."""
    from tests.conftest import run_module

    good = tmp_path / "good.ckpt"
    zipfile.ZipFile(good, "w").close()  # what can be told without torch: a complete zip file
    proc = run_module(
        "vla_hydra.train", "experiment=eval", "cluster=submitit_local", f"ckpt_path={good},{tmp_path}/no.ckpt",
        f"paths.root_dir={tmp_path}", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if not ln.startswith("[")] == [
        f"error: ckpt_path={tmp_path}/no.ckpt: file not found"
    ]
    assert not list(tmp_path.glob("logs/eval/multiruns/*"))  # no sweep dir left behind


@pytest.mark.parametrize(
    "override,line",
    [
        # submitit started cluster.tasks_per_node copies of each job, all training into the same run dir: the
        # second failed on "run dir ... is in use by another running process", after the first had started
        (
            "cluster.tasks_per_node=2",
            "error: cluster.tasks_per_node=2: cluster=submitit_local runs one process per job (each task would "
            "train the same run again); several processes per job need cluster=slurm",
        ),
        # a typo in a user's cluster yaml built on submitit_local (`cpus_per_tsk: 2`) was passed over in silence
        # and every job ran with cluster.cpus_per_task's default, as under cluster=slurm before
        (
            "+cluster.cpus_per_tsk=2",
            "error: cluster.cpus_per_tsk: not a cluster=submitit_local setting, nothing reads it; did you mean "
            "cluster.cpus_per_task?",
        ),
    ],
)
def test_a_submitit_local_setting_it_cannot_honour_is_refused_before_any_job_starts(tmp_path, override, line):
    from tests.conftest import run_module

    proc = run_module(
        "vla_hydra.train", "-m", "cluster=submitit_local", override, "trainer.max_steps=1",
        f"paths.root_dir={tmp_path}", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if not ln.startswith("[")] == [line]
    assert not list(tmp_path.glob("logs/train/multiruns/*"))  # no sweep dir left behind


def test_ctrl_c_inside_sbatch_ends_in_one_line_that_says_how_to_find_the_jobs(tmp_path):
    """A Ctrl-C while sbatch runs used to end in a traceback without a word about the jobs it may have
    queued. A real `sbatch` on PATH that hangs (as on a slow controller) gets the interrupt."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    bin_dir, started = tmp_path / "bin", tmp_path / "sbatch_started"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 120\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    args = ["-m", "cluster=slurm", "seed=0,1", f"paths.root_dir={tmp_path}", "trainer.max_steps=10"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla_hydra.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), proc.communicate(timeout=30)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted while submitting 2 job(s); if sbatch had accepted them, the jobs are")
    assert last.endswith("squeue -u $USER -n train")
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "setup,status,error",
    [
        (
            ["export A=1", "false", "echo never"],
            1,
            "error: cluster.setup[1] (false) failed with exit status 1",
        ),
        (["true", "exit 3"], 3, "error: cluster.setup[1] (exit 3) failed with exit status 3"),
        (["# a comment", "", "export A=1"], 0, None),
    ],
)
def test_a_failing_setup_line_stops_the_job_script_and_is_named(setup, status, error):
    """sbatch runs the job script without `set -e`: a failing `module load` used to be passed over."""
    import subprocess

    script = "\n".join([*launcher.guarded_setup(setup), 'echo "python starts, A=$A"'])
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == status
    if error:
        assert (proc.stdout, proc.stderr) == ("", error + "\n")
    else:
        assert (proc.stdout, proc.stderr) == ("python starts, A=1\n", "")


@pytest.mark.parametrize(
    "env,restarts,requeued",
    [
        ({"SLURM_JOB_ID": "7"}, 1, True),  # scontrol requeue / pre-emption: counted before the SIGTERM
        ({"SLURM_JOB_ID": "7"}, 0, False),  # scancel
        ({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}, 1, False),  # scancel of the requeued run
        ({}, 1, False),  # not a SLURM job: scontrol is not asked
    ],
)
def test_a_sigterm_that_slurm_follows_with_a_requeue_is_told_apart(
    tmp_path, monkeypatch, env, restarts, requeued
):
    """The job's SIGTERM is logged as a requeue (a warning), not as the run's failure, only when SLURM
    counted a requeue of this job (a real `scontrol` stands in: it prints what SLURM 22.05's does)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        f'#!/bin/sh\n[ "$*" = "show job -o 7" ] && echo "JobId=7 JobName=train Requeue=1 Restarts={restarts} '
        'BatchFlag=1 JobState=COMPLETING"\n'
    )
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launcher.requeued_by_slurm() is requeued


@pytest.mark.parametrize(
    "result_file,state,requeued",
    [
        (False, "PENDING", True),  # killed for its requeue: waits in the queue again
        (False, "", False),  # ended without a result: a failure
        (True, "RUNNING", True),  # the result file of an earlier attempt (a requeue during start-up)
        (True, "PENDING", True),
        (True, "COMPLETING", False),  # this attempt's result
        (True, "", False),
    ],
)
def test_a_requeued_job_is_waited_for_even_with_an_earlier_attempts_result(
    tmp_path, monkeypatch, result_file, state, requeued
):
    """A DDP job signalled during start-up left rank 0's failed result behind and was requeued; the sweep
    reported that stale failure as soon as rank 1 finished the requeued run (which then succeeded). A real
    `squeue` stands in, printing what SLURM 22.05's does."""
    from types import SimpleNamespace

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(f'#!/bin/sh\n[ "$*" = "-h -j 7 -o %T" ] && echo "{state}"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = tmp_path / "7_0_result.pkl"
    if result_file:
        result.write_bytes(b"")
    job = SimpleNamespace(job_id="7", _cancel_command="scancel", paths=SimpleNamespace(result_pickle=result))
    assert launcher._requeued(job) is requeued


@pytest.mark.parametrize(
    "stderr,line",
    [
        (  # scancel: the run's own line says where to continue; srun's exit code does not
            "terminated (SIGTERM) at update 300; saved /r/checkpoints/last.ckpt: continue with "
            "ckpt_path=/r/checkpoints/last.ckpt\nslurmstepd: error: *** STEP 5.0 CANCELLED ***\n"
            "srun: error: node: task 0: Exited with exit code 143\n",
            "terminated (SIGTERM) at update 300; saved /r/checkpoints/last.ckpt: continue with "
            "ckpt_path=/r/checkpoints/last.ckpt",
        ),
        (
            "[INFO] loading\nerror: data.path=/x: file not found\nsrun: error: exit code 1\n",
            "error: data.path=/x: file not found",
        ),
        (
            "[INFO] loading\nslurmstepd: error: Detected 1 oom_kill event\n",
            "slurmstepd: error: Detected 1 oom_kill event",
        ),
        ("", "job 5 failed"),
    ],
)
def test_a_failed_job_is_reported_by_its_own_last_line(stderr, line):
    class Job:
        def stderr(self):
            return stderr

    assert launcher.job_error_line(Job(), RuntimeError("job 5\n failed")) == line


def test_an_sbatch_refusal_is_followed_by_the_setting_it_is_about():
    """sbatch's words for more memory than a node has name no option: the line used to end without
    the user's setting."""
    from omegaconf import OmegaConf

    config = OmegaConf.create({"cluster": {"mem_gb": 10000, "partition": "debug"}})
    message = (
        "sbatch: error: Memory specification can not be satisfied sbatch: error: Batch job submission "
        "failed: Requested node configuration is not available"
    )
    assert launcher._refused_option(message, config) == " (cluster.mem_gb=10000)"


@pytest.mark.parametrize(
    ("cluster", "message", "setting"),
    [
        # no cluster.account: SLURM used the default account, which the line says and how to list the others
        (
            {"account": None, "partition": "gpu"},
            "Invalid account or account/partition combination specified",
            " (cluster.account not set: your default account with cluster.partition=gpu; the accounts you may "
            "use: sacctmgr show assoc user=$USER format=account,partition,qos)",
        ),
        # a QOS limit names the option that asks for too much, not "time limits" from sbatch's generic words
        (
            {"cpus_per_task": 64, "qos": "normal", "time_min": 60},
            "QOSMaxCpuPerJobLimit; Job violates accounting/QOS policy (job submit limit, user's size and/or time "
            "limits)",
            " (cluster.cpus_per_task=64 is over the limit of cluster.qos=normal)",
        ),
        (
            {"time_min": 600, "account": None},
            "AssocMaxWallDurationPerJobLimit; Job violates accounting/QOS policy (job submit limit, user's size "
            "and/or time limits)",
            " (cluster.time_min=600 is over the limit of your default account; cluster.account not set)",
        ),
        (
            {"mem_gb": 500, "qos": "normal"},
            "QOSMaxMemoryPerJob; Job violates accounting/QOS policy (job submit limit, user's size and/or time "
            "limits)",
            " (cluster.mem_gb=500 is over the limit of cluster.qos=normal)",
        ),
        (
            {"qos": None, "time_min": 60},
            "QOSMaxSubmitJobPerUserLimit; Job violates accounting/QOS policy (job submit limit, user's size "
            "and/or time limits)",
            " (a limit of your default QOS; cluster.qos not set)",
        ),
    ],
)
def test_an_accounting_refusal_names_the_setting_and_whose_limit(cluster, message, setting):
    from omegaconf import OmegaConf

    assert launcher._refused_option(message, OmegaConf.create({"cluster": cluster})) == setting


def test_sbatch_stderr_becomes_one_reason():
    stderr = (
        "sbatch: error: QOSMaxWallDurationPerJobLimit\n"
        "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
        "user's size and/or time limits)\n"
    )
    assert launcher._sbatch_reason(stderr) == (
        "QOSMaxWallDurationPerJobLimit; Job violates accounting/QOS policy (job submit limit, user's size "
        "and/or time limits)"
    )
