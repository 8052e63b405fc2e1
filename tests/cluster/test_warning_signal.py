"""The scheduler's time-limit warning during a job's start-up is held, then acted on at a clean point
(no scheduler needed: the signal is sent to this process; a recorder stands in for submitit's handler)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.conftest import small_train_config
from vla_hydra.cluster import warning_signal
from vla_hydra.cluster.warning_signal import hold_warning_signal, release_warning_signal
from vla_hydra.train import train


@pytest.fixture
def submitit_stand_in():
    """Installed as submitit installs its handler; records each signal it is handed."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    release_warning_signal()
    signal.signal(signal.SIGUSR2, previous)


def test_a_held_warning_reaches_submitits_handler_only_when_handed_on(submitit_stand_in):
    stand_in = signal.getsignal(signal.SIGUSR2)
    hold_warning_signal()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert submitit_stand_in == []
    release_warning_signal(hand_on=True)
    assert submitit_stand_in == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) is stand_in

    # a job whose work ended with the warning still held drops it: requeueing would only run it again
    hold_warning_signal()
    os.kill(os.getpid(), signal.SIGUSR2)
    release_warning_signal()
    assert submitit_stand_in == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) is stand_in
    release_warning_signal(hand_on=True)  # nothing held: nothing happens
    assert submitit_stand_in == [signal.SIGUSR2]


def test_a_warning_held_since_start_up_is_saved_at_the_first_step_then_handed_on(tmp_path, data_dir):
    steps_at_hand_on: list[int] = []
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"

    def stand_in(signum, frame):  # what submitit would requeue from: the checkpoint on disk right now
        steps_at_hand_on.append(torch.load(last, weights_only=False)["global_step"])

    previous = signal.signal(signal.SIGUSR2, stand_in)
    try:
        hold_warning_signal()
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives before the fit
        preemption = "+callbacks.preemption._target_=vla_hydra.cluster.preemption.PreemptionCheckpoint"
        cfg = small_train_config(tmp_path, data_dir, ["trainer.max_steps=200", preemption])
        _, results = train(cfg)
    finally:
        release_warning_signal()
        signal.signal(signal.SIGUSR2, previous)
    assert steps_at_hand_on == [cfg.algo.updates_per_step]  # the first Lightning step: one block of updates
    assert results["train_steps"] == 200  # the stand-in does not exit: training went on
    assert warning_signal._hold["signum"] is None  # the fit took the hold over
