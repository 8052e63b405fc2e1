"""core/logging.py: what vla_hydra keeps out of a run's console and train.log."""

from __future__ import annotations

import logging

from vla_hydra.core.logging import silence_known_warnings


def test_lightning_adverts_are_dropped_and_its_other_messages_kept(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    silence_known_warnings()
    silence_known_warnings()  # idempotent: one filter, not one per run of a sweep
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_DropLightningTips" for f in rank_zero.filters) == 1
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["GPU available: False, used: False"]
