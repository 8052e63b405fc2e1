"""Checkpoint directories of sharded strategies on a CPU machine: what is told apart and what is refused
in one line. The GPU side (training with FSDP/DeepSpeed and reading what they write) is in
tests/cluster/test_gpu_strategies.py."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from vla_hydra.cluster.resume import resume_checkpoint
from vla_hydra.core.exceptions import CheckpointError
from vla_hydra.eval import load_policy
from vla_hydra.training.sharding import is_deepspeed_checkpoint


def test_a_plain_directory_is_refused_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"a directory, not a checkpoint file .*'latest' file"):
        load_policy(tmp_path)


def test_a_deepspeed_directory_is_recognised_and_a_broken_one_refused(tmp_path):
    pytest.importorskip("deepspeed")
    ckpt = tmp_path / "last.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    assert not is_deepspeed_checkpoint(ckpt)
    (ckpt / "latest").write_text("checkpoint")
    assert is_deepspeed_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: unreadable DeepSpeed checkpoint"):
        load_policy(ckpt)


def test_resume_accepts_a_deepspeed_directory_but_not_a_plain_one(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.mkdir()
    cfg = compose_config("train", [f"ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match="file not found"):
        resume_checkpoint(cfg, tmp_path / "run")
    (ckpt / "latest").write_text("checkpoint")
    assert resume_checkpoint(cfg, tmp_path / "run") == str(ckpt)
