"""Environments from config: one object knows how to build single and vectorised copies of an env."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from vla_hydra.core.exceptions import ConfigError


@dataclass
class EnvSpec:
    """What a policy needs to know about its env; travels inside checkpoints."""

    env_id: str
    observation_shape: tuple[int, ...]
    action_dim: int
    action_low: list[float]
    action_high: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpec:
        return cls(
            env_id=data["env_id"],
            observation_shape=tuple(data["observation_shape"]),
            action_dim=int(data["action_dim"]),
            action_low=list(data["action_low"]),
            action_high=list(data["action_high"]),
        )


@dataclass
class EnvFactory:
    """`env=` config group target. `ref_returns` = {random, expert} for normalized scores, if published."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 10
    ref_returns: dict[str, float] | None = None

    def make(self, **overrides: Any) -> gym.Env:
        try:
            return gym.make(self.id, **{**dict(self.kwargs), **overrides})
        except gym.error.Error as err:
            raise ConfigError(f"env.id={self.id!r}: gymnasium cannot make it ({err})") from err

    def make_vector(self, num_envs: int) -> gym.vector.VectorEnv:
        # Sync, not async: for cheap envs, subprocess overhead makes async ~8x slower here.
        return gym.vector.SyncVectorEnv([lambda: self.make() for _ in range(num_envs)])

    def spec(self) -> EnvSpec:
        env = self.make()
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
        if not isinstance(act_space, gym.spaces.Box):
            raise ConfigError(f"env.id={self.id!r}: continuous (Box) action space expected, got {act_space}")
        return EnvSpec(
            env_id=self.id,
            observation_shape=tuple(obs_space.shape),
            action_dim=int(np.prod(act_space.shape)),
            action_low=act_space.low.reshape(-1).astype(float).tolist(),
            action_high=act_space.high.reshape(-1).astype(float).tolist(),
        )


def normalized_score(episode_return: float, ref_returns: dict[str, float] | None) -> float | None:
    """D4RL convention: 100 * (R - random) / (expert - random); None without reference returns."""
    if not ref_returns:
        return None
    low, high = float(ref_returns["random"]), float(ref_returns["expert"])
    return 100.0 * (episode_return - low) / (high - low)
