"""cluster=slurm and cluster=submitit_local launchers (see vla_hydra.cluster.launcher)."""

from vla_hydra.cluster.launcher import WaitForAllJobs


class SlurmLauncher(WaitForAllJobs):
    _EXECUTOR = "slurm"


class LocalLauncher(WaitForAllJobs):
    _EXECUTOR = "local"
