"""Atomic writes: a failure mid-write leaves the earlier file intact and no temp files behind."""

from __future__ import annotations

import json

import pytest

from vla_hydra.core.io import atomic_path, remove_empty_dirs, write_json_atomic


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"score": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"score": 2, "trunc')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"score": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_json_atomic(target, {"score": 3})
    assert json.loads(target.read_text()) == {"score": 3}


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "results.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644


def test_exclusive_lock_runs_holders_one_at_a_time_and_leaves_no_lock_file(tmp_path):
    """Three holders, two of them waiting on the first's lock file, which it removes on release: each
    waiter must then lock the file that is there, never two of them at once."""
    import threading
    import time

    from vla_hydra.core.io import exclusive_lock

    lock, events, waits = tmp_path / ".d.hdf5.lock", [], []

    def hold(name: str) -> None:
        with exclusive_lock(lock, on_wait=lambda: waits.append(name)):
            events.append(f"{name} in")
            time.sleep(0.2)
            events.append(f"{name} out")

    with exclusive_lock(lock):
        threads = [threading.Thread(target=hold, args=(name,)) for name in "bc"]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        assert events == [] and sorted(waits) == ["b", "c"]
    for thread in threads:
        thread.join(timeout=10)
    # strictly alternating: nobody entered while another was inside
    assert [e.split()[1] for e in events] == ["in", "out", "in", "out"]
    assert events[0].split()[0] == events[1].split()[0]
    assert list(tmp_path.iterdir()) == []


def test_remove_empty_dirs_keeps_the_root_and_every_folder_holding_a_file(tmp_path):
    (tmp_path / "csv" / "version_0").mkdir(parents=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "logs" / "empty").mkdir(parents=True)
    (tmp_path / "logs" / "train.log").write_text("kept")
    remove_empty_dirs(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["logs", "logs/train.log"]
    remove_empty_dirs(tmp_path / "logs")
    assert (tmp_path / "logs" / "train.log").read_text() == "kept"
