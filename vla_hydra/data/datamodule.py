"""Offline datamodule: a D4RL-format file loaded once into device tensors, served as blocks of
`updates_per_step` random minibatches so one Lightning step can run several cheap updates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from vla_hydra.core.exceptions import DatasetError
from vla_hydra.core.logging import get_logger
from vla_hydra.data.buffer import TensorBuffer, transitions_from_d4rl
from vla_hydra.data.d4rl_format import CUT_FINAL_EPISODE_CHOICES, FINAL_EPISODE_CUT, read_d4rl_hdf5
from vla_hydra.data.stats import DatasetStats, episode_returns

log = get_logger(__name__)


class _MinibatchBlocks(IterableDataset):
    """Yields dicts of tensors shaped (updates_per_step, batch_size, ...), sampled on the buffer's device."""

    def __init__(
        self,
        buffer: TensorBuffer,
        updates_per_step: int,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        keys: tuple[str, ...] | None = None,
    ):
        self.buffer, self.shape, self.steps_per_epoch = (
            buffer,
            (updates_per_step, batch_size),
            steps_per_epoch,
        )
        # the fields the algorithm reads (its `batch_keys`); None: all of them
        self.sample_kwargs = {} if keys is None else {"keys": keys}
        self.generator = torch.Generator(device=buffer.device)
        self.generator.manual_seed(seed)

    def __iter__(self):
        for _ in range(self.steps_per_epoch):
            yield self.buffer.sample(self.shape, self.generator, **self.sample_kwargs)

    def __len__(self) -> int:
        return self.steps_per_epoch


class OfflineDataModule(L.LightningDataModule):
    """`data=` target for fixed datasets.

    Args:
        path: D4RL-format HDF5 file.
        batch_size: transitions per gradient update.
        updates_per_step: minibatches delivered per Lightning step (the algorithm runs one update each).
        recipe: a `vla_hydra.collect.CollectionRecipe`; when given and `path` is absent, the dataset is
            collected on first use and cached at `path` (atomic write).
        normalize_observations: compute observation mean/std from the dataset (saved with the model).
        steps_per_epoch: Lightning steps per epoch (epochs only pace checkpoints and logging).
        seed: seed of the minibatch sampler (offset by the process rank under DDP).
        segment_length: serve trajectory segments of this length (sequence models such as the Decision
            Transformer set it from their context length) instead of single transitions.
        cut_final_episode: "error" (default) or "truncate": a file whose last episode was cut mid-way
            (no terminal/timeout on the last row) is refused, or the cut is treated as a time limit.
        arrays_loader: for datasets that are not D4RL files (Minari, ...): a callable returning the same
            validated `(arrays, metadata)` as `read_d4rl_hdf5`, called in setup() instead of reading
            `path` (which then only names the dataset's location in errors and results).
        env_family: the env the data must be evaluated in, by name without version (`Hopper`), for
            files that do not record their env id (D4RL's own files; known from the dataset's name).
        max_episode_steps: for files without `timeouts` (D4RL's -v0 files), the time limit their episodes
            were collected with; episode ends are inferred from it as D4RL does. None: the registered
            limit of the file's env (metadata/env_id, else the D4RL name's env, else the env the policy
            is evaluated in, see `use_eval_env`).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 256,
        updates_per_step: int = 1,
        recipe=None,
        normalize_observations: bool = True,
        steps_per_epoch: int = 100,
        seed: int = 0,
        name: str | None = None,
        segment_length: int | None = None,
        arrays_loader: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]] | None = None,
        cut_final_episode: str = "error",
        env_family: str | None = None,
        max_episode_steps: int | None = None,
    ):
        super().__init__()
        if path is None or not str(path).strip():
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError("data.path: empty; expected the path of a D4RL-format HDF5 file")
        self.path = Path(path).expanduser()
        self.name = name or self.path.stem
        self.batch_size, self.updates_per_step = int(batch_size), int(updates_per_step)
        self.recipe, self.normalize_observations = recipe, normalize_observations
        self.steps_per_epoch, self.seed = int(steps_per_epoch), int(seed)
        self.segment_length = int(segment_length) if segment_length else None
        self.arrays_loader = arrays_loader
        if cut_final_episode not in CUT_FINAL_EPISODE_CHOICES:
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError(
                f"data.cut_final_episode={cut_final_episode!r}: expected one of {list(CUT_FINAL_EPISODE_CHOICES)}"
            )
        self.cut_final_episode = cut_final_episode
        self.env_family = env_family
        if max_episode_steps is not None and not (
            isinstance(max_episode_steps, int)
            and not isinstance(max_episode_steps, bool)
            and max_episode_steps >= 1
        ):
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError(
                f"data.max_episode_steps={max_episode_steps!r}: expected a positive integer or null"
            )
        self.max_episode_steps = max_episode_steps
        self._eval_env: tuple[str, int | None] | None = None
        self.buffer = None  # TensorBuffer of transitions, or TrajectoryBuffer of segments
        self._file_actions: np.ndarray | None = None
        self.metadata: dict = {}

    def check_recipe_env(self, env_id: str) -> None:
        """Before a missing dataset is collected (seconds to minutes): its recipe must roll out the env the
        policy is evaluated in (the same check check_compatible makes on a collected file)."""
        recipe_env = getattr(self.recipe, "env_id", None)
        if self.path.exists() or recipe_env is None or recipe_env == env_id:
            return
        from vla_hydra.envs.factory import env_choice_hint

        raise DatasetError(
            self.path,
            "data.recipe.env_id",
            f"would be collected in {recipe_env}, but the policy would be evaluated in env {env_id}; "
            f"use {env_choice_hint(recipe_env)}{dataset_choice_hint(env_id)}",
        )

    def use_eval_env(self, env_id: str, time_limit: int | None = None) -> None:
        """The env the policy will be evaluated in (before setup): a file without `timeouts` whose own env
        is unknown has its episode ends inferred from this env's registered time limit (else `time_limit`,
        the limit the run configures)."""
        self._eval_env = (env_id, time_limit)

    def _file_time_limit(self, metadata: dict) -> tuple[int, str] | None:
        """The time limit of a file without `timeouts` (read_d4rl_hdf5 infers them from it) and its source:
        data.max_episode_steps, else the registered limit of the file's env (metadata/env_id), of the D4RL
        name's env, or of the evaluation env."""
        from vla_hydra.envs.factory import registered_time_limit

        if self.max_episode_steps is not None:
            return int(self.max_episode_steps), "data.max_episode_steps"
        named = [(metadata.get("env_id"), "named by metadata/env_id")]
        if self.env_family:
            named.append((f"{self.env_family}-v5", f"the env of D4RL dataset {self.name}"))
        if self._eval_env:
            named.append((self._eval_env[0], "the env the policy is evaluated in"))
        for env_id, why in named:
            steps = registered_time_limit(str(env_id)) if env_id else None
            if steps:
                return int(steps), f"the registered limit of env {env_id}, {why}"
        if self._eval_env and self._eval_env[1]:
            return int(self._eval_env[1]), f"env.max_episode_steps of env {self._eval_env[0]}, evaluated in"
        return None

    def prepare_data(self) -> None:
        if self.path.exists() or self.recipe is None:
            return
        from vla_hydra.collect import collect_dataset, collection_lock
        from vla_hydra.core.io import check_writable

        check_writable(self.path, "data.path")  # before the collection, not after it
        with collection_lock(self.path):
            if self.path.exists():  # another job collected it while this one waited
                return
            log.info(f"dataset {self.path} not found: collecting it from its recipe (once; cached)")
            summary = collect_dataset(self.recipe, self.path)
        log.info(
            f"collected {summary['transitions']} transitions in {summary['seconds']:.1f}s -> {self.path}"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.buffer is not None:
            return
        arrays, self.metadata = (
            self.arrays_loader()
            if self.arrays_loader
            else read_d4rl_hdf5(self.path, self.cut_final_episode, time_limit=self._file_time_limit)
        )
        self._check_reference_returns()
        stored = self.metadata.get("recipe_fingerprint")
        if self.recipe is not None and stored is not None and stored != self.recipe.fingerprint():
            raise DatasetError(
                self.path,
                "metadata/recipe_fingerprint",
                # the file itself is fine: a user who collected it with other recipe settings loads it as
                # it is (data=hdf5), as the recipe's dataset it would mislabel results
                "file was collected with other data.recipe settings than this run's; delete it to "
                f"re-collect, or train on it as it is with data=hdf5 data.path={self.path}",
            )
        if self.recipe is not None and stored is None and self.name != self.path.stem:
            # a file of the user's own at data.path, not this recipe's: results and reports name it by
            # its file, not as the recipe's dataset
            log.info(
                f"data.path={self.path}: not collected by data={self.name}'s recipe; named {self.path.stem}"
            )
            self.name = self.path.stem
        observations = arrays["observations"]
        self.num_raw_transitions = len(observations)
        self.observation_shape = tuple(observations.shape[1:])
        actions = arrays["actions"]
        # Discrete(n) data stores class indices: one integer per step (D4RL files hold Box actions only)
        self.discrete_actions = actions.ndim == 1 and np.issubdtype(actions.dtype, np.integer)
        self.action_dim = 1 if self.discrete_actions else int(np.prod(actions.shape[1:]))
        self.action_range = (int(actions.min()), int(actions.max())) if self.discrete_actions else None
        self.action_dtype = actions.dtype  # integer action vectors are no Box env's (check_compatible)
        self._file_actions = None if self.discrete_actions else actions  # for check_compatible's bounds check
        self._obs_mean = torch.as_tensor(observations.mean(axis=0, dtype=np.float64), dtype=torch.float32)
        self._obs_std = torch.as_tensor(observations.std(axis=0, dtype=np.float64), dtype=torch.float32)
        self.episode_returns = episode_returns(arrays["rewards"], arrays["terminals"], arrays["timeouts"])
        if self.metadata.get(FINAL_EPISODE_CUT) and len(self.episode_returns) > 1:
            # a partial last episode's return is no episode return (its short sum would widen the range
            # that IQL/CQL reward scaling divides by); CORL's return range leaves it out too
            self.episode_returns = self.episode_returns[:-1]
        if self.segment_length:
            from vla_hydra.data.trajectories import TrajectoryBuffer

            self.buffer = TrajectoryBuffer(arrays, self.segment_length)
        else:
            self.buffer = TensorBuffer(transitions_from_d4rl(arrays))
            if len(self.buffer) == 0:  # else torch's "random_ expects from < to" at the first batch
                raise DatasetError(
                    self.path,
                    "next_observations",
                    "missing, and every row ends a timed-out episode: no transition has a successor "
                    "(store next_observations, or mark true ends as terminals)",
                )
        if self.batch_size > len(self.buffer):
            unit = "trajectory segments" if self.segment_length else "transitions"
            log.warning(
                f"data.batch_size={self.batch_size} is larger than the dataset ({len(self.buffer):,} {unit} in "
                f"{self.path}): minibatches are drawn with replacement, so each repeats rows"
            )

    def _check_reference_returns(self) -> None:
        """The stored reference returns and their episode length, before they score anything: else a
        traceback at the first evaluation (float() of an array, int() of text, or a division by
        expert - random = 0)."""
        import math

        from vla_hydra.core.config import is_number

        minari = "minari_dataset_id" in self.metadata
        for key in ("ref_random_return", "ref_expert_return"):
            value = self.metadata.get(key)
            if value is not None and not (is_number(value) and math.isfinite(value)):
                raise DatasetError(self.path, f"metadata/{key}", f"holds {value!r}; expected a finite number")
        limit = self.metadata.get("ref_time_limit")  # compared with the evaluation env's episode length
        if limit is not None and not (is_number(limit) and limit >= 1 and float(limit).is_integer()):
            raise DatasetError(
                self.path,
                "metadata/ref_time_limit",
                f"holds {limit!r}; expected a whole number of steps >= 1 (the episode length the reference "
                "returns were measured at)",
            )
        refs = self.ref_returns
        if refs is not None and refs["random"] == refs["expert"]:
            raise DatasetError(
                self.path,
                "ref_max_score" if minari else "metadata/ref_expert_return",
                f"equals the random reference return ({refs['random']:g}); expected a different return",
            )

    @property
    def ref_returns(self) -> dict[str, float] | None:
        """The (random, expert) returns stored in the file, if any (see `reference_returns`)."""
        if "ref_random_return" in self.metadata and "ref_expert_return" in self.metadata:
            return {
                "random": float(self.metadata["ref_random_return"]),
                "expert": float(self.metadata["ref_expert_return"]),
            }
        return None

    def reference_returns(
        self, env_ref_returns: dict[str, float] | None, time_limit: int | None = None
    ) -> dict[str, float] | None:
        """What normalized scores use. A file made by vla_hydra.collect stores its own random and
        behaviour-policy returns; where the env has published references (D4RL's for MuJoCo), those
        win, so a generated file scores the same through any data= and comparably with papers. Other
        files' stored references (Minari's) come first; the env's are the fallback. The file's own are
        dropped when they were measured on episodes of another length than `time_limit` (the
        evaluation env's; the env's published ones are dropped by EnvFactory itself)."""
        generated = self.metadata.get("created_by") == "vla_hydra.collect"
        if generated and env_ref_returns:
            return dict(env_ref_returns)
        stored = self.ref_returns
        if stored and time_limit is not None and self.reference_time_limit not in (None, time_limit):
            stored = None
        return stored or (dict(env_ref_returns) if env_ref_returns else None)

    @property
    def reference_time_limit(self) -> int | None:
        """The episode length the file's reference returns were measured at: what vla_hydra.collect
        recorded, else the registered length of the env the file names."""
        from vla_hydra.envs.factory import registered_time_limit

        if self.metadata.get("ref_time_limit") is not None:
            return int(self.metadata["ref_time_limit"])
        env_id = self.metadata.get("env_id")
        return registered_time_limit(str(env_id)) if env_id else None

    def check_compatible(self, spec) -> None:
        """Fail early, naming the field, when the file does not fit the env the policy is evaluated in."""
        obs_shape = self.observation_shape
        family = self.env_family
        if family is None and self.arrays_loader is None and not self.metadata.get("env_id"):
            # a D4RL file read with data=hdf5 (halfcheetah_medium-v2.hdf5): its name names its env, as with
            # data=d4rl; HalfCheetah data trained and scored in Walker2d (same shapes) without a word
            from vla_hydra.data.d4rl_format import d4rl_env_family, d4rl_name_from_file

            family = d4rl_env_family(d4rl_name_from_file(self.path))
        if family and spec.env_id.split("-v")[0].lower() != family.lower():
            from vla_hydra.envs.factory import env_choice_hint

            raise DatasetError(
                self.path,
                None,
                f"D4RL dataset '{self.name}' holds {family} data, but the policy would be evaluated "
                f"and scored in env {spec.env_id}; use {env_choice_hint(f'{family}-v5')}",
            )
        # the env the data came from, when the dataset records it, tells the user which env= to pick
        source = self.metadata.get("env_id")
        hint = ""
        if source and source != spec.env_id:
            from vla_hydra.envs.factory import env_choice_hint

            hint = (
                f" (the dataset was collected in {source}: {env_choice_hint(source)}"
                f"{dataset_choice_hint(spec.env_id)})"
            )
        if obs_shape == tuple(spec.observation_shape) and hint:
            # same shapes, other env (e.g. HalfCheetah data in Walker2d): it would train and score nonsense
            raise DatasetError(
                self.path,
                "metadata/env_id",
                f"collected in {source}, but the policy would be evaluated in env {spec.env_id}; "
                f"use {env_choice_hint(source)}{dataset_choice_hint(spec.env_id)}",
            )
        if obs_shape != tuple(spec.observation_shape):
            raise DatasetError(
                self.path,
                "observations",
                f"shape per step {obs_shape} does not match env {spec.env_id} observation shape "
                f"{tuple(spec.observation_shape)}{hint}",
            )
        if self.discrete_actions != spec.discrete:
            found = "integer class indices" if self.discrete_actions else f"{self.action_dim}-dim vectors"
            expected = f"Discrete({spec.action_dim})" if spec.discrete else f"Box({spec.action_dim},)"
            raise DatasetError(
                self.path,
                "actions",
                f"holds {found}, but env {spec.env_id} has {expected} actions{hint}",
            )
        if self.discrete_actions:
            low, high = self.action_range
            if low < 0 or high >= spec.action_dim:
                raise DatasetError(
                    self.path,
                    "actions",
                    f"class indices range over [{low}, {high}], outside env {spec.env_id}'s "
                    f"Discrete({spec.action_dim}) range [0, {spec.action_dim - 1}]{hint}",
                )
            return
        if self.action_dtype.kind in "biu":
            # (N, d) integers or booleans (MultiDiscrete/MultiBinary data, one-hot classes) were cast to
            # floats and trained on as if they were this env's continuous actions
            raise DatasetError(
                self.path,
                "actions",
                f"has dtype {self.action_dtype} ({self.action_dim}-dim integer vectors), but env {spec.env_id} "
                f"has Box({spec.action_dim},) actions: expected floating-point action vectors{hint}",
            )
        act_dim = self.action_dim
        if act_dim != spec.action_dim:
            raise DatasetError(
                self.path,
                "actions",
                f"dimension {act_dim} does not match env {spec.env_id} action dimension {spec.action_dim}{hint}",
            )
        self._check_action_bounds(spec, hint)

    def _check_action_bounds(self, spec, hint: str = "") -> None:
        """Algorithms rescale dataset actions to [-1, 1] with the env's bounds and clip the rest. Slightly
        out-of-bounds actions (some benchmarks' data) are clipped with a warning; many beyond the bounds by
        more than their width are another env's or unscaled actions, which clipping would turn into
        bang-bang data that trains and scores without a word: refused."""
        low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
        actions, self._file_actions = self._file_actions, None  # checked once, then released
        if actions is None:
            return
        actions = actions.reshape(len(actions), -1)
        bounds = f"env {spec.env_id}'s bounds [{low.min():g}, {high.max():g}] (largest |a| {np.abs(actions).max():.3g})"
        width = high - low
        far = ((actions < low - width) | (actions > high + width)).any(axis=-1)
        if far.mean() > 0.01:
            raise DatasetError(
                self.path,
                "actions",
                f"{far.mean():.0%} of the steps have actions beyond {bounds} by more than the bounds' width; "
                f"expected actions in the env's units: rescale them in the file (clip them there if they are "
                f"this env's){hint}",
            )
        outside = ((actions < low - 1e-3 * width) | (actions > high + 1e-3 * width)).any(axis=-1)
        if outside.mean() > 0.01:
            log.warning(
                f"dataset {self.path} [actions]: {outside.mean():.0%} of the steps have actions outside {bounds}; "
                "training clips them to the bounds"
            )

    def stats(self) -> DatasetStats:
        returns = self.episode_returns
        return DatasetStats(
            obs_mean=self._obs_mean if self.normalize_observations else None,
            obs_std=self._obs_std if self.normalize_observations else None,
            episode_return_min=float(returns.min()),
            episode_return_max=float(returns.max()),
            num_transitions=self.num_raw_transitions,
        )

    def train_dataloader(self) -> DataLoader:
        device, rank, keys = torch.device("cpu"), 0, None
        if self.trainer is not None:
            device, rank = self.trainer.strategy.root_device, self.trainer.global_rank
            # gather only the fields the algorithm reads (BC: observations and actions), as a plain loop
            # would; the sampled rows are the same either way
            keys = getattr(self.trainer.lightning_module, "batch_keys", None)
        self.buffer = self.buffer.to(device)
        blocks = _MinibatchBlocks(
            self.buffer, self.updates_per_step, self.batch_size, self.steps_per_epoch, self.seed + rank, keys
        )
        # batch_size=None: the dataset already yields whole batches; no collation, no workers.
        return DataLoader(blocks, batch_size=None, num_workers=0)


def d4rl_datamodule(name: str | None = None, path: str | None = None, **kwargs) -> OfflineDataModule:
    """`data=d4rl`: a D4RL dataset by name (hopper-medium-v2, ...) from the D4RL download dir or `path`;
    with `path` alone the name is read from D4RL's file name (hopper_medium_replay-v2.hdf5). The name's
    env (hopper -> Hopper) must be the env the policy is evaluated and scored in."""
    from vla_hydra.data.d4rl_format import d4rl_env_family, d4rl_name_from_file, resolve_d4rl_path

    if not name and not path:
        from vla_hydra.core.exceptions import ConfigError

        raise ConfigError(
            "data.name: required for data=d4rl, e.g. data.name=hopper-medium-v2 (or data.path=<file>)"
        )
    name = name or d4rl_name_from_file(path)
    resolved = resolve_d4rl_path(name, path)
    return OfflineDataModule(path=str(resolved), name=name, env_family=d4rl_env_family(name), **kwargs)


def minari_datamodule(dataset_id: str, **kwargs) -> OfflineDataModule:
    """`data=minari`: a local Minari dataset by id (namespace/name-v0), converted to D4RL-style arrays.

    Found, read and validated in setup() (the loader), so a missing dataset fails as a one-line
    DatasetError there rather than inside Hydra's instantiate.
    """
    from functools import partial

    from vla_hydra.data.minari_format import load_minari_arrays, minari_data_path

    return OfflineDataModule(
        path=str(minari_data_path(dataset_id)),
        name=dataset_id,
        arrays_loader=partial(load_minari_arrays, dataset_id),
        **kwargs,
    )


def dataset_choice_hint(env_id: str) -> str:
    """For error messages: the `data=` choices whose recipe collects in `env_id` (", or keep this env
    with data=a or data=b"), or "" when there are none. A choice that inherits its recipe from another
    (cartpole_expert from cartpole_mixed) is followed through its defaults list."""
    from omegaconf import OmegaConf

    from vla_hydra.core.config import CONF_DIR

    data_dir = Path(CONF_DIR, "data")

    def recipe_env(name: str, depth: int = 0) -> str | None:
        path = data_dir / f"{name}.yaml"
        if depth > 5 or not path.is_file():
            return None
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        recipe = raw.get("recipe") if isinstance(raw.get("recipe"), dict) else {}
        if "env_id" in recipe:
            env = recipe["env_id"]  # null (checkpoint_rollouts: the checkpoint's env) or ${...}: unknown
            return env if isinstance(env, str) and "${" not in env else None
        parents = [entry for entry in raw.get("defaults", []) if isinstance(entry, str) and entry != "_self_"]
        return next((found for found in (recipe_env(p, depth + 1) for p in parents) if found), None)

    choices = [
        f"data={path.stem}" for path in sorted(data_dir.glob("*.yaml")) if recipe_env(path.stem) == env_id
    ]
    return f", or keep this env with {' or '.join(choices)}" if choices else ""
