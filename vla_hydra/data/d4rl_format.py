"""Read and write datasets in D4RL's HDF5 schema with h5py (the `d4rl` package itself is optional).

Schema: top-level `observations` (N, obs...), `actions` (N, act), `rewards` (N,), `terminals` (N,)
bool (true termination: no bootstrap), `timeouts` (N,) bool (truncation: bootstrap), optionally
`next_observations` (N, obs...), and a `metadata/` group of scalars (env id, behaviour policy,
reference returns). Files from before D4RL recorded `timeouts` (the -v0 files) get them inferred from
the env's time limit, as D4RL's own readers do (`infer_timeouts`).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vla_hydra.core.exceptions import DatasetError
from vla_hydra.core.io import atomic_path
from vla_hydra.core.logging import get_logger

log = get_logger(__name__)

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
FLOAT_KEYS = ("observations", "actions", "rewards", "next_observations")


def write_d4rl_hdf5(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write atomically: readers never see a partial file, an existing file is replaced only on success."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value, **_checksummed_chunks(value))
            group = f.create_group("metadata")
            for key, value in metadata.items():
                group.create_dataset(key, data=value)
    return path


# rows per HDF5 chunk: ~1 MiB, large enough that reading a 1M-transition file stays a few sequential reads
_CHUNK_BYTES = 1 << 20


def _checksummed_chunks(value: np.ndarray) -> dict[str, Any]:
    """Chunked storage with HDF5's Fletcher-32 checksum per chunk: a flipped bit in a copied or damaged
    file fails the read (named by read_d4rl_hdf5) instead of training on silently altered data."""
    if value.ndim == 0 or len(value) == 0:
        return {}
    row_bytes = max(1, value.itemsize * int(np.prod(value.shape[1:])))
    rows = int(min(len(value), max(1, _CHUNK_BYTES // row_bytes)))
    return {"chunks": (rows, *value.shape[1:]), "fletcher32": True}


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# what read_d4rl_hdf5 does with a last episode cut mid-way (data.cut_final_episode)
CUT_FINAL_EPISODE_CHOICES = ("error", "truncate")


# a file's time limit for infer_timeouts: (steps, where that number comes from), None when unknown
TimeLimit = tuple[int, str]


def read_d4rl_hdf5(
    path: str | os.PathLike,
    cut_final_episode: str = "error",
    time_limit: int | TimeLimit | Callable[[dict[str, Any]], TimeLimit | None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load and validate a D4RL-format file. Every problem raises DatasetError naming file and field.

    cut_final_episode: what to do when the last row is neither terminal nor timeout (collection stopped
    mid-episode): "error", or "truncate" to treat the cut as a time limit, as d4rl.qlearning_dataset does.
    time_limit: for a file without `timeouts` (D4RL's -v0 files): the env's max_episode_steps, as a
    number, a (number, its source) pair, or a function of the file's metadata giving such a pair or None;
    without one, the registered limit of the env the file's metadata names. See `infer_timeouts`.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            path, None, "file not found (make one with `python -m vla_hydra.collect output=<file>`)"
        )
    if path.is_dir():
        raise DatasetError(path, None, "a directory; expected a D4RL-format HDF5 file")
    if not os.access(path, os.R_OK):
        raise DatasetError(path, None, "not readable by this user (permissions)")
    if not h5py.is_hdf5(path):
        raise DatasetError(path, None, "not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            for key in (*REQUIRED_KEYS, "next_observations"):
                if key not in f and key in REQUIRED_KEYS and key != "timeouts":
                    raise DatasetError(
                        path, key, f"missing required key (expected D4RL keys {', '.join(REQUIRED_KEYS)})"
                    )
                if key in f and f.get(key) is None:  # a soft or external link to nothing (h5py: KeyError)
                    link = f.get(key, getlink=True)
                    raise DatasetError(
                        path, key, f"is a link ({link!r}) whose target cannot be opened; expected an array"
                    )
                if key in f and not (isinstance(f[key], h5py.Dataset) and f[key].ndim >= 1):
                    found = "a group" if isinstance(f[key], h5py.Group) else "a scalar"
                    raise DatasetError(path, key, f"is {found}; expected an array with one row per step")
            arrays = {
                key: _read_array(path, f, key) for key in (*REQUIRED_KEYS, "next_observations") if key in f
            }
            # real D4RL files nest the behaviour policy's weights in sub-groups (metadata/policy/fc0/...):
            # only the group's own datasets are metadata here; a `metadata` array of a converter's own
            # is no such group and is left alone, like the other keys D4RL readers do not use
            group = f["metadata"] if isinstance(f.get("metadata"), h5py.Group) else {}
            metadata = {k: _decode(v[()]) for k, v in group.items() if isinstance(v, h5py.Dataset)}
    except OSError as err:  # truncated or corrupt: h5py's header check passes, reading fails
        if err.errno == errno.EAGAIN:  # HDF5's file lock: the file is not damaged, and not to be deleted
            raise DatasetError(
                path,
                None,
                "locked by another process that has it open for writing (HDF5 file lock); wait until it "
                "has finished writing the file, then run again",
            ) from err
        raise DatasetError(
            path,
            None,
            f"unreadable HDF5 file ({' '.join(str(err).split())}); a partial copy or an interrupted write? "
            "delete it (a generated dataset is collected again on the next run)",
        ) from err
    if "timeouts" not in arrays:
        arrays["timeouts"] = _inferred_timeouts(path, arrays["terminals"], metadata, time_limit)
    if cut_final_episode == "truncate" and len(arrays["timeouts"]) and not arrays["terminals"][-1]:
        if not arrays["timeouts"][-1]:
            # read as a time limit (bootstrapped); noted so statistics over whole episodes can leave it out
            metadata[FINAL_EPISODE_CUT] = True
        arrays["timeouts"][-1] = True
    validate_transitions(path, arrays)
    return arrays, metadata


def infer_timeouts(terminals: np.ndarray, time_limit: int) -> np.ndarray:
    """Timeouts of a file that does not store them, by D4RL's rule for such files (qlearning_dataset,
    sequence_dataset): an episode also ends on the step whose counter reaches the env's time limit,
    `episode_step == max_episode_steps - 1`, the counter restarting after every terminal and every such
    end. So episodes are cut every `time_limit` rows after the previous terminal (D4RL's own loops reset
    the counter to 0 and then count the ending row, so their later episodes end a step early; the env's
    episodes did not). A step
    that is both terminal and at the limit is terminal only. Rows after the last end are a cut episode
    (the reader's cut_final_episode)."""
    done = np.asarray(terminals, dtype=bool)
    done = done.any(axis=tuple(range(1, done.ndim)))  # (N, 1) columns as (N,)
    rows = np.arange(len(done))
    # first row of each row's terminal-delimited stretch: one past the last terminal before it
    last_terminal = np.maximum.accumulate(np.where(done, rows, -1))
    first = np.concatenate([[0], last_terminal[:-1] + 1]) if len(done) else rows
    return ((rows - first + 1) % int(time_limit) == 0) & ~done


def _inferred_timeouts(
    path: Path, terminals: np.ndarray, metadata: dict[str, Any], time_limit: Any
) -> np.ndarray:
    """`timeouts` for a file without them, from its env's time limit (one info line says which); else
    the one-line error."""
    if callable(time_limit):
        time_limit = time_limit(metadata)
    if isinstance(time_limit, (int, np.integer)) and not isinstance(time_limit, bool):
        time_limit = (int(time_limit), "read_d4rl_hdf5's time_limit")
    if time_limit is None and metadata.get("env_id"):
        from vla_hydra.envs.factory import registered_time_limit

        steps = registered_time_limit(str(metadata["env_id"]))
        env_id = metadata["env_id"]
        time_limit = (
            (steps, f"the registered limit of env {env_id}, named by metadata/env_id") if steps else None
        )
    if time_limit is None or int(time_limit[0]) < 1:
        raise DatasetError(
            path,
            "timeouts",
            "missing, and no time limit is known to infer them from (files older than D4RL's timeouts end an "
            "episode at the env's max_episode_steps): set data.max_episode_steps=<the time limit the data was "
            f"collected with>, or use D4RL's -v2 files (expected D4RL keys {', '.join(REQUIRED_KEYS)})",
        )
    steps, source = int(time_limit[0]), time_limit[1]
    if np.asarray(terminals).dtype.kind not in "biuf":  # validate_transitions names the bad terminals
        return np.zeros(len(terminals), bool)
    timeouts = infer_timeouts(terminals, steps)
    log.info(
        f"dataset {path} has no timeouts: inferred {int(timeouts.sum())} timeouts from a {steps}-step time limit ({source}), "
        f"as D4RL does: an episode also ends after {steps} steps without a terminal"
    )
    return timeouts


def _unwritten(dataset: h5py.Dataset) -> str | None:
    """What of `dataset` was created but never written (a writer killed while filling it, or between
    creating and filling it), which HDF5 reads back as its fill value, 0s; None when all of it was."""
    if dataset.size == 0 or dataset.is_virtual or dataset.external:
        return None
    if dataset.chunks is None:  # contiguous: allocated whole at its first write
        return None if dataset.id.get_storage_size() else "never written (it reads as 0s)"
    chunks = int(
        np.prod([-(-size // chunk) for size, chunk in zip(dataset.shape, dataset.chunks, strict=True)])
    )
    written = dataset.id.get_num_chunks()
    return (
        None if written >= chunks else f"only {written} of its {chunks} chunks written (the rest reads as 0s)"
    )


def _read_array(path: Path, f: h5py.File, key: str) -> np.ndarray:
    unwritten = _unwritten(f[key])
    if unwritten:
        raise DatasetError(
            path,
            key,
            f"{unwritten}: the file was not finished, an interrupted write? write it again (a generated "
            "dataset: delete it, it is collected again on the next run)",
        )
    try:
        return f[key][()]
    except OSError as err:  # a chunk whose Fletcher-32 checksum fails, or a damaged compressed chunk
        plist = f[key].id.get_create_plist()
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        missing = [str(code) for code, *_ in filters if not h5py.h5z.filter_avail(code)]
        if missing:  # not damaged: compressed with a filter plugin (blosc, lz4, ...) this h5py lacks
            raise DatasetError(
                path,
                key,
                f"compressed with HDF5 filter {', '.join(missing)}, which is not available here; expected "
                "h5py's own filters (gzip, lzf, szip): install the filter's plugin (e.g. pip install "
                "hdf5plugin, with HDF5_PLUGIN_PATH set to its plugin folder) or re-save the file with gzip",
            ) from err
        raise DatasetError(
            path,
            key,
            f"data damaged ({' '.join(str(err).split())}; files written by vla_hydra.collect carry a checksum "
            "per chunk): restore the file from its source, or delete it (a generated dataset is collected "
            "again on the next run)",
        ) from err


# metadata entry read_d4rl_hdf5 adds (not stored in files) when it ended a cut last episode with a timeout
FINAL_EPISODE_CUT = "final_episode_cut"

# per-step scalars: one value per row; a trailing axis of 1 ((N, 1), as some converters write) is accepted
SCALAR_KEYS = ("rewards", "terminals", "timeouts")

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def validate_transitions(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Check rows, shapes, dtypes and values in place (squeezing (N, 1) per-step scalars to (N,), giving
    (N,) float actions their column (N, 1))."""
    n = len(arrays["observations"])
    if n == 0:
        raise DatasetError(path, "observations", "dataset is empty (0 transitions)")
    for key, value in arrays.items():
        if len(value) != n:
            raise DatasetError(path, key, f"has {len(value)} rows, expected {n} (the length of observations)")
        if value.dtype.kind not in "biuf":
            raise DatasetError(path, key, f"has dtype {value.dtype}, expected numbers")
        if key in SCALAR_KEYS:
            if value.ndim == 2 and value.shape[1] == 1:
                arrays[key] = value = value[:, 0]
            if value.ndim != 1:
                raise DatasetError(path, key, f"has shape {value.shape}, expected ({n},): one value per step")
        if key == "actions" and value.ndim == 1 and value.dtype.kind in "fb":
            # Box(1,) actions stored as (N,) floats: one column, as the losses expect (B, action_dim)
            # batches; integer (N,) actions stay as they are, the class indices of a Discrete env, and
            # boolean ones are such indices too (else served as (B,) against (B, 1) predictions)
            arrays[key] = value = value[:, None] if value.dtype.kind == "f" else value.astype(np.int64)
        if key == "actions" and value.ndim == 2 and value.shape[1] == 1 and value.dtype.kind in "biu":
            # class indices stored as a column (N, 1), as the per-step scalars above may be: Discrete
            # actions, not 1-dim Box vectors (CartPole data was refused as "1-dim vectors")
            arrays[key] = value = value[:, 0].astype(np.int64)
        if key == "actions" and value.ndim > 2:  # (N, 1, act): losses would broadcast it against (B, act)
            raise DatasetError(
                path, key, f"has shape {value.shape}, expected ({n}, action_dim): one action vector per step"
            )
        if key in FLOAT_KEYS:
            # training holds float32: a wider float beyond its range would silently become inf there
            wide = value.dtype.kind == "f" and value.dtype.itemsize > 4
            fits = np.abs(value) <= _FLOAT32_MAX if wide else np.isfinite(value)  # False for NaN and inf
            if not fits.all():
                bad = int(np.flatnonzero(~fits.reshape(n, -1).all(axis=1))[0])
                if not np.isfinite(value[bad]).all():
                    raise DatasetError(path, key, f"contains NaN or inf (first at row {bad})")
                raise DatasetError(
                    path,
                    key,
                    f"holds {np.abs(value[bad]).max():g} at row {bad}; expected values within float32's "
                    f"range (|x| <= {_FLOAT32_MAX:.4g}), which training uses",
                )
        if key in ("terminals", "timeouts") and value.dtype != bool and not np.isin(value, (0, 1)).all():
            # a float flag of 0.5 or NaN would silently count as true
            bad = int(np.flatnonzero(~np.isin(value, (0, 1)))[0])
            raise DatasetError(path, key, f"holds {value[bad]} at row {bad}; expected 0/1 flags (booleans)")
    if "next_observations" in arrays and arrays["next_observations"].shape != arrays["observations"].shape:
        raise DatasetError(
            path,
            "next_observations",
            f"has shape {arrays['next_observations'].shape}, expected {arrays['observations'].shape} "
            "(the shape of observations)",
        )
    if not (arrays["terminals"][-1] or arrays["timeouts"][-1]):
        raise DatasetError(
            path,
            "terminals",
            "last transition is neither terminal nor timeout: the final episode is cut "
            "(data.cut_final_episode=truncate treats the cut as a time limit)",
        )


def d4rl_search_dirs() -> list[Path]:
    """Where D4RL keeps downloaded files: $D4RL_DATASET_DIR, else ~/.d4rl/datasets (d4rl's default)."""
    if os.environ.get("D4RL_DATASET_DIR"):
        return [Path(os.environ["D4RL_DATASET_DIR"]).expanduser()]
    return [Path("~/.d4rl/datasets").expanduser()]


def d4rl_file_names(name: str) -> list[str]:
    """D4RL names its files after the dataset with '_' for '-' except before the version:
    hopper-medium-replay-v2 -> hopper_medium_replay-v2.hdf5; its -v0 locomotion files keep the names they
    were published under (hopper-medium-v0 -> hopper_medium.hdf5, hopper-medium-replay-v0 ->
    hopper_mixed.hdf5). The plain name is accepted too."""
    stem, _, version = name.rpartition("-")
    names = [f"{stem.replace('-', '_')}-{version}.hdf5", f"{name}.hdf5"] if stem else [f"{name}.hdf5"]
    if name.lower() in _V0_NAMES:
        names.insert(0, f"{_V0_NAMES[name.lower()]}.hdf5")
    return list(dict.fromkeys(names))


def d4rl_name_from_file(path: str | os.PathLike) -> str:
    """The dataset name of a D4RL file name (the inverse of d4rl_file_names):
    hopper_medium_replay-v2.hdf5 -> hopper-medium-replay-v2, hopper_mixed.hdf5 -> hopper-medium-replay-v0.
    Other files keep their own name (as data=hdf5 names them)."""
    stem = Path(path).stem
    if stem in _V0_FILE_STEMS:
        return _V0_FILE_STEMS[stem]
    return stem.replace("_", "-") if _LOCOMOTION_NAME.fullmatch(stem.replace("_", "-")) else stem


# the gymnasium env a D4RL dataset's name starts with (its reference returns are the env's, conf/env/)
D4RL_ENV_FAMILIES = {"hopper": "Hopper", "halfcheetah": "HalfCheetah", "walker2d": "Walker2d", "ant": "Ant"}


# D4RL's locomotion datasets: <env>-<quality>-v<N> (hopper-medium-replay-v2, walker2d-expert-v0, ...)
_QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")
_LOCOMOTION_NAME = re.compile(rf"(?P<env>{'|'.join(D4RL_ENV_FAMILIES)})-({'|'.join(_QUALITIES)})-v\d+")


def _v0_file_stem(env: str, quality: str) -> str:
    """The name D4RL published a -v0 locomotion file under (d4rl/infos.py's URLs; d4rl downloads it under
    that name): no version, medium-replay as `mixed` (Walker2d's as walker_mixed)."""
    if quality == "medium-replay":
        return f"{'walker' if env == 'walker2d' else env}_mixed"
    return f"{env}_{quality.replace('-', '_')}"


# file stem -> dataset name, for the -v0 locomotion files (there is no full-replay-v0)
_V0_FILE_STEMS = {_v0_file_stem(env, q): f"{env}-{q}-v0" for env in D4RL_ENV_FAMILIES for q in _QUALITIES[:5]}
_V0_NAMES = {name: stem for stem, name in _V0_FILE_STEMS.items()}


def d4rl_env_family(name: str) -> str | None:
    """`HalfCheetah` for halfcheetah-medium-v2 (also spelt as its file, halfcheetah_medium-v2); None for
    other datasets (antmaze, pen, ..., and AntMaze's own file names such as Ant_maze_u-maze_...)."""
    match = _LOCOMOTION_NAME.fullmatch(name.lower().replace("_", "-"))
    return D4RL_ENV_FAMILIES[match["env"]] if match else None


def resolve_d4rl_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """`path` if given, else the first existing D4RL file for `name`; the error lists where it looked."""
    obtain = (
        "download it on a machine with internet (d4rl.qlearning_dataset or the file from D4RL's dataset URLs)"
    )
    if path:
        path = Path(path).expanduser()
        if not path.exists():
            raise DatasetError(path, None, f"file not found (data.path, D4RL dataset '{name}'); {obtain}")
        return path
    obtain += " into $D4RL_DATASET_DIR or ~/.d4rl/datasets, or pass data.path=<file>"
    candidates = [d / f for d in d4rl_search_dirs() for f in d4rl_file_names(name)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        candidates[0],
        None,
        f"D4RL dataset '{name}' not found (looked for {', '.join(str(c) for c in candidates)}); {obtain}",
    )
