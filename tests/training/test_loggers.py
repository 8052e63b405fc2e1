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


def test_training_losses_and_evaluations_share_the_update_count_axis(tmp_path, data_dir):
    """Loss rows used to be written at Lightning's batch count (steps 9, 19, ... for a block of 50 updates
    per step) while evaluations were at gradient updates (500, 1000, ...)."""
    import csv

    cfg = small_train_config(
        tmp_path,
        data_dir,
        [
            "trainer.max_steps=1000",
            "algo.updates_per_step=50",
            "trainer.log_every_n_steps=5",
            "eval.every_n_updates=500",
        ],
    )
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss_steps = [int(r["step"]) for r in rows if r.get("train/bc_loss")]
    eval_steps = [int(r["step"]) for r in rows if r.get("eval/return_mean")]
    assert loss_steps == [250, 500, 750, 1000]  # every 5 Lightning steps of 50 updates
    assert eval_steps == [0, 500, 1000]


def test_wandb_logger_does_not_pass_the_deprecated_anonymous_setting(tmp_path, monkeypatch):
    """wandb warns on every run that is given `anonymous` (Lightning passes None): noise on stderr."""
    from vla_hydra.training.loggers import wandb_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = wandb_logger(str(tmp_path), mode="offline")
    assert "anonymous" not in logger._wandb_init and logger._offline


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
