"""A command stopped by Ctrl-C or SIGTERM ends with one line saying where the run continues from."""

from __future__ import annotations

import pytest

from vla_hydra.cli.interrupts import _interruption_line

_SAVED = {
    "signal": "SIGTERM",
    "step": 120,
    "checkpoint": "ck/last.ckpt",
    "checkpoint_step": 120,
    "saved": True,
}
_PERIODIC = {
    "signal": "Ctrl-C",
    "step": 130,
    "checkpoint": "ck/last.ckpt",
    "checkpoint_step": 100,
    "saved": False,
}
_NONE_YET = {"signal": "SIGTERM", "step": 7, "checkpoint": None, "checkpoint_step": None, "saved": False}


@pytest.mark.parametrize(
    ("record", "signal_name", "requeued", "line"),
    [
        (None, "Ctrl-C", False, "interrupted (Ctrl-C)"),
        (None, "SIGTERM", False, "terminated (SIGTERM)"),
        (
            None,
            "SIGTERM",
            True,
            "preempted (SIGTERM, requeued by SLURM) outside training: the job starts again",
        ),
        (
            _SAVED,
            "SIGTERM",
            False,
            "terminated (SIGTERM) at update 120; saved ck/last.ckpt: continue with ckpt_path=ck/last.ckpt",
        ),
        (
            _SAVED,
            "SIGTERM",
            True,
            "preempted (SIGTERM, requeued by SLURM) at update 120; saved ck/last.ckpt: the requeued job continues from it",
        ),
        (
            _PERIODIC,
            "Ctrl-C",
            False,
            "interrupted (Ctrl-C) at update 130; continue from its last checkpoint (update 100) with "
            "ckpt_path=ck/last.ckpt",
        ),
        (_NONE_YET, "SIGTERM", False, "terminated (SIGTERM) at update 7; no checkpoint had been saved yet"),
        (
            _NONE_YET,
            "SIGTERM",
            True,
            "preempted (SIGTERM, requeued by SLURM) at update 7; no checkpoint had been saved yet: the requeued job "
            "starts over",
        ),
    ],
)
def test_an_interruption_says_where_the_run_continues_from(record, signal_name, requeued, line):
    assert _interruption_line(record, signal_name, requeued) == line
