"""Soft Actor-Critic (Haarnoja et al. 2018), defaults as CleanRL's sac_continuous_action.py.

One Lightning step = `updates_per_step` vector env steps, each followed by one update round once
`learning_starts` env steps are done (uniform random actions until then), so Lightning's per-step
cost is paid once per block of env steps. The transitions live in a device-tensor ring buffer
(data/buffer.py ReplayBuffer) sampled uniformly.

An update round is CleanRL's: a critic step; every `policy_frequency`-th round also `policy_frequency`
actor and temperature steps (the TD3 delay, compensated so the actor gets one step per env step on
average); a Polyak target update every `target_network_frequency` rounds. One Adam with a parameter
group per network (actor, critics, log_alpha), so `trainer.global_step` counts optimizer steps: the
critic step and the first actor step of a round share one (one backward of the summed losses; the actor
loss goes through the critics with detached critic parameters, so each loss trains only its own
network), and the extra actor steps are steps of their own. Unlike CleanRL, that first actor step sees
the critics from before this round's critic step (as TD3BC here).

Bootstrapping: targets cut at terminations only; a time-limit truncation bootstraps from the episode's
real final observation (`real_next` from step_envs), as CleanRL does.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_hydra.algos.critic_losses import per_critic_mse, td_target
from vla_hydra.algos.online import OnlineAlgorithm
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.core.logging import get_logger
from vla_hydra.data.buffer import ReplayBuffer
from vla_hydra.envs.factory import EnvFactory, EnvSpec
from vla_hydra.models.critics import EnsembleQNetwork, soft_update
from vla_hydra.models.normalization import ActionScaler

REPLAY_BUFFER_KEY = "replay_buffer"
log = get_logger(__name__)


def sac_critic_target(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q: torch.Tensor,
    next_log_pi: torch.Tensor,
    alpha: torch.Tensor | float,
    gamma: float,
) -> torch.Tensor:
    """Soft Bellman target r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),
    a' ~ pi(.|s'); `next_q` is (num_critics, B) from the target critics."""
    return td_target(rewards, terminated, next_q.min(0).values - alpha * next_log_pi, gamma)


def sac_critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over critics of MSE(Q_i(s, a), target); q is (num_critics, B) (CleanRL: qf1_loss + qf2_loss)."""
    return per_critic_mse(q, target).sum()


def sac_actor_loss(q_pi: torch.Tensor, log_pi: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """mean(alpha * log pi(a|s) - min_i Q_i(s, a)) for reparameterised a ~ pi(.|s); q_pi is (num_critics, B)."""
    return (alpha * log_pi - q_pi.min(0).values).mean()


def sac_temperature_loss(
    log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """CleanRL's automatic entropy tuning: -mean(exp(log_alpha) * (log pi + target_entropy)), log pi
    detached. (CQL's sac_alpha_loss, as CORL, scales by log_alpha instead; same fixed point, the
    gradient here is alpha times that one.)"""
    return -(log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


def write_replay_dataset(
    path: str, buffer: ReplayBuffer, num_envs: int, env_id: str, action_scaler: ActionScaler
) -> dict[str, Any] | None:
    """Write a replay buffer as a D4RL-format file, each env's steps contiguous and oldest first.

    The buffer holds actions in [-1, 1]; the file gets them in env units (`action_scaler`), as every
    D4RL-format file and the offline algorithms that read one do.

    Each env's last stored step ends an episode that training cut off: it is marked a timeout (as D4RL
    does at the end of its files), so readers bootstrap there and see no episode run into the next env's.
    Once the ring has overwritten its oldest rows (algo.buffer_size < the run's env steps), each env's
    oldest stored steps are the tail of an episode whose start is gone; they are left out, as they would
    count as a short complete episode (in the mean return here, in IQL's and CQL's return range).
    Returns the metadata written (env id, transitions, episodes, mean return of the complete episodes),
    None when no complete or cut episode was left to write.
    """
    from vla_hydra.data.d4rl_format import write_d4rl_hdf5
    from vla_hydra.data.stats import episode_returns

    rows = buffer.chronological(num_envs)
    # in env units: Pendulum's [-2, 2] used to be written as [-1, 1], so policies trained on the file
    # learned half the torque
    actions = torch.as_tensor(rows["actions"], device=action_scaler.low.device)
    rows["actions"] = action_scaler.unnormalize(actions).cpu().numpy()
    terminals, timeouts = rows["terminals"] > 0.5, rows["timeouts"] > 0.5
    per_stream = len(rows["rewards"]) // num_envs
    stream_ends = np.cumsum([per_stream] * num_envs) - 1
    cut = np.zeros_like(timeouts)
    cut[stream_ends] = ~(terminals[stream_ends] | timeouts[stream_ends])
    timeouts |= cut
    if buffer.overwritten:
        keep = np.ones(len(timeouts), dtype=bool)
        for start in range(0, len(timeouts), per_stream):
            ends = np.flatnonzero((terminals | timeouts)[start : start + per_stream])
            # the stream's first end closes the episode it began inside of; a stream whose only end is the
            # cut at its last row is all one episode's middle
            partial = ends[0] + 1 if len(ends) and not cut[start + ends[0]] else per_stream
            keep[start : start + partial] = False
        if not keep.any():
            log.warning(
                f"algo.replay_dataset_path={path}: not written: the replay buffer (algo.buffer_size="
                f"{buffer.capacity}) holds no episode from its start; raise algo.buffer_size"
            )
            return None
        rows = {key: value[keep] for key, value in rows.items()}
        terminals, timeouts, cut = terminals[keep], timeouts[keep], cut[keep]
    arrays = {**rows, "terminals": terminals, "timeouts": timeouts}
    ends_cut = cut[np.flatnonzero(terminals | timeouts)]
    complete = episode_returns(rows["rewards"], terminals, timeouts)[~ends_cut]
    metadata = {
        "env_id": env_id,
        "behavior_policy": "vla_hydra.algos.sac.SAC replay buffer (random warm-up to final policy)",
        "transitions": len(rows["rewards"]),
        "episodes": int((terminals | timeouts).sum()),
        "dataset_return_mean": float(complete.mean()) if len(complete) else float("nan"),
        "created_by": "vla_hydra.algos.sac (replay_dataset_path)",
    }
    write_d4rl_hdf5(path, arrays, metadata)
    log.info(
        f"replay dataset -> {path}: {metadata['transitions']} transitions, {metadata['episodes']} episodes, "
        f"mean return of complete episodes {metadata['dataset_return_mean']:.1f}"
    )
    return metadata


class SAC(OnlineAlgorithm):
    """Soft Actor-Critic for continuous (Box) actions; the actor comes from `model=` (tanh_gaussian).

    Args (defaults = CleanRL sac_continuous_action.py):
        buffer_size: replay capacity (capped at total_timesteps: a larger ring would never fill).
        batch_size, gamma, tau: minibatch size, discount, Polyak rate of the target critics.
        learning_starts: env steps of uniform random actions before the first update.
        policy_lr, q_lr: Adam learning rates of actor and critics (the temperature uses q_lr, as CleanRL).
        policy_frequency: actor/temperature steps happen every this many rounds, this many at a time.
        target_network_frequency: rounds between target-critic updates.
        autotune: learn alpha towards `target_entropy` (None = -action_dim); else alpha is fixed.
        updates_per_step: env steps (each with its update round) per Lightning step.
        checkpoint_replay_buffer: save the filled replay buffer in checkpoints (resume continues on the
            same data; costs (2 * obs + act + 3) * 4 bytes per stored transition). Without it a resumed
            run refills the buffer with `learning_starts` transitions of its current policy before
            updating again.
        replay_dataset_path: at the end of training, write the replay buffer as a D4RL-format file (a
            "medium-replay"-style dataset: every transition of the run, from random to final policy,
            when buffer_size >= total_timesteps; else the last buffer_size, from each env's first whole
            episode on). null = don't. Implies checkpoint_replay_buffer, so a
            resumed run's dataset still holds the transitions from before the interruption.
    """

    name = "sac"

    @classmethod
    def check_settings(cls, spec, algo_cfg) -> None:
        super().check_settings(spec, algo_cfg)
        # updates wait for a full batch in the buffer, which a smaller ring never holds: the run would
        # end without a single update and say nothing
        if int(algo_cfg.buffer_size) < int(algo_cfg.batch_size):
            raise ConfigError(
                f"algo.buffer_size={algo_cfg.buffer_size}: smaller than algo.batch_size={algo_cfg.batch_size}, "
                "so no batch could ever be drawn; expected >= algo.batch_size"
            )

    def __init__(
        self,
        spec: EnvSpec,
        model,
        env: EnvFactory,
        total_timesteps: int = 1_000_000,
        buffer_size: int = 1_000_000,
        gamma: float = 0.99,
        tau: float = 0.005,
        batch_size: int = 256,
        learning_starts: int = 5000,
        policy_lr: float = 3e-4,
        q_lr: float = 1e-3,
        policy_frequency: int = 2,
        target_network_frequency: int = 1,
        autotune: bool = True,
        alpha: float = 0.2,
        target_entropy: float | None = None,
        critic_hidden_dims: tuple[int, ...] = (256, 256),
        updates_per_step: int = 50,
        normalize_observations: bool = False,
        checkpoint_replay_buffer: bool = False,
        replay_dataset_path: str | None = None,
        seed: int = 0,
        max_updates: int = -1,
        stats=None,
    ):
        super().__init__(
            spec, env, total_timesteps, normalize_observations, seed, max_updates, updates_per_step, stats
        )
        self.buffer_size, self.batch_size = int(buffer_size), int(batch_size)
        self.gamma, self.tau, self.learning_starts = gamma, tau, int(learning_starts)
        self.policy_lr, self.q_lr = policy_lr, q_lr
        self.policy_frequency = int(policy_frequency)
        self.target_network_frequency = int(target_network_frequency)
        self.autotune = autotune
        self.target_entropy = float(-spec.action_dim if target_entropy is None else target_entropy)
        # a replay dataset is every transition of the run: its buffer must survive an interruption
        self.checkpoint_replay_buffer = checkpoint_replay_buffer or bool(replay_dataset_path)
        self.replay_dataset_path = replay_dataset_path
        self.actor = self.build_network(
            model, spec.observation_shape, spec.action_dim, needs=("sample",), use="model=sac_actor"
        )
        self.critic = EnsembleQNetwork(spec.observation_shape, spec.action_dim, critic_hidden_dims)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        if autotune:
            self.log_alpha = nn.Parameter(torch.zeros(()))  # alpha starts at 1 (CleanRL)
        else:
            self.register_buffer("log_alpha", torch.tensor(math.log(alpha)))
        # update rounds done: the buffer travels in checkpoints (policy-delay phase after a resume),
        # the int drives the loop without reading a tensor
        self.register_buffer("update_rounds", torch.zeros((), dtype=torch.long))
        self._rounds = 0
        self.replay_buffer: ReplayBuffer | None = None
        self._min_buffer_size = self.batch_size  # see on_fit_start
        self._restored_buffer: dict | None = None
        self._last_actor_losses: dict[str, torch.Tensor] = {}

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def configure_optimizers(self):
        groups = [
            {"params": self.actor.parameters(), "lr": self.policy_lr},
            {"params": self.critic.parameters(), "lr": self.q_lr},
        ]
        if self.autotune:
            groups.append({"params": [self.log_alpha], "lr": self.q_lr})
        return torch.optim.Adam(groups, foreach=True)

    # -- replay buffer ---------------------------------------------------------------------------
    def make_replay_buffer(self) -> ReplayBuffer:
        obs_shape, act_shape = tuple(self.spec.observation_shape), (self.spec.action_dim,)
        fields = {
            "observations": obs_shape,
            "actions": act_shape,
            "rewards": (),
            "next_observations": obs_shape,
            "terminals": (),
            "timeouts": (),  # truncated and not terminated: only for writing episode-ordered files
        }
        # a continuation below the env steps already run trains no further, and keeps its restored buffer
        run_steps = max(self.total_timesteps, int(self.env_steps), self.batch_size)
        capacity = min(self.buffer_size, run_steps)
        # a multiple of num_envs, so each env's rows stay on one residue class (ReplayBuffer.chronological);
        # rounded up: rounded down, algo.buffer_size=256 with 3 envs held 255 rows, never a batch of 256
        capacity = -(-capacity // self.num_envs) * self.num_envs
        return ReplayBuffer(capacity, fields, self.device)

    def on_fit_start(self) -> None:
        if self.replay_dataset_path:
            # checked before training, not after it: never overwrite a dataset, never waste a run
            from vla_hydra.core.io import check_writable

            check_writable(self.replay_dataset_path, "algo.replay_dataset_path")
            if Path(self.replay_dataset_path).exists():
                raise ConfigError(
                    f"algo.replay_dataset_path={self.replay_dataset_path}: file exists; delete it or choose "
                    "another path"
                )
        super().on_fit_start()
        if (
            self.total_timesteps <= self.learning_starts
        ):  # e.g. collecting random data into replay_dataset_path
            log.warning(
                f"algo.total_timesteps={self.total_timesteps} <= algo.learning_starts={self.learning_starts}: "
                "only random actions, no gradient update; the policy stays as initialised"
            )
        elif self.total_timesteps < self.batch_size * self.world_size and not self.trainer.fast_dev_run:
            # updates wait for a full batch in each process's buffer: past learning_starts, still none
            log.warning(
                f"algo.total_timesteps={self.total_timesteps} < algo.batch_size={self.batch_size}"
                f"{f' x {self.world_size} processes' if self.world_size > 1 else ''}: the replay buffer never "
                "holds a batch, so no gradient update; the policy stays as initialised"
            )
        self._rounds = int(self.update_rounds)
        self.replay_buffer = self.make_replay_buffer()
        # transitions the buffer needs before an update: a resume without the saved buffer first
        # refills `learning_starts` of them from the current policy, as many as a fresh run's warm-up
        # (updating on the first few hundred would overfit the critics to them)
        self._min_buffer_size = self.batch_size
        if self.trainer.fast_dev_run:
            # debug=fdr's one iteration smoke-tests the update too: a warm-up of half of it, then updates
            # (with the defaults, 5000 random steps, its 50 env steps never reached an update)
            self.learning_starts = min(self.learning_starts, self.updates_per_step // 2)
            self._min_buffer_size = min(self.batch_size, max(1, self.learning_starts))
        if self._restored_buffer is not None:
            filled_by = int(self._restored_buffer.get("num_envs", self.num_envs))
            if self.replay_dataset_path and filled_by != self.num_envs:
                # the file groups rows by env as row i % num_envs: another count would splice episodes
                raise ConfigError(
                    f"env.num_envs={self.num_envs}: the checkpoint's replay buffer was filled by {filled_by} "
                    f"envs, and algo.replay_dataset_path writes each env's episodes from it; resume with "
                    f"env.num_envs={filled_by}, or without algo.replay_dataset_path"
                )
            self.replay_buffer.load_state_dict(self._restored_buffer)
            self._restored_buffer = None
        elif int(self.env_steps) > 0:
            refill = max(self.batch_size, self.learning_starts)
            self._min_buffer_size = min(refill, self.replay_buffer.capacity)
            left = self.total_timesteps - int(self.env_steps)
            # each process refills its own buffer, and env_steps counts every process's steps
            needed = self._min_buffer_size * self.world_size
            if 0 < left < needed:
                # a short continuation would end still refilling: the policy comes out unchanged
                per_process = f" on each of the {self.world_size} processes ({needed} env steps)"
                log.warning(
                    f"algo.total_timesteps={self.total_timesteps}: resumed at env step {int(self.env_steps)} "
                    f"from a checkpoint without the replay buffer, which first refills {self._min_buffer_size} "
                    f"transitions of the current policy{per_process if self.world_size > 1 else ''}; the "
                    f"{left} env steps left end before that: no "
                    "gradient update, the policy stays as the checkpoint's (raise algo.total_timesteps, or "
                    "save the buffer with algo.checkpoint_replay_buffer=true)"
                )
            if self.replay_dataset_path:
                log.warning(
                    f"algo.replay_dataset_path: resumed at env step {int(self.env_steps)} from a checkpoint "
                    f"without the replay buffer: {self.replay_dataset_path} will hold only the transitions "
                    "collected from here on"
                )

    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self.replay_dataset_path and self.replay_buffer is not None and self.trainer.is_global_zero:
            write_replay_dataset(
                self.replay_dataset_path,
                self.replay_buffer,
                self.num_envs,
                self.spec.env_id,
                self.action_scaler,
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.checkpoint_replay_buffer and self.replay_buffer is not None:
            # with the env count that filled it: its rows take turns between the envs (chronological)
            checkpoint[REPLAY_BUFFER_KEY] = {**self.replay_buffer.state_dict(), "num_envs": self.num_envs}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # the buffer is built in on_fit_start (on the training device); fill it there
        self._restored_buffer = checkpoint.get(REPLAY_BUFFER_KEY) if self.checkpoint_replay_buffer else None

    # -- interaction and updates -----------------------------------------------------------------
    @torch.no_grad()
    def explore_step(self, random_actions: bool) -> None:
        """One vector env step (uniform random or sampled policy actions) into the replay buffer."""
        obs = self.obs_tensor(self.obs, update_stats=True)  # stats see every observation once
        raw_obs = torch.as_tensor(self.obs, dtype=torch.float32)
        if random_actions:
            actions = torch.rand(self.num_envs, self.spec.action_dim, device=self.device) * 2.0 - 1.0
        else:
            actions = self.actor.sample(obs)[0]
        _, rewards, terminated, truncated, real_next = self.step_envs(self.env_actions(actions))
        self.replay_buffer.add(
            {
                "observations": raw_obs,
                "actions": actions,
                "rewards": torch.as_tensor(rewards),
                "next_observations": torch.as_tensor(real_next, dtype=torch.float32),
                "terminals": torch.as_tensor(terminated, dtype=torch.float32),
                "timeouts": torch.as_tensor(truncated & ~terminated, dtype=torch.float32),
            }
        )

    def update_delay_setting(self) -> str | None:
        return f"algo.policy_frequency={self.policy_frequency}" if self.policy_frequency > 1 else None

    def update(self, batch: dict[str, torch.Tensor], optimizers) -> dict[str, torch.Tensor]:
        """One update round on one minibatch (raw observations, actions in [-1, 1])."""
        optimizer = optimizers
        obs = self.obs_normalizer(batch["observations"])
        next_obs = self.obs_normalizer(batch["next_observations"])
        self._rounds += 1
        self.update_rounds += 1
        actor_steps = self.policy_frequency if self._rounds % self.policy_frequency == 0 else 0
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            next_actions, next_log_pi = self.actor.sample(next_obs)
            target = sac_critic_target(
                batch["rewards"],
                batch["terminals"],
                self.target_critic(next_obs, next_actions),
                next_log_pi,
                alpha,
                self.gamma,
            )
        q = self.critic(obs, batch["actions"])
        critic_loss = sac_critic_loss(q, target)
        loss = critic_loss
        for step in range(max(actor_steps, 1)):
            if actor_steps:
                if step > 0:
                    alpha = self.log_alpha.detach().exp()
                actions, log_pi = self.actor.sample(obs)
                q_pi = self.critic(obs, actions, detach_params=True)
                actor_loss = sac_actor_loss(q_pi, log_pi, alpha)
                loss = loss + actor_loss
                self._last_actor_losses = {
                    "actor_loss": actor_loss.detach(),
                    "entropy": -log_pi.detach().mean(),
                }
                if self.autotune:
                    loss = loss + sac_temperature_loss(self.log_alpha, log_pi, self.target_entropy)
            # set_to_none: a network without a loss term this step keeps grad None, and Adam skips it
            optimizer.zero_grad(set_to_none=True)
            self.backprop(loss)
            self.step_optimizer(optimizer)
            loss = 0.0
        if self._rounds % self.target_network_frequency == 0:
            soft_update(self.target_critic, self.critic, self.tau)
        # the latest actor figures every round, so block averages are not diluted by the delay
        return {
            "critic_loss": critic_loss.detach(),
            "q_mean": q.detach().mean(),
            "alpha": alpha,
            **self._last_actor_losses,
        }

    def train_iteration(self, optimizers) -> dict[str, torch.Tensor]:
        env_steps = int(self.env_steps)
        totals: dict[str, torch.Tensor] = {}
        rounds = 0
        for _ in range(self.updates_per_step):
            if env_steps >= self.total_timesteps:
                break
            self.explore_step(random_actions=env_steps < self.learning_starts)
            env_steps += self.env_steps_per_vector_step
            if env_steps > self.learning_starts and len(self.replay_buffer) >= self._min_buffer_size:
                losses = self.update(self.replay_buffer.sample((self.batch_size,)), optimizers)
                for name, value in losses.items():
                    totals[name] = totals[name] + value if name in totals else value
                rounds += 1
        return {name: value / rounds for name, value in totals.items()}
