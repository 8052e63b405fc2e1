"""Checkpoint files are written atomically beside their final name; an unwritable place fails at once."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.conftest import run_module
from vla_hydra.core.exceptions import OutputError
from vla_hydra.training.checkpoint_io import AtomicCheckpointIO


class FailsWhilePickled:
    """Raises in the middle of torch.save, as a kill or a full disk would interrupt it."""

    def __reduce__(self):
        raise pickle.PicklingError("interrupted mid-save")


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1000, "weights": torch.arange(4.0)}, path)
    with pytest.raises(pickle.PicklingError):
        io.save_checkpoint(
            {"global_step": 2000, "weights": torch.zeros(10_000), "x": FailsWhilePickled()}, path
        )
    kept = torch.load(path, weights_only=False)
    assert kept["global_step"] == 1000 and torch.equal(kept["weights"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left beside it


def test_a_checkpoint_dir_that_cannot_be_written_fails_in_one_line(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoints folder goes")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "checkpoints" / "last.ckpt")


def test_training_refuses_an_unwritable_checkpoint_dir_before_it_trains(tmp_path, data_dir):
    """Lightning swallowed the save's PermissionError: no checkpoint, exit 0, and results.json naming a
    last.ckpt that did not exist. Now the run stops before training, in one line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    proc = run_module(
        "vla_hydra.train",
        "trainer.max_steps=300",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: callbacks.model_checkpoint.dirpath={run}/checkpoints/last.ckpt: cannot write there "
        f"({run}/checkpoints is a file, not a directory)"
    ]
    assert not (run / "results.json").exists()
