"""A run stopped by Ctrl-C or SIGTERM ends in one line naming the checkpoint to continue from, with the
conventional exit code (130 / 143), and continues from it to the same step count."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_module


def start_long_run(run_dir, data_dir) -> subprocess.Popen:
    args = [
        "algo=td3bc",  # not the default: continuing it takes the run's own overrides
        "trainer.max_steps=200000",
        "callbacks.model_checkpoint.every_n_updates=500",
        "eval.episodes=2",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "vla_hydra.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path, proc, timeout=180) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.is_file(), proc.communicate(timeout=30)[1]


@pytest.mark.parametrize(
    "signum,code,start",
    [(signal.SIGTERM, 143, "terminated (SIGTERM) at update"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_stopped_run_names_its_checkpoint_and_continues_from_it(tmp_path, data_dir, signum, code, start):
    """SIGTERM used to end the run with exit 0 and nothing on stderr; Ctrl-C with exit 1 and only
    Lightning's "attempting graceful shutdown" on stdout."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = start_long_run(run, data_dir)
    wait_for(ckpt, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(start) and last.endswith(f"ckpt_path={ckpt} hydra.run.dir={run}"), last
    stopped_at = int(last.split(" at update ")[1].split(";")[0])
    saved_step = torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"]
    if signum == signal.SIGTERM:  # at a step boundary: saved where it stopped
        assert saved_step == stopped_at
    else:  # a Ctrl-C may land inside an update block: the last periodic checkpoint, and which update it holds
        assert saved_step <= stopped_at and saved_step % 500 == 0
        assert f"continue from its last checkpoint (update {saved_step}) with python -m" in last, last
    assert not (run / "results.json").exists()
    # a full checkpoint on purpose (RNG and loop state): Lightning's "weights_only was not set" note is noise,
    # and so is its Ctrl-C notice beside the run's own last line
    assert "weights_only" not in (run / "train.log").read_text()
    assert "attempting graceful shutdown" not in (run / "train.log").read_text()
    # the line's command, as a user copies it, with a smaller budget added
    command = shlex.split(last.split("python -m vla_hydra.train ", 1)[1])
    assert command[0] == "algo=td3bc"
    resumed = run_module("vla_hydra.train", *command, f"trainer.max_steps={saved_step + 100}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "results.json").read_text())["train_steps"] == saved_step + 100
    # Hydra replaced .hydra/ with the resume's config; the first leg's is kept beside it
    assert f"trainer.max_steps={saved_step + 100}" in (run / ".hydra" / "overrides.yaml").read_text()
    first_leg = run / ".hydra" / "earlier" / "1"
    assert "trainer.max_steps=200000" in (first_leg / "overrides.yaml").read_text()
    assert "max_steps: 200000" in (first_leg / "config.yaml").read_text()


def test_ctrl_c_with_async_envs_ends_in_the_one_line_only(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the AsyncVectorEnv workers used to print a
    KeyboardInterrupt traceback each, and, at exit, one more each for the SIGTERM that ends them."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "vla_hydra.train", "algo=ppo", "env=cartpole", "env.vectorization=async",
            "algo.total_timesteps=10000000", "eval.episodes=2", f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to signal as a terminal does
    )  # fmt: skip
    log = run / "train.log"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file() and "env step 0/" in log.read_text():  # training, with its workers running
            break
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C) at update "), stderr
