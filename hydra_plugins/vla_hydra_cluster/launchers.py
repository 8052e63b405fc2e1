"""cluster=slurm, cluster=submitit_local and cluster=local launchers (see vla_hydra.cluster.launcher)."""

from vla_hydra.cluster.launcher import RunEveryJob, WaitForAllJobs


class SlurmLauncher(WaitForAllJobs):
    _EXECUTOR = "slurm"


class LocalLauncher(WaitForAllJobs):
    _EXECUTOR = "local"


class SequentialLauncher(RunEveryJob):
    """cluster=local: jobs one after another in this process, every job run (RunEveryJob)."""
