"""Evaluation rollouts: N episodes in parallel (sync vector env), one batched policy call per step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_hydra.envs.factory import EnvFactory, env_rewards, normalized_score


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    ref_returns: dict[str, float] | None

    @property
    def return_mean(self) -> float:
        return float(self.returns.mean())

    @property
    def return_std(self) -> float:
        return float(self.returns.std())

    @property
    def normalized_score(self) -> float | None:
        return normalized_score(self.return_mean, self.ref_returns)

    def to_dict(self) -> dict:
        return {
            "eval_episodes": int(len(self.returns)),
            "eval_return_mean": self.return_mean,
            "eval_return_std": self.return_std,
            "eval_length_mean": float(self.lengths.mean()),
            "normalized_score": self.normalized_score,
            "ref_returns": self.ref_returns,
        }

    def summary(self) -> str:
        """The one line train, eval and eval_only runs log: return mean ± std, episodes, normalized score."""
        score = self.normalized_score
        return (
            f"eval return {self.return_mean:.1f} ± {self.return_std:.1f} over {len(self.returns)} "
            f"episode{'s' if len(self.returns) != 1 else ''}"
            + (f", normalized score {score:.1f}" if score is not None else "")
        )


@contextmanager
def evaluation_mode(policy: Any) -> Iterator[None]:
    """A torch module policy in eval mode (dropout off) while it is evaluated, its own mode afterwards:
    Lightning leaves a module in training mode after fit."""
    import torch

    if not isinstance(policy, torch.nn.Module):
        yield
        return
    was_training = policy.training
    policy.eval()
    try:
        yield
    finally:
        policy.train(was_training)


def rollout_episodes(
    policy: Callable[[np.ndarray], np.ndarray] | Any,
    env_factory: EnvFactory,
    num_episodes: int,
    seed: int,
    ref_returns: dict[str, float] | None = None,
) -> EvalResult:
    """Run `num_episodes` episodes, episode i reset with seed `seed + i`, all envs stepped together.

    `policy` is a callable obs -> action, or an object with `act(obs)`; a stateful policy (e.g. a
    Decision Transformer keeping context and returns-to-go) may also define `begin_rollout(num_envs)`
    and `observe_rollout_step(rewards, done)`, called before the first step and after every step.
    """
    act = policy.act if hasattr(policy, "act") else policy
    if hasattr(policy, "begin_rollout"):
        policy.begin_rollout(num_episodes)
    envs = env_factory.make_vector(num_episodes, record_env_reward=True)
    with evaluation_mode(policy):
        try:
            obs, _ = envs.reset(seed=[seed + i for i in range(num_episodes)])
            returns = np.zeros(num_episodes)
            lengths = np.zeros(num_episodes, dtype=np.int64)
            running = np.ones(num_episodes, dtype=bool)
            while running.any():
                actions = act(obs)
                obs, rewards, terminated, truncated, infos = envs.step(actions)
                # the env's own rewards: env.wrappers may scale or shape what the policy trained on
                rewards = env_rewards(rewards, infos)
                returns += rewards * running
                lengths += running
                running &= ~(terminated | truncated)
                if hasattr(policy, "observe_rollout_step"):
                    policy.observe_rollout_step(rewards, ~running)
        finally:
            envs.close()
    return EvalResult(returns=returns, lengths=lengths, ref_returns=ref_returns or env_factory.ref_returns)
