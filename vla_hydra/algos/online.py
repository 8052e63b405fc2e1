"""What online algorithms (PPO, SAC, GRPO, DAgger, GAIL) share on top of PolicyAlgorithm: the
training envs, the env-step budget, running observation statistics and episode bookkeeping.

The Lightning pattern is the offline one with rollouts as the data: the datamodule (`data=rollouts`)
only paces the loop, and each Lightning step runs `train_iteration`, which collects experience from
`env.num_envs` vectorised envs and does its gradient updates. Training ends when the env-step budget
`algo.total_timesteps` is spent (`trainer.should_stop`), so online algo configs set `max_updates: -1`.

Several processes (trainer=ddp/fsdp/deepspeed): every rank runs its own `num_envs` envs, seeded apart
(rank r's envs take the seeds after rank r-1's) and with its own random streams, and the gradients of
its updates are averaged with the others'. `env_steps` and the budget count the steps of all ranks, so
the same `total_timesteps` ends after 1/world_size of the iterations; running observation and reward
statistics are pooled over all ranks' experience (models/normalization.py).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from vla_hydra.algos.base import PolicyAlgorithm
from vla_hydra.core.logging import get_logger
from vla_hydra.data.stats import DatasetStats
from vla_hydra.envs.factory import EnvFactory, EnvSpec, env_rewards
from vla_hydra.models.normalization import RunningObservationNormalizer


def final_observations(next_obs: np.ndarray, done: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
    """The true next observations of a same-step-autoreset vector step: for envs whose episode just
    ended, the env returned the *next* episode's first observation; the last one is in info["final_obs"].
    Needed to bootstrap values through time-limit truncations."""
    real_next = next_obs.copy()
    if done.any() and "final_obs" in infos:
        for i in np.flatnonzero(infos.get("_final_obs", done)):
            real_next[i] = infos["final_obs"][i]
    return real_next


class OnlineAlgorithm(PolicyAlgorithm):
    """Base of algorithms that learn from their own interaction with `env`.

    Args:
        env: the `env=` EnvFactory (algo configs pass `env: ${env}`); its num_envs/vectorization set the
            training envs.
        total_timesteps: env-step budget, summed over the parallel envs and processes (shared by all online algos).
        normalize_observations: keep running observation mean/std from collected experience (saved in
            checkpoints; inference normalises with the final statistics).
        seed: seeds the training envs' first reset.
        max_updates: gradient-update limit, read by trainer.max_steps (conf/trainer/default.yaml);
            -1 = none, the env-step budget ends training.
    """

    # whether data= gives it a dataset it reads (GAIL's expert transitions); the others learn from what
    # they collect only, and data=rollouts paces their loop
    reads_dataset = False

    def __init__(
        self,
        spec: EnvSpec,
        env: EnvFactory,
        total_timesteps: int,
        normalize_observations: bool = False,
        seed: int = 0,
        max_updates: int = -1,
        updates_per_step: int = 1,
        stats: DatasetStats | None = None,
    ):
        super().__init__(spec, updates_per_step, stats)
        self.max_updates = int(max_updates)
        self.env_factory = env
        self.total_timesteps = int(total_timesteps)
        self.seed = int(seed)
        self.normalize_observations = normalize_observations
        if normalize_observations:
            self.obs_normalizer = RunningObservationNormalizer(spec.observation_shape)
        # neither running nor dataset statistics: obs_normalizer keeps mean 0, std 1
        self._identity_normalizer = not normalize_observations and stats is None
        # saved in checkpoints: the budget continues where it stopped after a resume
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))
        self.env_steps_at_fit_start = 0
        self.envs = None
        self.obs: np.ndarray | None = None
        # this process and how many train together (set in on_fit_start; 0 and 1 outside a trainer)
        self.rank, self.world_size = 0, 1
        # finished training episodes: [{"env_steps", "return", "length"}] (for curves and the progress bar)
        self.episode_log: list[dict[str, float]] = []
        self._episodes_logged = 0
        # return and length so far of each training env's current episode (made at the first step)
        self._episode_returns: np.ndarray | None = None
        self._episode_lengths: np.ndarray | None = None

    # -- what subclasses provide ---------------------------------------------------------------
    def train_iteration(self, optimizers) -> dict[str, torch.Tensor]:
        """Collect experience and update; returns scalar losses (tensors, no host sync needed)."""
        raise NotImplementedError

    # -- environment interaction ---------------------------------------------------------------
    @property
    def num_envs(self) -> int:
        """Parallel training envs; an algorithm that needs another count (GRPO's groups) overrides it."""
        return int(self.env_factory.num_envs)

    @property
    def env_steps_per_vector_step(self) -> int:
        """Env steps one vector step adds to `env_steps`: this rank's envs times the ranks."""
        return self.num_envs * self.world_size

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        self.env_steps_at_fit_start = int(self.env_steps)  # > 0 when resumed from a checkpoint
        self.envs = self.env_factory.make_training_vector(self.num_envs)
        # after a resume, a different first-reset seed: the resumed run should not replay its start
        first_seed = self.seed + int(self.env_steps) + self.rank * self.num_envs
        self.obs, _ = self.envs.reset(seed=[first_seed + i for i in range(self.num_envs)])
        self._episode_returns = self._episode_lengths = None

    def on_fit_end(self) -> None:
        self.close_envs()

    def close_envs(self, terminate: bool = False) -> None:
        """Close the training envs; `terminate`: at once, without waiting for a step in flight (an
        interrupted fit, whose async workers would otherwise be closed at interpreter exit, noisily)."""
        if self.envs is not None:
            self.envs.close(terminate=True) if terminate else self.envs.close()
            self.envs = None

    def configure_callbacks(self) -> list[L.Callback]:
        return [_CloseEnvsOnException()]

    def obs_tensor(self, obs: np.ndarray, update_stats: bool = False) -> torch.Tensor:
        """Raw env observations -> normalised tensor on the module's device (optionally updating the
        running statistics first, as NormalizeObservation does for every observation it sees)."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        if self._identity_normalizer:
            return obs_t  # skip the normalizer's two tensor ops per env step
        if update_stats and self.normalize_observations:
            self.obs_normalizer.update(obs_t)
        return self.obs_normalizer(obs_t)

    def step_envs(self, actions: np.ndarray):
        """One vector step; counts env steps and records finished episodes.

        Returns (next_obs, rewards, terminated, truncated, real_next_obs); next_obs already starts new
        episodes where one ended, real_next_obs holds the final observation there (for bootstrapping)."""
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        self.env_steps.add_(self.env_steps_per_vector_step)  # in place: no module attribute assignment
        done = terminated | truncated
        # the training curve sums the env's own rewards, as evaluation does: env.wrappers may scale or
        # shape the rewards the algorithm learns from
        if self._episode_returns is None:
            self._episode_returns = np.zeros(len(rewards))
            self._episode_lengths = np.zeros(len(rewards), dtype=np.int64)
        self._episode_returns += env_rewards(rewards, infos)
        self._episode_lengths += 1
        if done.any():
            for i in np.flatnonzero(done):
                self.episode_log.append(
                    {
                        "env_steps": int(self.env_steps),
                        "return": float(self._episode_returns[i]),
                        "length": int(self._episode_lengths[i]),
                    }
                )
            self._episode_returns[done], self._episode_lengths[done] = 0.0, 0
        real_next = final_observations(next_obs, done, infos)
        self.obs = next_obs
        return next_obs, rewards.astype(np.float32), terminated, truncated, real_next

    def note_training_end(self, max_steps: int, global_step: int) -> None:
        """Why the run ended off its budget: whole iterations past trainer.max_steps, whole rollouts past
        algo.total_timesteps, or a checkpoint that had spent the budget already."""
        log = get_logger(__name__)
        env_steps = int(self.env_steps)
        if 0 < max_steps <= global_step and env_steps < self.total_timesteps:
            # e.g. a user's online algo yaml without `max_updates: -1`: trainer.max_steps fell back to 10000
            log.warning(
                f"trainer.max_steps={max_steps} ended this run after {global_step} updates, at {env_steps} "
                f"of its algo.total_timesteps={self.total_timesteps} env steps (online algos end on their "
                "env-step budget where algo.max_updates=-1, which trainer.max_steps reads; else 10000)"
            )
        elif 0 <= max_steps < global_step:
            # offline blocks are cut at max_steps; an online iteration (rollout + its updates) is not
            log.info(
                f"trainer.max_steps={max_steps}: algo={self.run_label} updates in whole iterations, so it "
                f"stopped after {global_step} updates ({env_steps} env steps; its budget is "
                f"algo.total_timesteps={self.total_timesteps})"
            )
        elif self.env_steps_at_fit_start >= self.total_timesteps > 0:
            log.warning(
                f"algo.total_timesteps={self.total_timesteps}: the checkpoint had already run "
                f"{self.env_steps_at_fit_start} env steps; no training, its policy is evaluated as it is"
            )
        elif env_steps > self.total_timesteps:
            # rollouts are whole (PPO: num_envs x num_steps; GRPO: whole episodes; SAC: one step per env)
            log.info(
                f"algo.total_timesteps={self.total_timesteps}: algo={self.run_label} collects in whole "
                f"rollouts, so it ran {env_steps} env steps"
            )

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the training curve so far, so a resumed run's results.json holds the whole curve
        checkpoint["episode_log"] = list(self.episode_log)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.episode_log = list(checkpoint.get("episode_log", []))
        self._episodes_logged = len(self.episode_log)

    # -- the Lightning step --------------------------------------------------------------------
    def updates_into_block(self) -> int:
        return 0  # an iteration is never cut short by trainer.max_steps; global_step counts its updates

    def training_step(self, batch: Any, batch_idx: int) -> None:
        losses = self.train_iteration(self.optimizers())
        # before the logging check: Lightning writes the last step's logs because should_stop is set, so
        # set after it, the last iteration's losses went unlogged and the last logged row was written again
        if int(self.env_steps) >= self.total_timesteps:
            self.trainer.should_stop = True
        if self.logging_this_step():
            metrics = {f"train/{name}": value for name, value in losses.items()}
            # episodes finished since the last logged step
            recent = self.episode_log[self._episodes_logged :]
            self._episodes_logged = len(self.episode_log)
            if recent:
                metrics["rollout/episode_return"] = float(np.mean([e["return"] for e in recent]))
            metrics["rollout/env_steps"] = float(self.env_steps)
            self.log_train_metrics(metrics)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # a resumed run whose budget is already spent does no further iteration: -1 ends the epoch and
        # should_stop the fit (with max_epochs -1, epochs would otherwise start and end forever)
        if int(self.env_steps) >= self.total_timesteps:
            self.trainer.should_stop = True
            return -1
        return None


class _CloseEnvsOnException(L.Callback):
    """Lightning tells callbacks, not the module, when a fit ends in an exception (Ctrl-C, SIGTERM)."""

    def on_exception(self, trainer, pl_module, exception) -> None:
        pl_module.close_envs(terminate=True)
