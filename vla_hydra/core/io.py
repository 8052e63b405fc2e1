"""Atomic file writes: a crash or a bad run never leaves a half-written result or dataset behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the target's directory; move it onto `path` only on success."""
    from vla_hydra.core.exceptions import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: a directory; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # read-only or virtual file systems (/proc), permissions, a file in the way
        raise OutputError(f"{path}: cannot write there ({_why_not_writable(path, err)})") from err
    os.close(fd)
    # mkstemp creates 0600; give the file the permissions a plain open() would (shared results dirs)
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Before long work whose result goes to `path` (a dataset, a replay buffer): the path can take a file,
    so the work is not lost at its end. `option` names the setting in the error."""
    from vla_hydra.core.exceptions import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option}={path}: a directory; expected a file path, e.g. {path / 'dataset.hdf5'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as err:
        raise OutputError(f"{option}={path}: cannot write there ({_why_not_writable(path, err)})") from err


def check_creatable(path: str | os.PathLike, option: str) -> None:
    """Like check_writable, without creating anything: the file's directory exists and takes files, or
    its nearest existing ancestor is a directory this process may create it in."""
    from vla_hydra.core.exceptions import OutputError

    path = Path(path)
    existing = next(p for p in path.parents if p.exists())
    if existing.is_file():
        problem = f"{existing} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable by this user"
    else:
        return
    raise OutputError(f"{option}={path}: cannot write there ({problem})")


def _why_not_writable(path: Path, err: OSError) -> str:
    blocking = next((p for p in path.parents if p.is_file()), None)  # a file where a directory must be
    return f"{blocking} is a file, not a directory" if blocking else str(err.strerror or err)


def remove_empty_dirs(root: str | os.PathLike) -> None:
    """Remove the empty folders below `root` (deepest first; `root` stays): what a refused run's
    loggers created before the refusal. Folders holding any file are left as they are."""
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(Path(entry[0]).parts)):
        if Path(folder) != Path(root):
            with contextlib.suppress(OSError):  # a folder that is not empty is kept
                os.rmdir(folder)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, on_wait: Any = None):
    """Hold an exclusive flock on `path` (a lock file created for it) while the block runs; a second
    process blocks until the first leaves. The lock file is removed on the way out, so nothing is left
    beside the data. `on_wait()` is called once if the lock is taken, before blocking.

    Removing the file while others wait on it is safe: a waiter that wakes holding the lock of a removed
    file (its inode no longer the one at `path`) drops it and locks the new file instead."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            from vla_hydra.core.exceptions import OutputError

            raise OutputError(
                f"{path}: cannot create this lock file ({_why_not_writable(path, err)})"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed this file on release: lock the one now at `path`
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before releasing: a waiter that then wins sees the file is gone and retries
        os.close(fd)
