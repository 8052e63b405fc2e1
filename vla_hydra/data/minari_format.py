"""Local Minari datasets as D4RL-style arrays, so `data=minari` trains through the same OfflineDataModule.

Minari (the `minari` package, optional extra `vla-hydra[minari]`) keeps datasets under
$MINARI_DATASETS_PATH or ~/.minari/datasets as `<dataset_id>/data/`. Each episode stores N+1
observations for N steps, so next observations come from the episode itself (no row is dropped), and
`terminations` / `truncations` map to D4RL's `terminals` / `timeouts`. Nothing is downloaded here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vla_hydra.core.exceptions import ConfigError, DatasetError
from vla_hydra.data.d4rl_format import FLOAT_KEYS, validate_transitions

_HOW_TO_GET = (
    "download it on a machine with internet (`minari download {id}`) and copy its folder there or point "
    "$MINARI_DATASETS_PATH at it, or create it locally with "
    "minari.DataCollector(env).create_dataset(dataset_id='{id}')"
)


def _import_minari():
    try:
        import minari
    except ImportError as err:
        raise ConfigError("data=minari needs the `minari` package: pip install 'vla-hydra[minari]'") from err
    return minari


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def minari_root() -> Path:
    """Minari's datasets folder by its own rule (minari.storage.get_dataset_path), computed without
    importing minari or creating folders, so building the datamodule stays cheap and side-effect free."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root is not None else Path("~/.minari/datasets").expanduser()


def minari_data_path(dataset_id: str) -> Path:
    return minari_root() / dataset_id / "data"


def resolve_minari_path(dataset_id: str) -> Path:
    """The local data folder of `dataset_id`; the error says where it looked and how to get the dataset."""
    minari = _import_minari()
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as err:  # TypeError: Minari's parser chokes on a missing -vN
        raise ConfigError(
            f"data.dataset_id={dataset_id}: not a Minari dataset id (expected (namespace/)name-vN, "
            f"e.g. mujoco/hopper/medium-v0)"
        ) from err
    path = minari_data_path(dataset_id)
    if path.is_dir():
        return path
    local = []
    if minari_root().is_dir():  # minari.list_local_datasets() would create the folder it lists
        with warnings.catch_warnings():  # Minari warns about every misconfigured neighbour; not our concern
            warnings.simplefilter("ignore")
            local = sorted(minari.list_local_datasets())
    shown = ", ".join(local[:10]) + (f" (+{len(local) - 10} more)" if len(local) > 10 else "")
    raise DatasetError(
        path,
        None,
        f"Minari dataset '{dataset_id}' not found locally (looked in {path}; datasets root {minari_root()} from "
        f"$MINARI_DATASETS_PATH, default ~/.minari/datasets; local datasets there: {shown or 'none'}); "
        + _HOW_TO_GET.format(id=dataset_id),
    )


def minari_episodes_to_d4rl(path: str | Path, dataset) -> dict[str, np.ndarray]:
    """Concatenate a MinariDataset's episodes into validated float32 D4RL arrays with next_observations
    (Discrete action spaces: int64 class indices, as vla_hydra.collect writes them).

    Every episode must hold one more observation than steps and end in a termination or truncation;
    a step both terminated and truncated counts as terminal only (as vla_hydra.collect writes it).
    """
    import gymnasium as gym

    spaces = {"observations": dataset.observation_space, "actions": dataset.action_space}
    discrete_actions = isinstance(dataset.action_space, gym.spaces.Discrete)
    for field, space in spaces.items():
        if not isinstance(space, gym.spaces.Box) and not (field == "actions" and discrete_actions):
            raise DatasetError(
                path,
                field,
                f"{type(space).__name__} {field[:-1]} space is not supported: only Box (array) spaces "
                f"and Discrete actions are; "
                f"flatten Dict/Tuple observations when collecting (gymnasium.wrappers.FlattenObservation)",
            )
    obs_shape, act_shape = dataset.observation_space.shape, dataset.action_space.shape
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    }
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        if n == 0:
            continue
        obs = np.asarray(episode.observations)
        if obs.shape[1:] != obs_shape or len(obs) != n + 1:
            raise DatasetError(
                path,
                "observations",
                f"episode {episode.id} has observations of shape {obs.shape} for {n} steps, expected "
                f"({n + 1}, {', '.join(map(str, obs_shape))}) (Minari stores one more observation than steps)",
            )
        steps = {
            "actions": np.asarray(episode.actions),
            "terminations": np.asarray(episode.terminations, bool),
            "truncations": np.asarray(episode.truncations, bool),
        }
        for key, value in steps.items():
            if len(value) != n:
                raise DatasetError(
                    path, key, f"episode {episode.id} has {len(value)} rows, expected {n} (its rewards)"
                )
        if steps["actions"].shape[1:] != act_shape:
            raise DatasetError(
                path,
                "actions",
                f"episode {episode.id} has actions of shape {steps['actions'].shape[1:]} per step, "
                f"expected {act_shape} (the dataset's action space)",
            )
        terminal, truncated = steps["terminations"], steps["truncations"]
        if not (terminal[-1] or truncated[-1]):
            raise DatasetError(
                path,
                "truncations",
                f"episode {episode.id} ends with neither termination nor truncation: the episode is cut",
            )
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(steps["actions"])
        parts["rewards"].append(np.asarray(episode.rewards).reshape(n))
        parts["terminals"].append(terminal)
        parts["timeouts"].append(truncated & ~terminal)
    empty = {
        "observations": (0, *obs_shape),
        "next_observations": (0, *obs_shape),
        "actions": (0, *act_shape),
        "rewards": (0,),
    }
    arrays = {}
    for key, chunks in parts.items():
        dtype = bool if key in ("terminals", "timeouts") else None  # values as stored, checked below
        if key == "actions" and discrete_actions:
            dtype = np.int64
        arrays[key] = np.concatenate(chunks, dtype=dtype) if chunks else np.zeros(empty.get(key, (0,)), dtype)
    # validated before the cast to float32 (Minari keeps rewards, MuJoCo observations as float64), which
    # would turn a value beyond float32's range into an inf that the error would misname
    validate_transitions(path, arrays)
    floats = [key for key in FLOAT_KEYS if key in arrays and not (key == "actions" and discrete_actions)]
    return {**arrays, **{key: arrays[key].astype(np.float32, copy=False) for key in floats}}


def load_minari_arrays(dataset_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) for a local Minari dataset, validated like a D4RL file (errors name the field).

    Metadata keeps what vla_hydra uses: `env_id` (named in env-mismatch errors) and, when the dataset
    has Minari reference scores, `ref_random_return` / `ref_expert_return` for normalized scores.
    """
    minari = _import_minari()
    path = resolve_minari_path(dataset_id)
    try:
        dataset = minari.load_dataset(dataset_id, download=False)
    except Exception as err:  # unsupported Minari version, broken metadata, unreadable HDF5/arrow files
        raise DatasetError(path, None, f"Minari cannot read it: {_one_line(err)}") from err
    try:
        arrays = minari_episodes_to_d4rl(path, dataset)
    except OSError as err:  # a truncated or damaged data file: Minari opens it at the first episode
        raise DatasetError(
            path,
            None,
            f"Minari cannot read its episodes ({_one_line(err)}); a partial copy or an interrupted download? "
            "copy or download it again",
        ) from err
    metadata: dict[str, Any] = {"minari_dataset_id": dataset.id}
    if dataset.env_spec is not None:
        metadata["env_id"] = dataset.env_spec.id
    stored = dataset.storage.metadata
    if stored.get("ref_min_score") is not None and stored.get("ref_max_score") is not None:
        metadata["ref_random_return"] = float(stored["ref_min_score"])
        metadata["ref_expert_return"] = float(stored["ref_max_score"])
        # Minari measures them in its eval env (default: the collection env) at that spec's episode
        # length, which can differ from the registered one the env id alone would give
        time_limit = _spec_time_limit(stored.get("eval_env_spec"), dataset.env_spec)
        if time_limit is not None:
            metadata["ref_time_limit"] = time_limit
    return arrays, metadata


def _spec_time_limit(eval_env_spec_json: Any, env_spec) -> int | None:
    """max_episode_steps of the dataset's eval env spec (stored as JSON text), else of its env spec."""
    import json

    if isinstance(eval_env_spec_json, str):
        try:
            steps = json.loads(eval_env_spec_json).get("max_episode_steps")
        except (ValueError, AttributeError):
            steps = None
    else:
        steps = getattr(env_spec, "max_episode_steps", None)
    return int(steps) if steps is not None else None
