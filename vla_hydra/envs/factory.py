"""Environments from config: one object knows how to build single and vectorised copies of an env."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
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
    # Discrete(n) action space: actions are integers in [0, n), action_dim = n, bounds are [0] / [n - 1]
    discrete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "discrete": self.discrete,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpec:
        return cls(
            env_id=data["env_id"],
            observation_shape=tuple(data["observation_shape"]),
            action_dim=int(data["action_dim"]),
            action_low=list(data["action_low"]),
            action_high=list(data["action_high"]),
            discrete=bool(data.get("discrete", False)),
        )


VECTORIZATION_MODES = ("sync", "async")


@dataclass
class EnvFactory:
    """`env=` config group target: builds single envs, vectorised training envs and evaluation envs.

    Args:
        id: gymnasium env id; kwargs: passed to `gym.make`.
        ref_returns: {random, expert} returns for normalized scores, if published.
        num_envs: parallel envs online algorithms collect experience from.
        vectorization: "sync" (envs stepped in this process; ~8x faster than async for cheap envs on a
            small CPU) or "async" (one subprocess per env; pays off for expensive envs on many cores).
        max_episode_steps: time limit overriding the env's registered one (None keeps it).
        wrappers: callables env -> env applied in order to every env made (training, evaluation,
            video), e.g. `{_target_: gymnasium.wrappers.FrameStackObservation, _partial_: true, stack_size: 4}`.
            Evaluation returns always sum the env's own rewards, whatever a wrapper does to them.
    """

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    ref_returns: dict[str, float] | None = None
    num_envs: int = 1
    vectorization: str = "sync"
    max_episode_steps: int | None = None
    wrappers: list[Callable[[gym.Env], gym.Env]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # plain containers (Hydra hands over DictConfigs), so results and checkpoints serialise them
        self.kwargs = {k: v for k, v in dict(self.kwargs).items()}
        if self.ref_returns is not None:
            self.ref_returns = {k: float(v) for k, v in dict(self.ref_returns).items()}
            if self.ref_returns.get("random") == self.ref_returns.get("expert"):
                # normalized scores divide by expert - random: a ZeroDivisionError at the first evaluation
                raise ConfigError(
                    f"env.ref_returns: random and expert are both {self.ref_returns.get('random')}; "
                    "expected two different returns"
                )
        if self.vectorization not in VECTORIZATION_MODES:
            raise ConfigError(
                f"env.vectorization={self.vectorization!r}: expected one of {list(VECTORIZATION_MODES)}"
            )
        if int(self.num_envs) < 1:
            raise ConfigError(f"env.num_envs={self.num_envs}: expected a positive integer")
        if self.ref_returns and self.time_limit != registered_time_limit(self.id):
            # published returns are for the registered episode length (D4RL's 1000 steps): a score of
            # shorter or longer episodes against them would be meaningless (train.py says so)
            self.ref_returns = None
        if self.ref_returns and references_of_another_env(self.ref_returns, self.id):
            # env=cartpole env.id=Acrobot-v1 kept CartPole's returns and scored Acrobot's random policy
            # -109 (train.py says so)
            self.ref_returns = None
        for index, wrap in enumerate(self.wrappers or []):
            if isinstance(wrap, str):  # env.wrappers=[gymnasium.wrappers.X]: a name, not a callable
                raise ConfigError(
                    f"env.wrappers[{index}]={wrap}: a name, not an env -> env callable; write "
                    f"env.wrappers='[{{_target_: {wrap}, _partial_: true}}]' (with the wrapper's arguments)"
                )
            wrapper_cls = getattr(wrap, "func", wrap)
            # running statistics kept inside an env: each evaluation env would start its own, and
            # checkpoints would not carry them; the algorithms' own normalisers do both
            if isinstance(wrapper_cls, type) and issubclass(wrapper_cls, _STATEFUL_NORMALIZERS):
                raise ConfigError(
                    f"env.wrappers[{index}]: {wrapper_cls.__name__} keeps statistics that evaluation envs and "
                    "checkpoints would not share; use algo.normalize_observations / algo.normalize_rewards "
                    "(online algos; offline algos normalise states from the dataset)"
                )

    @property
    def time_limit(self) -> int | None:
        """Where this env's episodes are cut: env.max_episode_steps, else a `max_episode_steps` in
        env.kwargs, else the registered limit (None: no limit, or an unknown id)."""
        if self.max_episode_steps is not None:
            return int(self.max_episode_steps)
        if self.kwargs.get("max_episode_steps") is not None:
            return int(self.kwargs["max_episode_steps"])
        return registered_time_limit(self.id)

    def make(self, record_env_reward: bool = False, **overrides: Any) -> gym.Env:
        """One env: `gym.make(id, **kwargs, **overrides)`, then `wrappers`. `record_env_reward` puts the
        env's own reward, before any wrapper changes it, in each step's info["env_reward"] (where there
        are wrappers; callers fall back to the step's reward)."""
        route_mujoco_warnings(self.id)
        kwargs = {**dict(self.kwargs), **overrides}
        if self.max_episode_steps is not None:
            kwargs.setdefault("max_episode_steps", int(self.max_episode_steps))
        module = self.id.rpartition(":")[0]
        if module:  # `my_pkg.envs:MyRobot-v0`: gymnasium imports my_pkg.envs to register the env
            try:
                importlib.import_module(module)
            except Exception as err:  # not found, or the module's own error (SyntaxError, NameError, ...)
                cause = err if isinstance(err, ModuleNotFoundError) else f"{type(err).__name__}: {err}"
                raise ConfigError(
                    f"env.id={self.id!r}: cannot import {module} to register it ({cause})"
                ) from err
        try:
            env = gym.make(self.id, **kwargs)
        except gym.error.Error as err:
            raise ConfigError(f"env.id={self.id!r}: gymnasium cannot make it ({err})") from err
        except TypeError as err:  # an argument the env's constructor does not take
            raise ConfigError(
                f"env.kwargs={self.kwargs}: {self.id} cannot be made with them ({err})"
            ) from err
        if record_env_reward and self.wrappers:  # without wrappers the step's reward is the env's own
            env = RecordEnvReward(env)
        for index, wrap in enumerate(self.wrappers or []):
            try:
                env = wrap(env)
            except (TypeError, ValueError, gym.error.Error) as err:
                raise ConfigError(f"env.wrappers[{index}]: cannot wrap {self.id} ({err})") from err
        return env

    def make_vector(
        self,
        num_envs: int | None = None,
        vectorization: str = "sync",
        autoreset_mode: str = "NextStep",
        record_env_reward: bool = False,
    ) -> gym.vector.VectorEnv:
        """`num_envs` copies stepped together (default: the configured training num_envs).

        Evaluation always uses sync: its envs are cheap and stepped in lock-step with one policy call."""
        num_envs = int(num_envs or self.num_envs)
        if vectorization == "async":
            make_fns = [partial(self._make_in_worker, record_env_reward) for _ in range(num_envs)]
            return gym.vector.AsyncVectorEnv(
                make_fns, autoreset_mode=gym.vector.AutoresetMode(autoreset_mode)
            )
        make_fns = [partial(self.make, record_env_reward) for _ in range(num_envs)]
        return gym.vector.SyncVectorEnv(make_fns, autoreset_mode=gym.vector.AutoresetMode(autoreset_mode))

    def _make_in_worker(self, record_env_reward: bool) -> gym.Env:
        """`make` in an AsyncVectorEnv worker process, which leaves Ctrl-C to the main process: a terminal
        sends SIGINT to the whole process group, and each worker would print its own traceback.
        A forked worker also inherits the main process's SIGTERM handler (vla_hydra.cli.interrupts'), which
        would turn the SIGTERM that ends it at exit into a traceback. (AsyncVectorEnv also calls this once
        in the main process, for the spaces: that process keeps both handlers.)"""
        if multiprocessing.parent_process() is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return self.make(record_env_reward)

    def make_training_vector(self, num_envs: int | None = None) -> gym.vector.VectorEnv:
        """The online-RL training envs: `num_envs` copies (default: the configured number),
        `vectorization` mode, the env's own rewards recorded for `env_rewards` (training curves).

        Same-step autoreset: a step that ends an episode returns the next episode's first observation
        and the final one in info["final_obs"], so every step is a real transition (no dummy steps)."""
        return self.make_vector(
            num_envs or self.num_envs, self.vectorization, autoreset_mode="SameStep", record_env_reward=True
        )

    def spec(self) -> EnvSpec:
        env = self.make()
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
        if not isinstance(obs_space, gym.spaces.Box):
            # Discrete (FrozenLake), Tuple (Blackjack), Dict: the networks take arrays, and failed on these
            # with an IndexError / TypeError traceback; gymnasium flattens them (one-hot for Discrete)
            raise ConfigError(
                f"env.id={self.id!r}: observation space {obs_space} is not a Box of arrays; flatten it with "
                "env.wrappers='[{_target_: gymnasium.wrappers.FlattenObservation, _partial_: true}]'"
            )
        if isinstance(act_space, gym.spaces.Discrete):
            return EnvSpec(
                env_id=self.id,
                observation_shape=tuple(obs_space.shape),
                action_dim=int(act_space.n),
                action_low=[0.0],
                action_high=[float(act_space.n - 1)],
                discrete=True,
            )
        if not isinstance(act_space, gym.spaces.Box):
            raise ConfigError(f"env.id={self.id!r}: Box or Discrete action space expected, got {act_space}")
        if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
            # policies act in [-1, 1], scaled to the bounds: infinite ones made every action NaN, and the
            # run ended with NaN returns and exit status 0
            raise ConfigError(
                f"env.id={self.id!r}: action space {act_space} has unbounded actions; the policies act in "
                "[-1, 1] scaled to the env's bounds: declare finite ones in the env's action_space"
            )
        return EnvSpec(
            env_id=self.id,
            observation_shape=tuple(obs_space.shape),
            action_dim=int(np.prod(act_space.shape)),
            action_low=act_space.low.reshape(-1).astype(float).tolist(),
            action_high=act_space.high.reshape(-1).astype(float).tolist(),
        )


_STATEFUL_NORMALIZERS = (gym.wrappers.NormalizeObservation, gym.wrappers.NormalizeReward)


class RecordEnvReward(gym.Wrapper):
    """Copies the env's own reward into info["env_reward"], so that evaluation returns are the env's
    whatever reward-changing wrappers (scaling, clipping, shaping) sit above."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "env_reward": reward}


def env_rewards(rewards: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
    """The env's own rewards of one vector step (RecordEnvReward's copies), else the step's `rewards`.

    Where a same-step-autoreset env ended its episode, its step's info is in info["final_info"] (the
    top-level info is the next episode's reset info)."""
    if "env_reward" not in infos and "final_info" not in infos:
        return rewards  # no reward-changing wrappers
    own = np.where(infos.get("_env_reward", False), infos.get("env_reward", 0.0), rewards)
    final = infos.get("final_info") or {}
    if "env_reward" in final:
        own = np.where(final["_env_reward"], final["env_reward"], own)
    return own


# MuJoCo warnings that say nothing about the user's run (gymnasium's v5 XML files use a deprecated
# compiler attribute): logged at debug level only
_BENIGN_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)
_mujoco_warnings_seen: set[str] = set()


def route_mujoco_warnings(env_id: str) -> None:
    """Send MuJoCo's warnings to the log, once per message. Without a handler MuJoCo prints each to
    stdout and appends it to MUJOCO_LOG.TXT in the working directory (hundreds of KB over a sweep)."""
    try:
        entry_point = str(gym.spec(env_id).entry_point)
    except gym.error.Error:
        return
    if "mujoco" not in entry_point:
        return
    try:
        import mujoco
    except Exception as err:  # its import sets up MUJOCO_GL's backend: osmesa without libOSMesa, a typo
        backend = os.environ.get("MUJOCO_GL")
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        hint = f" with MUJOCO_GL={backend}; unset it, or MUJOCO_GL=egl renders headless" if backend else ""
        raise ConfigError(f"env.id={env_id!r}: cannot import mujoco{hint} ({detail})") from err

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_log_mujoco_warning)


def _log_mujoco_warning(message: str) -> None:
    from vla_hydra.core.logging import get_logger

    if message in _mujoco_warnings_seen:
        return
    _mujoco_warnings_seen.add(message)
    benign = any(pattern in message for pattern in _BENIGN_MUJOCO_WARNINGS)
    get_logger(__name__).log(10 if benign else 30, "MuJoCo: %s", message)


def registered_time_limit(env_id: str) -> int | None:
    """The episode length gymnasium registers for `env_id` (None: none, or an unknown id). A user's env as
    `my_pkg.envs:MyRobot-v0` (gym.make's form) is registered when my_pkg.envs is imported: import it first."""
    module, _, name = env_id.rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        return gym.spec(name).max_episode_steps
    except Exception:  # an unknown id, or a module that cannot be imported (make() names its error)
        return None


def normalized_score(episode_return: float, ref_returns: dict[str, float] | None) -> float | None:
    """D4RL convention: 100 * (R - random) / (expert - random); None without reference returns."""
    if not ref_returns:
        return None
    low, high = float(ref_returns["random"]), float(ref_returns["expert"])
    return 100.0 * (episode_return - low) / (high - low)


def references_of_another_env(ref_returns: dict[str, float], env_id: str) -> str | None:
    """The env whose published reference returns `ref_returns` are, when a conf/env config gives them for
    another env than `env_id` (`env=cartpole env.id=Acrobot-v1` keeps cartpole.yaml's, CartPole-v1's)."""
    given = {key: float(value) for key, value in dict(ref_returns).items()}
    owners = [
        str(config.id)
        for _, config in _env_configs()
        if config.get("ref_returns")
        and config.get("id")
        and {key: float(value) for key, value in config.ref_returns.items()} == given
    ]
    return owners[0] if owners and env_id not in owners else None


@lru_cache(maxsize=1)
def _env_configs() -> tuple:
    """(choice name, config) of each conf/env yaml, read once."""
    from omegaconf import OmegaConf

    from vla_hydra.core.config import CONF_DIR

    return tuple((path.stem, OmegaConf.load(path)) for path in sorted(Path(CONF_DIR, "env").glob("*.yaml")))


def env_choice(env_id: str):
    """The conf/env choice that builds `env_id` and its config, as (name, DictConfig); None if none does."""
    for name, config in _env_configs():
        if config.get("id") == env_id:
            return name, config
    return None


def env_choice_hint(env_id: str) -> str:
    """How to select `env_id` on the command line, for error messages: `env=<choice>` when a conf/env
    config builds it, else `env.id=<env_id>` (any gymnasium id works that way)."""
    found = env_choice(env_id)
    return f"env={found[0]}" if found else f"env.id={env_id}"
