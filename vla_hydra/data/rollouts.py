"""`data=rollouts`: the datamodule of online algorithms. Their data is the experience they collect
themselves, so it only paces Lightning's loop: one tick per Lightning step, each running one
`train_iteration` (collect + update) of the algorithm."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import lightning as L
import torch


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

    def train_dataloader(self) -> _Ticks:
        return _Ticks()


class _Ticks:
    """What Lightning iterates over: a plain iterable, which it takes as a dataloader (a torch DataLoader
    around the ticks cost ~50 us per Lightning step, its fetch and profiler hooks, for values that carry
    nothing). There is no data to position on resume (cluster.resume.ResumeState): the algorithm's
    env_steps is the state."""

    def __iter__(self) -> Iterator[int]:
        return self._ticks()

    @staticmethod
    def _ticks() -> Iterator[int]:
        # at the first tick, the one number a DataLoader's iterator draws from torch's generator (its
        # workers' base seed): seeded runs keep the random streams, and results, they had with one
        torch.empty((), dtype=torch.int64).random_()
        yield from itertools.count()
