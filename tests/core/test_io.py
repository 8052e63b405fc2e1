"""Atomic writes: a failure mid-write leaves the earlier file intact and no temp files behind."""

from __future__ import annotations

import json

import pytest

from vla_hydra.core.io import atomic_path, write_json_atomic


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
