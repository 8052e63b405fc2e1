"""`data=rollouts`: the datamodule of online algorithms. Their data is the experience they collect
themselves, so it only paces Lightning's loop: one tick per Lightning step, each running one
`train_iteration` (collect + update) of the algorithm."""

from __future__ import annotations

import itertools

import lightning as L
from torch.utils.data import DataLoader, IterableDataset


class _Ticks(IterableDataset):
    # no data to position on resume (cluster.resume.ResumeState): the algorithm's env_steps is the state
    paces_only = True

    def __iter__(self):
        return itertools.count()


class RolloutDataModule(L.LightningDataModule):
    """Endless ticks; the algorithm ends training when its env-step budget is spent."""

    name = "online"
    path = None
    num_raw_transitions = None
    ref_returns = None

    def reference_returns(self, env_ref_returns, time_limit=None):
        """Online runs score with the env's published references, if any (EnvFactory has dropped them
        when its episodes are not of the length they were published for)."""
        return dict(env_ref_returns) if env_ref_returns else None

    def stats(self):
        return None  # observation statistics come from the agent's own experience (if enabled)

    def check_compatible(self, spec) -> None:
        """Any env works: the algorithm collects its own data from it."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(), batch_size=None)
