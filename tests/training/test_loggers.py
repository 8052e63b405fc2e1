"""Loggers write real files: CSV, TensorBoard event files, an offline wandb run that never holds the API key."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import small_train_config
from vla_hydra.train import train
from vla_hydra.training.loggers import wandb_logged_in

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def test_many_loggers_write_their_files_and_no_api_key(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = small_train_config(tmp_path, data_dir, ["logger=many", "logger.wandb.mode=offline"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert "eval/return_mean" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert offline_runs and list(offline_runs[0].glob("*.wandb"))
    for path in run.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), f"API key written to {path}"


def test_wandb_login_detection(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_logged_in()
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    os.chmod(netrc_file, 0o600)
    assert wandb_logged_in()


def test_terminal_run_shows_progress_bar_with_updates_and_eval_return(tmp_path, data_dir):
    """Under a pseudo-terminal (`script`) the rich bar shows updates, updates/s and the eval return."""
    import shutil
    import subprocess
    import sys

    import pytest

    if shutil.which("script") is None:
        pytest.skip("needs util-linux `script` to provide a pseudo-terminal")
    command = (
        f"{sys.executable} -m vla_hydra.train trainer.max_steps=200 eval.every_n_updates=100 "
        f"eval.episodes=2 callbacks.policy_eval.episodes=2 paths.data_dir={data_dir} "
        f"hydra.run.dir={tmp_path}/run"
    )
    proc = subprocess.run(
        ["script", "-q", "-e", "-c", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    for text in ["updates/s", "eval_return", "200/200"]:
        assert text in proc.stdout, text
