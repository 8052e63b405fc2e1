"""Hydra launchers over submitit (cluster=slurm, cluster=submitit_local) that wait for every job.

hydra-submitit-launcher stops at the first job whose process died (e.g. a bad option exits with
`error: ...` before Hydra records a result) and leaves the others unreported. These subclasses submit
the same job array, wait for all jobs, log one line per job (run dir or the job's error line) and hand
Hydra a failed JobReturn for each failure, so Hydra reports the first error after the sweep ends.
Everything else (parameters, the job-side `__call__`, requeue via `checkpoint`) is the plugin's.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from vla_hydra.cli.entry import exit_with_error
from vla_hydra.core.checkpoints import check_run_checkpoint
from vla_hydra.core.exceptions import ConfigError, VlaHydraError
from vla_hydra.core.logging import get_logger

log = get_logger(__name__)

# seconds between scheduler status queries while waiting for a sweep
STATUS_POLL_S = 5.0
# seconds to wait for the result file of a job the scheduler reports finished
RESULT_FILE_GRACE_S = 3
# seconds a SLURM job must look ended (no result, not in the queue) beyond the cluster's KillWait before
# it counts as failed: a requeued job is neither running nor listed by squeue until its old step has ended,
# which SLURM gives up to KillWait seconds (+2). 8 s in all misreported a requeue at KillWait=10 as a failure
REQUEUE_SETTLE_S = 8.0
# executor-level settings (the rest are per-job resources)
_EXECUTOR_KEYS = {"max_num_timeout"}
# at most one "waiting for N job(s): ..." line per this many seconds (and only when the queue changed)
QUEUE_REPORT_S = 30.0
# SLURM pending reasons under which a job does not start until something changes (held, a partition/QOS/
# association limit the request exceeds, a node down or reserved, an unknown account/QOS): the user hears
# about them at once instead of waiting silently. "Resources" and "Priority" are the normal waits.
_BLOCKED_PREFIXES = (
    "JobHeld",
    "Partition",
    "ReqNodeNotAvail",
    "NodeDown",
    "BadConstraints",
    "Invalid",
    "DependencyNever",
)


def blocked_reason(reason: str) -> bool:
    return reason.startswith(_BLOCKED_PREFIXES) or "PerJob" in reason  # QOSMaxCpuPerJobLimit, AssocMax...


def sweeper_needs_results(config: Any) -> bool:
    """An Optuna search (hparams_search=*_optuna) proposes trials from earlier results and records failed
    trials itself: its launcher must hand back every result, failures included, and wait for them."""
    return "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower()


class JobFailed(VlaHydraError, CompactHydraException):
    """A sweep job ended without a result. Hydra prints a CompactHydraException as its message alone
    (`error: job #1 (...): ...`), not as a traceback through its own sweep loop."""


class JobExitedWithError(JobFailed):
    """Raised in a sweep job in place of the entry point's user-error exit (SystemExit(1), after its
    `error: ...` line), so the job ends as a failed result and the sweep goes on: Hydra's launchers treat
    an exception as a failed job, while SystemExit ends the basic launcher's sweep at once, and submitit
    writes no result file for it (the failure was then learnt ~15 s later from SLURM's accounting)."""


@contextlib.contextmanager
def user_error_as_exception():
    """Around one sweep job: its user-error exit becomes JobExitedWithError carrying its error line. Other
    exits pass: Ctrl-C / SIGTERM (130 / 143) stop the sweep, and submitit's requeue exits with -1 after
    the pre-emption checkpoint."""
    from vla_hydra.cli.entry import last_error_line

    try:
        yield
    except SystemExit as exit_:
        if exit_.code != 1:
            raise
        raise JobExitedWithError(last_error_line() or "error: the job exited with status 1") from None


def job_error_line(job: Any, error: Exception) -> str:
    """The job's own last line if it printed one (`error: ...`, or the `terminated (SIGTERM) ...: continue
    with ckpt_path=...` of a scancel, which srun's `exited with exit code 143` would hide), else the last
    line of its stderr or the scheduler's message."""
    try:
        stderr = job.stderr() or ""
    except OSError:
        stderr = ""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "terminated (", "interrupted (")):
            return line
    if lines:
        return lines[-1]
    return " ".join(str(error).split())[:500]


def guarded_setup(lines: Sequence[Any]) -> list[str]:
    """`cluster.setup` as job script lines that stop the job at the first failing line. sbatch runs the
    script without `set -e`, so a failed `module load` used to be passed over and the job trained anyway.
    The job's stderr now ends on `error: cluster.setup[<i>] (<line>) failed with exit status <n>`, which
    the launcher reports as the job's error (job_error_line); a line that calls `exit` itself is named
    the same way, through the EXIT trap that prints the message."""
    script = [
        "# cluster.setup, each line checked: a failing one stops the job (vla_hydra...guarded_setup)",
        "trap 'echo \"$vla_setup_error$?\" >&2' EXIT",
    ]
    for i, line in enumerate(lines):
        error = f"error: cluster.setup[{i}] ({' '.join(str(line).split())}) failed with exit status "
        script += [
            f"vla_setup_error={shlex.quote(error)}",
            str(line),
            'vla_status=$?; [ "$vla_status" -eq 0 ] || exit "$vla_status"',
        ]
    return [*script, "trap - EXIT"]  # python's own exit is not a setup failure


def _remove_empty_template_folder(folder: Path) -> None:
    """submitit's local job controllers create the folder template itself (`.submitit/%j`, unexpanded)
    next to the per-job folders; it stays empty."""
    if "%" in folder.name and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def log_sweep_summary(config: Any, sweep_dir: Path, returns: Sequence[JobReturn]) -> None:
    """A training sweep's last word: how many jobs finished, where, and the command that tables them (an
    Optuna search, which launches batch after batch, ends on its own summary)."""
    if "algo" not in config or sweeper_needs_results(config):
        return  # vla_hydra.eval / collect sweeps: report tables training runs
    done = sum(r.status == JobStatus.COMPLETED for r in returns)
    sweep_dir = sweep_dir.absolute()
    table = f"; table and learning curves: python -m vla_hydra.report {sweep_dir}" if done else ""
    log.info(f"sweep dir {sweep_dir}: {done} of {len(returns)} job(s) finished{table}")


class WaitForAllJobs(BaseSubmititLauncher):
    """Subclassed in hydra_plugins.vla_hydra_cluster.launchers (Hydra loads launchers from there only)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """The job side (runs in the SLURM / local job process); the job still ends FAILED, exit code 1."""
        from vla_hydra.cluster.warning_signal import hold_warning_signal, release_warning_signal

        hold_warning_signal()  # until the job can act on a time-limit warning cleanly (not mid-import)
        try:
            with user_error_as_exception():
                return super().__call__(*args, **kwargs)
        finally:
            release_warning_signal()

    def _executor(self):
        import submitit

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        executor_args = {
            f"{self._EXECUTOR}_{key}": params.pop(key) for key in _EXECUTOR_KEYS if key in params
        }
        if params.get("setup"):
            params["setup"] = guarded_setup(params["setup"])
        executor = submitit.AutoExecutor(folder=folder, cluster=self._EXECUTOR, **executor_args)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{key if key in shared else f"{self._EXECUTOR}_{key}": value for key, value in params.items()}
        )
        return executor

    def check_settings(self, job_overrides: Sequence[Sequence[str]] = ()) -> None:
        """Everything that can be checked before a job is submitted, one line and exit 1: the cluster.*
        settings and each job's ckpt_path (a missing checkpoint was found in the job, after queueing).
        Also called by a sweeper before it writes anything (an Optuna study's database), with no
        job_overrides: the sweep's own config is checked, so a refused submission leaves nothing behind."""
        assert self.config is not None
        try:
            _check_cluster_settings(self.config)
            _refuse_unread_cluster_keys(
                self.config, "slurm" if self._EXECUTOR == "slurm" else "submitit_local"
            )
            if self._EXECUTOR == "slurm":
                _check_trainer_follows_cluster(self.config)
            else:
                _check_one_local_task(self.config)
            _refuse_swept_submission_settings(job_overrides, slurm=self._EXECUTOR == "slurm")
            if not OmegaConf.select(self.config, "cluster.wait", default=True):
                _check_detached_submission(self.config, self._EXECUTOR)
            for config in self._checkpoint_configs(job_overrides):
                check_run_checkpoint(config)
        except VlaHydraError as err:
            exit_with_error(str(err))

    def _checkpoint_configs(self, job_overrides: Sequence[Sequence[str]]) -> list[Any]:
        """The configs the jobs read their ckpt_path from. A job that sets ckpt_path itself is composed as
        it will compose itself (Hydra's load_sweep_config, ~0.3 s each: once per literal value); the
        others read the sweep's own config."""
        configs, seen = [], set()
        for overrides in job_overrides or [()]:
            own = tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "ckpt_path")
            if own in seen:
                continue
            if not any("$" in o for o in own):  # an interpolation (${seed}) may differ from job to job
                seen.add(own)
            loader = self.hydra_context.config_loader
            configs.append(loader.load_sweep_config(self.config, list(overrides)) if own else self.config)
        return configs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            self.check_settings(job_overrides)
        except SystemExit:
            _remove_refused_sweep_dir(sweep_dir)
            raise
        wait = bool(OmegaConf.select(self.config, "cluster.wait", default=True))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"submitit '{self._EXECUTOR}': {len(job_overrides)} job(s), sweep dir {sweep_dir}")
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        for num, overrides in zip(numbers, job_overrides, strict=True):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        # submitit echoes sbatch's stderr itself; a refusal is reported once, in the line below
        sbatch_stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(sbatch_stderr):
                jobs = self._executor().map_array(
                    self,
                    [list(overrides) for overrides in job_overrides],
                    ["hydra.sweep.dir"] * len(numbers),
                    numbers,
                    [f"job_id_for_{num}" for num in numbers],
                    [state] * len(numbers),
                )
        except KeyboardInterrupt:  # Ctrl-C inside sbatch: whether it queued the array is unknown here
            name = str(self.params.get("name", "")) or "?"
            where = (
                f"if sbatch had accepted them, the jobs are queued as '{name}' and write to {sweep_dir}: "
                f"squeue -u $USER -n {name}"
                if self._EXECUTOR == "slurm"
                else "the local jobs already started got the same Ctrl-C"
            )
            print(f"interrupted while submitting {len(numbers)} job(s); {where}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except Exception as err:  # noqa: BLE001 - e.g. submitit's FailedJobError: sbatch refused the jobs
            # nothing ran: one line and exit 1 (SystemExit passes Hydra's traceback printer)
            message = _sbatch_reason(str(err) or sbatch_stderr.getvalue())
            print(
                f"error: cluster: the scheduler refused the job(s): {message}{_refused_option(message, self.config)}",
                file=sys.stderr,
                flush=True,
            )
            _remove_refused_sweep_dir(sweep_dir)
            raise SystemExit(1) from None
        sys.stderr.write(sbatch_stderr.getvalue())  # sbatch's warnings on an accepted submission
        if not wait:
            return self._detach(sweep_dir, numbers, job_overrides, jobs)
        returns = self._wait_for_all(sweep_dir, numbers, job_overrides, jobs)
        _remove_empty_template_folder(Path(str(self.params["submitit_folder"])))
        log_sweep_summary(self.config, sweep_dir, returns)
        failures = [r._return_value for r in returns if r.status != JobStatus.COMPLETED]
        # Optuna's sweeper records a failed trial in its study before it re-raises: it gets the returns
        if failures and not sweeper_needs_results(self.config):
            # every job has been waited for and named above; the command ends on the first failure's line
            more = (
                f" ({len(failures)} of {len(returns)} jobs failed, each named above)"
                if len(failures) > 1
                else ""
            )
            print(f"{failures[0]}{more}", file=sys.stderr, flush=True)
            raise SystemExit(1)
        return returns

    def _wait_for_all(self, sweep_dir: Path, numbers: list[int], job_overrides, jobs) -> list[JobReturn]:
        returns: dict[int, JobReturn] = {}
        pending = dict(zip(numbers, zip(job_overrides, jobs, strict=True), strict=True))
        # SLURM jobs only: local jobs are child processes that report their own state, and their
        # watcher has no scheduler to ask (its update() raises NotImplementedError)
        watcher = getattr(jobs[0], "watcher", None) if _is_slurm_job(jobs[0]) else None
        from vla_hydra.cli.interrupts import Terminated, raise_on_sigterm

        # SIGTERM's default action would end this command in silence, leaving local jobs orphaned
        previous_sigterm = raise_on_sigterm()
        try:
            self._wait_loop(pending, returns, watcher)
        except KeyboardInterrupt:
            self._interrupted(sweep_dir, [job for _, job in pending.values()])
        except Terminated:
            self._interrupted(sweep_dir, [job for _, job in pending.values()], "SIGTERM")
        finally:
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        return [returns[num] for num in numbers]

    def _wait_loop(self, pending: dict, returns: dict, watcher: Any) -> None:
        queue_report = QueueReport()
        last_poll = time.monotonic()
        ended_since: dict[int, float] = {}
        while pending:
            # a finished job is seen from its result file; one that died without one only from the
            # scheduler: ask it (one sacct call for all jobs) every STATUS_POLL_S instead of submitit's
            # back-off of up to a minute
            if watcher is not None and time.monotonic() - last_poll > STATUS_POLL_S:
                watcher.update()
                queue_report.update([job for _, job in pending.values()])
                last_poll = time.monotonic()
            now = time.monotonic()
            for num, (_, job) in list(pending.items()):
                if not job.done() or _requeued(job):
                    ended_since.pop(num, None)
                    continue
                # a SLURM job that ended without a result may be between its requeued run's end and its
                # reappearance in the queue: it counts as failed once it has stayed so for a while
                if (
                    job.paths.result_pickle.exists()
                    or not _is_slurm_job(job)
                    or now - ended_since.setdefault(num, now) >= REQUEUE_SETTLE_S + _kill_wait_s()
                ):
                    overrides, job = pending.pop(num)
                    returns[num] = self._collect(num, overrides, job)
            if pending:
                time.sleep(0.5)

    def _detach(self, sweep_dir: Path, numbers: list[int], job_overrides, jobs) -> list[JobReturn]:
        """cluster.wait=false: the jobs are queued; this command ends like `sbatch` does."""
        for num, job in zip(numbers, jobs, strict=True):
            log.info(f"\t#{num} submitted: SLURM job {job.job_id}")
        ids = " ".join(str(job.job_id) for job in jobs)
        log.info(
            f"{len(jobs)} job(s) queued, not waited for (cluster.wait=false). Watch: squeue -j "
            f"{ids.replace(' ', ',')}; cancel: scancel {ids}; when they are done: "
            f"python -m vla_hydra.report {sweep_dir}"
        )
        returns = []
        for overrides in job_overrides:
            returned = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            returned.return_value = None
            returns.append(returned)
        return returns

    def _interrupted(self, sweep_dir: Path, unfinished: Sequence[Any], signal_name: str = "Ctrl-C") -> None:
        """Ctrl-C (or SIGTERM) while waiting for `unfinished` (the jobs not yet reported). SLURM jobs keep
        running (as after `sbatch`) and the user is told how to follow or cancel them; local jobs are this
        command's children, so they are cancelled. Exit 130 (143 for SIGTERM)."""
        ids = " ".join(str(job.job_id) for job in unfinished)
        stopped = "interrupted" if signal_name == "Ctrl-C" else f"terminated ({signal_name})"
        if not unfinished:
            message = f"{stopped}: every job of this sweep had ended; results in {sweep_dir}"
        elif self._EXECUTOR == "slurm":
            message = (
                f"{stopped}: {len(unfinished)} SLURM job(s) of this sweep stay queued or running and write to "
                f"{sweep_dir}; cancel them: scancel {ids}; summary when they are done: "
                f"python -m vla_hydra.report {sweep_dir}"
            )
        else:
            for job in unfinished:
                job.cancel(check=False)
            try:  # let them end (and print whatever they print on SIGINT) before our line
                for job in unfinished:
                    job._process.wait(timeout=30)
            except (Exception, KeyboardInterrupt):  # noqa: BLE001 - no handle, too slow, or Ctrl-C again
                pass
            message = f"{stopped}: cancelled {len(unfinished)} unfinished local job(s) of {sweep_dir}"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(130 if signal_name == "Ctrl-C" else 143)

    def _collect(self, num: int, overrides: Sequence[str], job: Any) -> JobReturn:
        # submitit waits 15 s for a missing result file (shared-filesystem lag) even when the scheduler
        # already says the job died; a few seconds keep a failed sweep from stalling per failure
        job._results_timeout_s = RESULT_FILE_GRACE_S
        try:
            returned = job.results()[0]
        except Exception as err:  # noqa: BLE001 - the job died before Hydra recorded a result
            returned = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            returned.return_value = err
            reason = job_error_line(job, err).removeprefix("error: ")
        else:
            if returned.status == JobStatus.COMPLETED:
                run_dir = OmegaConf.select(returned.hydra_cfg or {}, "hydra.runtime.output_dir", default="")
                log.info(f"\t#{num} completed (job {job.job_id}): {run_dir}")
                return returned
            # Hydra, inside the job, caught an exception of train() (not a user error: those exit with
            # their own line): its type and first line; the traceback is in the job's stderr file
            error = returned._return_value
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        output = _job_output(job)
        # submitit's words (in the job's log) when no time-limit requeue is left; the job's own error is then
        # whatever its exit interrupted (a warning during start-up can break an import mid-way)
        if "Job not requeued because: timed-out too many times" in output:
            reason = self._out_of_time(output)
        failure = JobFailed(
            f"error: job #{num} ({' '.join(filter_overrides(overrides))}), SLURM/submitit id {job.job_id}: {reason}"
        )
        failure.__cause__ = returned._return_value
        returned.return_value = failure
        log.error(f"\t#{num} failed (job {job.job_id}): {reason} (job log: {job.paths.stderr})")
        return returned

    def _out_of_time(self, output: str) -> str:
        """A job that reached its time limit once more than cluster.max_num_timeout requeues allow: how
        far it got is in its last checkpoint, which its log names (PreemptionCheckpoint's line)."""
        cluster = self.config.get("cluster") or {}
        saved = re.findall(r"saved (\S+last\.ckpt):? (?:at step|continue)", output)
        where = f"; continue it with ckpt_path={saved[-1]}" if saved else ""
        return (
            f"reached its time limit (cluster.time_min={cluster.get('time_min')}) with no requeue left "
            f"(cluster.max_num_timeout={cluster.get('max_num_timeout')}){where}"
        )


# words of sbatch's refusals -> the cluster.* option behind them (sbatch names its own option, or none)
# (the first match counts: "partition" last, other refusals may mention the partition's limits)
_SBATCH_REFUSALS = {
    "--mem": "mem_gb",
    "memory specification": "mem_gb",  # more --mem than the node has
    "gres": "gpus_per_node",
    "feature": "constraint",
    "time limit": "time_min",
    "node count": "nodes",
    "account": "account",
    "qos": "qos",
    "partition": "partition",
}


# sbatch's name for a QOS / association limit a job exceeds (QOSMaxWallDurationPerJobLimit,
# QOSMaxMemoryPerJob, AssocGrpCpuLimit, ...; a QOS with Flags=DenyOnLimit refuses such a job at submission instead of leaving it
# pending): the words of the limit -> the cluster.* option that asks for it
_LIMIT_REASON = re.compile(r"\b(?:QOS|Assoc)(?:Grp|Max|Min)\w+")  # some end in Limit, some not
_LIMIT_OPTIONS = {
    "WallDuration": "time_min",
    "Cpu": "cpus_per_task",
    "Node": "nodes",
    "Mem": "mem_gb",
    "GRES": "gpus_per_node",
}


def _sbatch_reason(stderr: str) -> str:
    """sbatch's refusal in one line: `QOSMaxWallDurationPerJobLimit; Job violates accounting/QOS policy
    (...)`, without the `sbatch: error: ` and `Batch job submission failed: ` before each part."""
    parts = []
    for line in stderr.splitlines():
        line = " ".join(line.split())
        for prefix in ("sbatch: error: ", "Batch job submission failed: "):
            line = line.removeprefix(prefix)
        if line:
            parts.append(line)
    return "; ".join(parts)


def _qos_max_wall(qos: str) -> str | None:
    """The MaxWall of a QOS as sacctmgr shows it (`00:05:00`), or None when it cannot say."""
    import subprocess

    try:
        out = subprocess.run(
            ["sacctmgr", "-n", "-P", "show", "qos", qos, "format=maxwall"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _limit_option(message: str, cluster: Any) -> str | None:
    """` (cluster.time_min=10 is over the MaxWall of cluster.qos=short: 00:05:00)` for a refusal that
    names the QOS / association limit the job exceeds; None for other refusals."""
    found = _LIMIT_REASON.search(message)
    if not found:
        return None
    reason = found.group(0)
    key = next((k for word, k in _LIMIT_OPTIONS.items() if word.lower() in reason.lower()), None)
    owner_key = "qos" if reason.startswith("QOS") else "account"
    owner = cluster.get(owner_key)
    owner_text = (
        f"cluster.{owner_key}={owner}"
        if owner is not None
        else f"your default {'QOS' if owner_key == 'qos' else 'account'}; cluster.{owner_key} not set"
    )
    # e.g. too many jobs (MaxSubmitJob): no one option asks for it
    if key is None or cluster.get(key) is None:
        return f" (a limit of {owner_text})"
    limit = ""
    if key == "time_min" and owner_key == "qos" and owner is not None:
        max_wall = _qos_max_wall(str(owner))
        limit = f": MaxWall {max_wall}" if max_wall else ""
    return f" (cluster.{key}={cluster.get(key)} is over the limit of {owner_text}{limit})"


def _refused_option(message: str, config: Any) -> str:
    """` (cluster.partition=gpu2)`: the user's setting an sbatch refusal is about, when it says which."""
    cluster = config.get("cluster") or {}
    limit = _limit_option(message, cluster)
    if limit is not None:
        return limit
    lowered = message.lower()
    if "invalid account" in lowered:  # "Invalid account or account/partition combination specified"
        account, partition = cluster.get("account"), cluster.get("partition")
        with_partition = f" with cluster.partition={partition}" if partition is not None else ""
        if account is not None:
            return f" (cluster.account={account}{with_partition})"
        return (
            f" (cluster.account not set: your default account{with_partition}; the accounts you may use: "
            "sacctmgr show assoc user=$USER format=account,partition,qos)"
        )
    for word, key in _SBATCH_REFUSALS.items():
        if word in lowered and cluster.get(key) is not None:
            return f" (cluster.{key}={cluster.get(key)})"
    unknown = re.search(r"unrecognized option '--([^=']+)", message)
    if unknown and unknown.group(1) in (cluster.get("additional_parameters") or {}):
        return f" (cluster.additional_parameters.{unknown.group(1)})"
    return ""


def _remove_refused_sweep_dir(sweep_dir: Path) -> None:
    """A submission refused before any job was queued: the sweep dir holds only what this command wrote
    (Hydra's multirun.yaml, submitit's pickled jobs and sbatch script). Removed, so a refused command
    leaves no sweep behind that looks like one whose jobs never wrote anything. A dir holding anything
    else (run dirs, a queued job's .submitit/<job id>/) is left as it is."""
    import shutil

    submitit_dir = sweep_dir / ".submitit"
    if not sweep_dir.is_dir() or any(
        p.name not in ("multirun.yaml", ".submitit") for p in sweep_dir.iterdir()
    ):
        return
    if submitit_dir.is_dir() and any(p.is_dir() for p in submitit_dir.iterdir()):
        return
    shutil.rmtree(sweep_dir, ignore_errors=True)


def _job_output(job: Any) -> str:
    """A job's stdout and stderr files as far as they exist."""
    try:
        return (job.stdout() or "") + (job.stderr() or "")
    except OSError:
        return ""


def _check_cluster_settings(config: Any) -> None:
    """The `cluster.*` values vla_hydra's config checks know (time_min, nodes, tasks, CPUs, ...), and a
    time limit longer than the pre-emption warning."""
    from vla_hydra.core.config import check_config_values

    cluster = config.get("cluster") or {}
    # every cluster.* value with a known rule (time_min, nodes, ..., the switches wait and auto_resume)
    if OmegaConf.is_dict(cluster):
        check_config_values(cluster, "cluster.")
    if (
        "time_min" in cluster
        and "signal_delay_s" in cluster
        and cluster.time_min * 60 <= cluster.signal_delay_s
    ):
        raise ConfigError(
            f"cluster.time_min={cluster.time_min}: must end after the pre-emption warning "
            f"(cluster.signal_delay_s={cluster.signal_delay_s} s before the end)"
        )


# cluster.* keys vla_hydra's code reads itself; the others take effect only through an interpolation
# (hydra.launcher's ${cluster.partition}, trainer.devices: ${cluster.tasks_per_node}, ...)
_CLUSTER_KEYS_READ_BY_CODE = ("auto_resume", "wait")


def _refuse_unread_cluster_keys(config: Any, cluster_name: str) -> None:
    """cluster=slurm / submitit_local: a `cluster.` key nothing reads, close to one that is read. A typo in
    a user's cluster yaml or conf/local/default.yaml (`partiton: gpu`, `cpus_per_tsk: 2`) was passed over
    in silence and the job was submitted with the default; on the command line Hydra refuses the same key."""
    import difflib

    cluster = config.get("cluster")
    if not OmegaConf.is_dict(cluster):
        return
    # unresolved: interpolations show as ${...}; Hydra's own node only through its launcher's settings
    text = OmegaConf.to_yaml(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))
    text += OmegaConf.to_yaml(config.hydra.launcher) if "hydra" in config else ""
    read = [
        key
        for key in cluster
        if key in _CLUSTER_KEYS_READ_BY_CODE or re.search(rf"\bcluster\.{re.escape(str(key))}\b", text)
    ]
    for key in cluster:
        # only a near miss of a setting: a key of the user's own may feed an interpolation that is
        # already resolved here (cluster.setup's lines are)
        close = difflib.get_close_matches(str(key), [str(k) for k in read], n=1) if key not in read else []
        if close:
            raise ConfigError(
                f"cluster.{key}: not a cluster={cluster_name} setting, nothing reads it; did you mean "
                f"cluster.{close[0]}?"
            )


def _check_trainer_follows_cluster(config: Any) -> None:
    """trainer.num_nodes / trainer.devices given instead of cluster.nodes / cluster.tasks_per_node: SLURM
    starts one task per device from the cluster.* values, and Lightning refused the mismatch inside the job,
    after queueing, with a ValueError whose hint (`Set devices=1`) names no vla_hydra option."""
    trainer = config.get("trainer") or {}
    cluster = config.get("cluster") or {}
    for trainer_key, cluster_key in (("num_nodes", "nodes"), ("devices", "tasks_per_node")):
        wanted, given = cluster.get(cluster_key), trainer.get(trainer_key)
        if isinstance(given, int) and isinstance(wanted, int) and given != wanted:
            raise ConfigError(
                f"trainer.{trainer_key}={given}: with cluster=slurm it follows cluster.{cluster_key} "
                f"({wanted}; SLURM starts the processes): set cluster.{cluster_key}={given} instead"
            )


def _check_one_local_task(config: Any) -> None:
    """cluster=submitit_local with cluster.tasks_per_node > 1: submitit started that many copies of each
    job, all training the same run into the same run dir (the second failed on "run dir ... is in use by
    another running process"); nothing tells Lightning they are ranks of one job, as SLURM does."""
    tasks = OmegaConf.select(config, "cluster.tasks_per_node", default=1)
    if isinstance(tasks, int) and tasks > 1:
        raise ConfigError(
            f"cluster.tasks_per_node={tasks}: cluster=submitit_local runs one process per job (each task "
            "would train the same run again); several processes per job need cluster=slurm"
        )


def _refuse_swept_submission_settings(job_overrides: Sequence[Sequence[str]], slurm: bool) -> None:
    """A sweep over cluster.* values (`-m cluster.partition=a,b`): Hydra composes the launcher's settings
    once, without the swept values, so every job was submitted with the sweep's one partition, time, memory
    ... while its config said otherwise; under SLURM, likewise the task layout behind trainer.devices and
    trainer.num_nodes."""
    values: dict[str, list[str]] = {}
    for overrides in job_overrides:
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if value not in values.setdefault(key, []):
                values[key].append(value)
    for key, seen in values.items():
        swept = len(seen) > 1
        if swept and (
            key.startswith("cluster.") or (slurm and key in ("trainer.devices", "trainer.num_nodes"))
        ):
            raise ConfigError(
                f"{key}={','.join(seen)}: one sweep submits all its jobs with one set of cluster settings "
                "(composed without the swept values); run one sweep per value"
            )


def _check_detached_submission(config: Any, executor: str) -> None:
    """cluster.wait=false only where jobs outlive this command and nothing needs their results now."""
    if executor != "slurm":
        raise ConfigError(
            "cluster.wait=false: only with cluster=slurm (cluster=submitit_local jobs are children of "
            "this command)"
        )
    if sweeper_needs_results(config):
        raise ConfigError(
            "cluster.wait=false: an Optuna search (hparams_search=) needs each trial's result to propose "
            "the next"
        )


class QueueReport:
    """While a SLURM sweep waits: one line when the queue's picture changes (at most every QUEUE_REPORT_S)
    and a warning, once per job and one line per reason, for jobs whose pending reason keeps them from
    starting until something changes."""

    def __init__(self) -> None:
        self.last_line = ""
        self.last_time = -float("inf")
        self.warned: set[str] = set()

    def update(self, jobs: Sequence[Any]) -> None:
        states = _queue_states([str(job.job_id) for job in jobs])
        if not states:
            return
        blocked: dict[str, list[str]] = {}  # reason -> job ids not warned about yet: one line per reason
        for job_id, (state, reason) in sorted(states.items()):
            if state == "PENDING" and blocked_reason(reason) and job_id not in self.warned:
                self.warned.add(job_id)
                blocked.setdefault(reason, []).append(job_id)
        for reason, ids in blocked.items():
            shown = " ".join(ids[:8]) + (f" ... ({len(ids)} jobs)" if len(ids) > 8 else "")
            fix = (
                f"release it: scontrol release {' '.join(ids)}"
                if reason.startswith("JobHeld")
                else "change the request (scontrol update)"
            )
            log.warning(
                f"SLURM job {shown} pending with reason {reason}: it will not start until that changes "
                f"(scontrol show job {ids[0]}); {fix}, or cancel: scancel {' '.join(ids)}"
            )
        running = sum(state == "RUNNING" for state, _ in states.values())
        reasons: dict[str, int] = {}
        for state, reason in states.values():
            if state == "PENDING":
                reasons[reason] = reasons.get(reason, 0) + 1
        waiting = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items()))
        line = f"waiting for {len(jobs)} job(s): {running} running, {sum(reasons.values())} pending" + (
            f" ({waiting})" if waiting else ""
        )
        now = time.monotonic()
        if line != self.last_line and now - self.last_time >= QUEUE_REPORT_S:
            log.info(line)
            self.last_line, self.last_time = line, now


def _queue_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, pending reason)} of the listed jobs still in SLURM's queue (array tasks one by one)."""
    import subprocess

    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for row in out.splitlines():
        job_id, state, reason = (row.split("|") + ["", ""])[:3]
        if job_id.strip():
            states[job_id.strip()] = (state.strip(), reason.strip())
    return states


def _is_slurm_job(job: Any) -> bool:
    return getattr(job, "_cancel_command", "") == "scancel"


@functools.lru_cache(maxsize=1)
def _kill_wait_s() -> float:
    """The SLURM controller's KillWait (`scontrol show config`; SLURM's default 30 s when it cannot say)."""
    import subprocess

    try:
        config = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 30.0
    found = re.search(r"^KillWait\s*=\s*(\d+)", config, re.MULTILINE)
    return float(found.group(1)) + 2 if found else 30.0


def _requeued(job: Any) -> bool:
    """A job that looks finished may have been requeued (pre-emption): for a moment SLURM accounting
    reports the killed run as ended while the job waits in the queue again. Such a job is still listed by
    squeue; a job that really ended is not. A result file does not settle it: an earlier attempt can leave
    one (a requeue signal during start-up, caught in the middle of an import, ended rank 0 of a DDP job as
    a failed result), so a job with one counts as requeued while squeue has it pending or running."""
    if not _is_slurm_job(job):
        return False
    import subprocess

    try:
        listed = subprocess.run(
            ["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], capture_output=True, text=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return False
    if job.paths.result_pickle.exists():
        return bool({"PENDING", "RUNNING", "REQUEUED"} & set(listed))
    return bool(listed)


def requeued_by_slurm() -> bool:
    """Inside a SLURM job: whether SLURM has requeued it (`scontrol requeue`, a pre-emption with
    PreemptMode=REQUEUE), so the SIGTERM that follows ends this attempt only and the job starts again in
    its run dir. SLURM counts the requeue (scontrol's Restarts) before it signals the job, while
    SLURM_RESTART_COUNT is this attempt's count; a scancel leaves the count as it is."""
    import os
    import subprocess

    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    restarts = re.search(r"\bRestarts=(\d+)", shown)
    return bool(restarts) and int(restarts.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)


class RunEveryJob(BasicLauncher):
    """cluster=local's launcher: Hydra's basic launcher (jobs one after another in this process), except
    that a failing job no longer ends the sweep. Each failure is named when it happens (a user error by its
    own `error: job N (...)` line, anything else with its traceback); the jobs after it still run, and the
    command then ends (exit 1) on the first failure's line, as the cluster launchers do."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        def job(cfg: Any) -> Any:
            try:
                with user_error_as_exception():
                    return task_function(cfg)
            except JobExitedWithError:
                raise  # its line is out already
            except Exception:
                from hydra.core.hydra_config import HydraConfig

                # a bug: its traceback now, not after the other jobs
                log.exception(f"job {HydraConfig.get().job.num} failed:")
                raise

        super().setup(hydra_context=hydra_context, task_function=job, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = super().launch(job_overrides, initial_job_idx)
        log_sweep_summary(self.config, Path(str(self.config.hydra.sweep.dir)), returns)
        failed = [(initial_job_idx + i, r) for i, r in enumerate(returns) if r.status == JobStatus.FAILED]
        # an Optuna search records failed trials itself (and then stops): it gets every return
        if not failed or sweeper_needs_results(self.config):
            return returns
        num, first = failed[0]
        error = first._return_value
        # a one-job sweep's user error is on stderr already; a bug's traceback went to the log (stdout)
        if len(returns) > 1 or not isinstance(error, JobExitedWithError):
            line = (
                str(error)
                if isinstance(error, JobExitedWithError)
                else f"error: job {num} ({' '.join(filter_overrides(first.overrides))}): "
                f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            )
            more = (
                f" ({len(failed)} of {len(returns)} jobs failed, each named above)" if len(failed) > 1 else ""
            )
            print(f"{line}{more}", file=sys.stderr, flush=True)
        raise SystemExit(1)
