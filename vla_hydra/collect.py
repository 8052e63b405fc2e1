"""Make D4RL-format datasets by rolling out a behaviour policy in a gymnasium env.

    python -m vla_hydra.collect                       # the default dataset (data=pendulum_mixed)
    python -m vla_hydra.collect data=pendulum_mixed data.recipe.episodes=400 output=/tmp/p.hdf5

Per-episode Gaussian action noise levels (cycled over episodes) give mixed-quality data. Reference
returns for normalized scores are measured here (uniform-random policy vs the noiseless behaviour
policy on held-out seeds) and stored in the file's metadata.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from vla_hydra.cli.entry import run_cli
from vla_hydra.cli.errors import one_line_hydra_errors
from vla_hydra.cli.overrides import refuse_unread_additions
from vla_hydra.core.config import CONF_DIR, check_config_values, check_value
from vla_hydra.core.logging import get_logger

log = get_logger(__name__)

# Held-out seeds for reference returns, far from the collection seeds.
_REFERENCE_SEED_OFFSET = 1_000_000
# episodes rolled out together (data.recipe.parallel_envs): the value every cached file was collected with
_PARALLEL_ENVS = 50


def _policy_name(policy) -> str:
    return f"{type(policy).__module__}.{type(policy).__qualname__}"


def _policy_params(policy) -> dict[str, Any]:
    """Public scalar and sequence attributes, recorded in the file's metadata (a CheckpointPolicy: its
    path, weights hash and env id; a controller: its gains)."""
    return {
        k: v
        for k, v in vars(policy).items()
        if not k.startswith("_") and isinstance(v, str | int | float | tuple | list)
    }


# attribute types whose repr is the same in every process (a Generator's repr holds its address)
_STABLE_TYPES = (str, int, float, bool, tuple, list, np.ndarray)


def _policy_state(policy) -> dict[str, str]:
    """What identifies a behaviour policy in a recipe fingerprint: the attributes its class lists in
    `identifying_attributes` (a CheckpointPolicy: weights hash and env, not its path), else its public,
    process-independent ones (a controller's gains)."""
    names = getattr(policy, "identifying_attributes", None)
    return {
        k: repr(v)
        for k, v in sorted(vars(policy).items())
        if (k in names if names is not None else not k.startswith("_")) and isinstance(v, _STABLE_TYPES)
    }


@dataclass
class CollectionRecipe:
    """What to roll out. `env_id` may be null when the behaviour policy knows its env (a
    vla_hydra.eval.CheckpointPolicy does).

    `behavior_policy` may be a list: episode i is then collected by policy i % len(list) (cycled like
    the noise levels), e.g. a medium and an expert checkpoint for D4RL-style "medium-expert" data."""

    env_id: str | None
    behavior_policy: Callable[[np.ndarray], np.ndarray] | Sequence[Callable[[np.ndarray], np.ndarray]]
    episodes: int = 200
    action_noise_std: Sequence[float] = field(default_factory=lambda: [0.0])
    # per-episode probability of replacing each action by a uniform-random one (cycled like the noise)
    random_action_prob: Sequence[float] = field(default_factory=lambda: [0.0])
    seed: int = 0
    reference_episodes: int = 50
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    parallel_envs: int = _PARALLEL_ENVS

    def __post_init__(self) -> None:
        from vla_hydra.core.exceptions import ConfigError

        if isinstance(self.behavior_policy, str) or not (
            callable(self.behavior_policy) or isinstance(self.behavior_policy, Sequence | ListConfig)
        ):
            raise ConfigError(
                f"data.recipe.behavior_policy={self.behavior_policy}: expected a policy "
                "({_target_: <class>, ...}) or a list of them"
            )
        if not callable(self.behavior_policy):  # a list (or Hydra ListConfig) of policies
            self.behavior_policy = list(self.behavior_policy)
            for index, policy in enumerate(self.behavior_policy):
                if not callable(policy):
                    raise ConfigError(
                        f"data.recipe.behavior_policy[{index}]={policy}: expected a policy ({{_target_: <class>, ...}})"
                    )
            if not self.behavior_policy:
                raise ConfigError(
                    "data.recipe.behavior_policy: empty list; expected a policy or a list of them"
                )
        # also when the recipe is built in Python, not from a checked config
        for key in ("episodes", "action_noise_std", "random_action_prob", "reference_episodes"):
            value = getattr(self, key)
            is_list = isinstance(value, Sequence) and not isinstance(value, str)
            check_value(f"data.recipe.{key}", list(value) if is_list else value)
        if self.env_id is None:
            self.env_id = getattr(self.policies[0], "env_id", None)
        if self.env_id is None:
            raise ConfigError("data.recipe.env_id: required unless the behaviour policy is a checkpoint")
        for policy in self.policies:  # a checkpoint acts only in the env it was trained in
            trained_in = getattr(policy, "env_id", None)
            if trained_in is not None and trained_in != self.env_id:
                raise ConfigError(
                    f"data.recipe.env_id={self.env_id}: the behaviour policy {_policy_name(policy)} was "
                    f"trained in {trained_in}; collect in that env (data.recipe.env_id={trained_in} or null)"
                )

    @property
    def policies(self) -> list[Callable[[np.ndarray], np.ndarray]]:
        return self.behavior_policy if isinstance(self.behavior_policy, list) else [self.behavior_policy]

    def fingerprint(self) -> str:
        """Identifies what the recipe produces, so a cached file from another recipe is never reused."""
        described = [(_policy_name(policy), _policy_state(policy)) for policy in self.policies]
        # one policy: the form files cached before lists were allowed carry
        names, params = zip(*described, strict=True)
        content = {
            "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs),
            "episodes": self.episodes,
            "action_noise_std": [float(x) for x in self.action_noise_std],
            "random_action_prob": [float(x) for x in self.random_action_prob],
            "seed": self.seed,
            "reference_episodes": self.reference_episodes,
            "policy": names[0] if len(names) == 1 else list(names),
            # public attributes only: a CheckpointPolicy is identified by its path and weights hash
            "policy_params": params[0] if len(params) == 1 else list(params),
        }
        if min(self.parallel_envs, self.episodes) != min(_PARALLEL_ENVS, self.episodes):
            # the action noise of a batch of episodes comes from one random stream, so other batches
            # make other data; left out at the default, so files cached before it counted keep theirs
            content["parallel_envs"] = self.parallel_envs
        return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _rollout(
    env_factory,
    policy,
    seeds: Sequence[int],
    noise_std: Sequence[float],
    rng,
    random_prob: Sequence[float] | None = None,
) -> list[dict]:
    """One episode per seed, in parallel; returns per-episode arrays in seed order.

    Box actions: float32 (n, act_dim) with Gaussian noise, clipped to the bounds; Discrete(n) actions:
    int64 class indices (n,), where only `random_prob` (epsilon-random actions) perturbs them."""
    import gymnasium as gym

    from vla_hydra.envs.factory import env_rewards

    envs = env_factory.make_vector(len(seeds), record_env_reward=True)
    space = envs.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    noise = np.asarray(noise_std, dtype=np.float32)[:, None]
    random_prob = np.zeros(len(seeds)) if random_prob is None else np.asarray(random_prob, dtype=np.float64)
    try:
        obs, _ = envs.reset(seed=list(seeds))
        running = np.ones(len(seeds), dtype=bool)
        if hasattr(policy, "begin_rollout"):  # a stateful policy (a Decision Transformer checkpoint)
            policy.begin_rollout(len(seeds))
        steps: list[tuple] = []
        while running.any():
            action = _act(policy, obs, env_factory.id)
            expected = len(seeds) if discrete else len(seeds) * int(np.prod(space.shape))
            if action.size != expected:
                from vla_hydra.core.exceptions import ConfigError

                raise ConfigError(
                    f"data.recipe.behavior_policy: {_policy_name(policy)} returned actions of shape "
                    f"{action.shape} for {len(seeds)} envs of {env_factory.id} (action space {space}); is it a "
                    "policy for this env?"
                )
            if discrete:
                action = action.astype(np.int64).reshape(len(seeds))
            else:
                action = action.astype(np.float32).reshape(len(seeds), -1)
                noisy = action + noise * rng.standard_normal(action.shape).astype(np.float32)
                action = np.clip(noisy, space.low, space.high)
            if random_prob.any():  # draws only when used, so noise-only recipes keep their random stream
                replace = rng.random(len(seeds)) < random_prob
                shape = (int(replace.sum()),)
                action[replace] = (
                    rng.integers(space.n, size=shape)
                    if discrete
                    else rng.uniform(space.low, space.high, size=(*shape, *space.low.shape))
                )
            next_obs, reward, terminated, truncated, infos = envs.step(action)
            reward = env_rewards(reward, infos)  # the env's own, not a checkpoint's env.wrappers'
            steps.append((obs, action, reward, terminated, truncated, next_obs, running.copy()))
            running &= ~(terminated | truncated)
            if hasattr(policy, "observe_rollout_step"):  # e.g. a DT's returns-to-go, as in evaluation,
                policy.observe_rollout_step(reward, ~running, action)  # and the action taken, noise and all
            obs = next_obs
    finally:
        envs.close()
    episodes = []
    for i in range(len(seeds)):
        rows = [s for s in steps if s[6][i]]
        episodes.append(
            {
                "observations": np.stack([s[0][i] for s in rows]),
                "actions": np.stack([s[1][i] for s in rows]),
                "rewards": np.array([s[2][i] for s in rows], dtype=np.float32),
                "terminals": np.array([s[3][i] for s in rows], dtype=bool),
                "timeouts": np.array([s[4][i] and not s[3][i] for s in rows], dtype=bool),
                "next_observations": np.stack([s[5][i] for s in rows]),
            }
        )
    return episodes


def _act(policy, obs: np.ndarray, env_id: str) -> np.ndarray:
    """The behaviour policy's actions for a batch of observations; a policy made for another env's
    observations (a controller's indexing, a network's input width) fails in one line."""
    try:
        return np.asarray(policy(obs))
    except (IndexError, ValueError, TypeError, RuntimeError) as err:
        from vla_hydra.core.exceptions import ConfigError

        raise ConfigError(
            f"data.recipe.behavior_policy: {_policy_name(policy)} fails on {env_id}'s observations of shape "
            f"{tuple(np.shape(obs))[1:]} ({err}); is it a policy for this env?"
        ) from err


def _collection_env(recipe: CollectionRecipe):
    """The env to roll out in: a checkpoint policy's own (its env.kwargs, time limit and wrappers: it
    acts only on the observations it was trained on), else data.recipe.env_id; data.recipe.env_kwargs
    on top of either."""
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.envs.factory import EnvFactory

    trained_in = [
        factory for p in recipe.policies if (factory := getattr(p, "env_factory", None)) is not None
    ]
    if not trained_in:
        import gymnasium as gym

        try:
            gym.spec(recipe.env_id)
        except gym.error.Error as err:
            raise ConfigError(
                f"data.recipe.env_id={recipe.env_id}: gymnasium has no such env ({err})"
            ) from err
        return EnvFactory(id=recipe.env_id, kwargs=dict(recipe.env_kwargs))

    def settings(factory) -> tuple:
        return (factory.kwargs, factory.max_episode_steps, [repr(wrap) for wrap in factory.wrappers or []])

    if any(settings(factory) != settings(trained_in[0]) for factory in trained_in[1:]):
        raise ConfigError(
            "data.recipe.behavior_policy: the checkpoints were trained with different env settings "
            f"({' vs '.join(str(settings(factory)) for factory in trained_in)}); collect with checkpoints "
            "of one env configuration"
        )
    return replace(trained_in[0], kwargs={**trained_in[0].kwargs, **dict(recipe.env_kwargs)})


def collect_dataset(recipe: CollectionRecipe, output: str | Path) -> dict[str, Any]:
    """Roll out the recipe and write `output` atomically. Returns a summary (also stored as metadata)."""
    from vla_hydra.data.d4rl_format import write_d4rl_hdf5
    from vla_hydra.envs.controllers import UniformRandomPolicy

    start = time.perf_counter()
    env_factory = _collection_env(recipe)
    spec = env_factory.spec()
    if spec.discrete and any(float(x) != 0.0 for x in recipe.action_noise_std):
        from vla_hydra.core.exceptions import ConfigError

        raise ConfigError(
            f"data.recipe.action_noise_std={list(recipe.action_noise_std)}: env {recipe.env_id} has "
            "discrete actions, which take no Gaussian noise; use data.recipe.random_action_prob "
            "(epsilon-random actions) instead"
        )
    rng = np.random.default_rng(recipe.seed)
    noise_levels, random_probs = list(recipe.action_noise_std), list(recipe.random_action_prob)
    policies = recipe.policies
    by_id: dict[int, dict] = {}
    for first in range(0, recipe.episodes, recipe.parallel_envs):
        chunk = range(first, min(first + recipe.parallel_envs, recipe.episodes))
        for k, policy in enumerate(policies):  # episode i is collected by policy i % len(policies)
            ids = [i for i in chunk if i % len(policies) == k]
            if not ids:
                continue
            noise = [noise_levels[i % len(noise_levels)] for i in ids]
            eps = [random_probs[i % len(random_probs)] for i in ids]
            seeds = [recipe.seed + i for i in ids]
            by_id.update(zip(ids, _rollout(env_factory, policy, seeds, noise, rng, eps), strict=True))
    episodes = [by_id[i] for i in range(recipe.episodes)]

    ref_seeds = [recipe.seed + _REFERENCE_SEED_OFFSET + i for i in range(recipe.reference_episodes)]
    random_policy = UniformRandomPolicy(
        spec.action_low, spec.action_high, seed=recipe.seed, discrete=spec.discrete
    )
    zero_noise = [0.0] * len(ref_seeds)
    random_eps = _rollout(env_factory, random_policy, ref_seeds, zero_noise, rng)
    # the expert reference: the best noiseless behaviour policy
    policy_returns = [
        float(np.mean([ep["rewards"].sum() for ep in _rollout(env_factory, p, ref_seeds, zero_noise, rng)]))
        for p in policies
    ]

    arrays = {key: np.concatenate([ep[key] for ep in episodes]) for key in episodes[0]}
    for key in ("observations", "next_observations"):
        # as D4RL stores them, and as training reads them: MuJoCo's float64 observations doubled the file
        if arrays[key].dtype.kind == "f":
            arrays[key] = arrays[key].astype(np.float32)
    returns = np.array([ep["rewards"].sum() for ep in episodes])
    summary = {
        "env_id": recipe.env_id,
        "behavior_policy": " + ".join(_policy_name(p) for p in policies),
        "behavior_policy_params": json.dumps(
            _policy_params(policies[0]) if len(policies) == 1 else [_policy_params(p) for p in policies]
        ),
        "action_noise_std": np.asarray(noise_levels, dtype=np.float64),
        "random_action_prob": np.asarray(random_probs, dtype=np.float64),
        "episodes": len(episodes),
        "transitions": len(arrays["rewards"]),
        "seed": recipe.seed,
        "dataset_return_mean": float(returns.mean()),
        "created_by": "vla_hydra.collect",
        "recipe_fingerprint": recipe.fingerprint(),
    }
    random_return = float(np.mean([ep["rewards"].sum() for ep in random_eps]))
    # a "random" dataset's behaviour policy is no expert, even where its returns beat the reference
    # episodes' by chance: no references from it (env.ref_returns, if any, apply)
    random_behaviour = all(isinstance(p, UniformRandomPolicy) for p in policies)
    if random_behaviour:
        log.info(f"a uniform-random behaviour policy: no reference returns stored in {output}")
    elif max(policy_returns) > random_return:
        summary["ref_random_return"], summary["ref_expert_return"] = random_return, max(policy_returns)
        if env_factory.time_limit is not None:  # what the references mean: returns of episodes this long
            summary["ref_time_limit"] = env_factory.time_limit
    else:  # scores normalized by them would run backwards: none are stored (env.ref_returns, if any, apply)
        log.warning(
            f"the behaviour policy's noiseless return {max(policy_returns):.1f} does not beat a random "
            f"policy's {random_return:.1f}: no reference returns stored in {output}"
        )
    write_d4rl_hdf5(output, arrays, summary)
    summary["seconds"] = time.perf_counter() - start
    summary["path"] = str(Path(output).resolve())
    summary["action_noise_std"], summary["random_action_prob"] = noise_levels, random_probs
    return summary


def collection_lock(output: str | Path):
    """Held while `output` is checked and collected: concurrent collections of one file (the jobs of a
    sweep that all need the default dataset) run one at a time, and the later ones find it collected."""
    from vla_hydra.core.io import exclusive_lock

    output = Path(output)
    return exclusive_lock(
        output.with_name(f".{output.name}.lock"),
        on_wait=lambda: log.info(f"waiting for another process collecting {output}"),
    )


def _data_choice(cfg: DictConfig) -> str:
    """The `data=` choice as the user typed it (under Hydra), else the dataset's name."""
    from vla_hydra.cli.job import hydra_choice

    return str(hydra_choice("data") or cfg.data.get("name", "?"))


def _stored_fingerprint(path: Path) -> str | None:
    """The recipe fingerprint a vla_hydra.collect file records, None for any other file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f["metadata/recipe_fingerprint"][()] if "metadata/recipe_fingerprint" in f else None
    except OSError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def collect(cfg: DictConfig) -> dict[str, Any]:
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.core.io import check_writable
    from vla_hydra.core.runtime import set_torch_threads

    if cfg.data.get("recipe") is None:
        raise ConfigError(
            f"data={_data_choice(cfg)}: has no `recipe` to collect from; choose a generated dataset "
            "(e.g. data=pendulum_mixed, data=hopper_sac_medium) or data=checkpoint_rollouts"
        )
    _refuse_overrides_collection_ignores(cfg)
    check_config_values(cfg)
    refuse_unread_additions(cfg)  # `+episodes=3` collected the recipe's 200 episodes, silently
    # small policy networks on a shared CPU: 1 thread is ~30x faster than contended multi-threading
    set_torch_threads(cfg.get("torch_threads", 1))
    if cfg.get("output") is None:
        default = (
            "" if cfg.data.get("path") is None else f" (leave it out to write data.path={cfg.data.path})"
        )
        raise ConfigError(f"output=None: expected the file to write{default}")
    output = Path(cfg.output)
    check_writable(output, "output")
    recipe = hydra.utils.instantiate(cfg.data.recipe)
    _refuse_another_env(cfg, recipe)
    with collection_lock(output):
        if output.exists() and not cfg.overwrite:
            stored = _stored_fingerprint(output)
            if stored == recipe.fingerprint():
                # e.g. the default dataset, already collected by the first `make train` (or by another job
                # of the same sweep while this one waited for the lock): nothing to redo
                log.info(f"already collected: {output} (same data.recipe; overwrite=true collects it again)")
                return {"path": str(output), "collected": False}
            # a file vla_hydra.collect did not write (a downloaded D4RL file, any other file) has no recipe
            made_by = "collected with another data.recipe" if stored else "not written by vla_hydra.collect"
            raise ConfigError(
                f"output={output}: file exists, {made_by}; write this one to another "
                "file (output=<file>; train on it with data=hdf5 data.path=<file>) or pass overwrite=true to "
                "replace it"
            )
        summary = collect_dataset(recipe, output)
    log.info(
        f"wrote {summary['path']}: {summary['transitions']} transitions, {summary['episodes']} episodes, "
        f"dataset return {summary['dataset_return_mean']:.1f}"
        + (
            f"; reference returns stored in the file: uniform-random policy {summary['ref_random_return']:.1f}, "
            f"noiseless behaviour policy {summary['ref_expert_return']:.1f}"
            if "ref_expert_return" in summary
            else ""
        )
        + _published_references_note(cfg, recipe.env_id)
        + f"; {summary['seconds']:.1f}s"
    )
    return summary


def _published_references_note(cfg: DictConfig, env_id: str) -> str:
    """Train/eval score a generated file with its env's published references where conf/env/<env>.yaml has
    them, not with the file's: said so, also when this command's env= is another (data=checkpoint_rollouts
    of a Hopper checkpoint keeps the default env=pendulum, and the note was left out)."""
    from vla_hydra.envs.factory import env_choice

    if cfg.env.get("id") == env_id:
        refs, where = cfg.env.get("ref_returns"), ""
    else:
        choice, config = env_choice(env_id) or (None, {})
        refs, where = config.get("ref_returns"), f" with env={choice}"
    return f" (scores{where} use {env_id}'s published ones: {dict(refs)})" if refs else ""


def _refuse_overrides_collection_ignores(cfg: DictConfig) -> None:
    """`env.<key>=` and `seed=` overrides, which collection would ignore, are refused (from the config
    alone, so before anything is imported or built)."""
    from vla_hydra.cli.job import command_line_overrides
    from vla_hydra.core.exceptions import ConfigError

    for override, key in command_line_overrides():
        if key == "seed":
            raise ConfigError(
                f"{override}: collection draws its episodes' seeds from data.recipe.seed "
                f"(now {cfg.data.recipe.get('seed', 0)}); set data.recipe.seed=<n> instead"
            )
        if key.startswith("env."):
            raise ConfigError(
                f"{override}: collection builds its env from data.recipe.env_id and data.recipe.env_kwargs "
                "(a checkpoint behaviour policy: from its own env settings); env.* options do not apply "
                "(e.g. data.recipe.env_kwargs.max_episode_steps=50)"
            )


def _refuse_another_env(cfg: DictConfig, recipe: CollectionRecipe) -> None:
    """`collect env=cartpole` with a Pendulum recipe used to write Pendulum data without a word: collection
    rolls out the recipe's env (a checkpoint behaviour policy's own), so an `env=` must name that env."""
    from vla_hydra.cli.job import command_line_overrides
    from vla_hydra.core.exceptions import ConfigError

    chosen = [override for override, key in command_line_overrides() if key == "env"]
    if chosen and cfg.env.id != recipe.env_id:
        # a checkpoint acts only in the env it was trained in: data.recipe.env_id cannot change that
        checkpoint = any(getattr(policy, "env_id", None) for policy in recipe.policies)
        instead = (
            f"the behaviour policy checkpoint was trained in {recipe.env_id}; choose one trained in {cfg.env.id}"
            if checkpoint
            else f"choose a data= recipe made in {cfg.env.id}, or set data.recipe.env_id"
        )
        raise ConfigError(
            f"{chosen[0]}: collection rolls out data.recipe.env_id={recipe.env_id} (data={_data_choice(cfg)}), "
            f"not {cfg.env.id}; {instead}"
        )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="collect")
def _hydra_main(cfg: DictConfig) -> None:
    run_cli(collect, cfg)


def main() -> None:
    import sys

    from vla_hydra.cli.overrides import read_argv_as_meant
    from vla_hydra.cli.run_dirs import refuse_occupied_eval_dir_early

    read_argv_as_meant()
    refuse_occupied_eval_dir_early(sys.argv[1:], task="a collection")
    with one_line_hydra_errors("collect"):
        _hydra_main()


if __name__ == "__main__":
    main()
