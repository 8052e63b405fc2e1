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


def test_lightning_adverts_are_dropped_also_once_the_standalone_lightning_fabric_is_imported(caplog):
    """Lightning logs through the logger of the rank_zero module imported last; once something imported
    `lightning_fabric` (the TensorBoard hparams code did), its "💡 Tip" adverts came through that logger,
    which had no filter, in every later run of a sweep."""
    import lightning_fabric.utilities.rank_zero  # noqa: F401
    import lightning_utilities.core.rank_zero as rank_zero_module
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    before = rank_zero_module.log
    rank_zero_module.log = logging.getLogger("lightning_fabric.utilities.rank_zero")  # what that import does
    try:
        silence_known_warnings()
        with caplog.at_level(logging.INFO, logger="lightning_fabric.utilities.rank_zero"):
            rank_zero_info(
                "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger"
            )
            rank_zero_info("GPU available: False, used: False")
    finally:
        rank_zero_module.log = before
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("lightning_fabric.utilities.rank_zero", "GPU available: False, used: False")
    ]


def test_lightning_imported_before_logging_is_configured_still_logs_to_the_run_log(tmp_path):
    """A continuation into its own run dir imports lightning before Hydra configures logging (the early
    run-dir checks): Lightning then installed console handlers of its own and stopped propagating, so its
    lines went unformatted to stderr and never reached train.log."""
    from tests.conftest import run_python

    log_file = tmp_path / "train.log"
    proc = run_python(
        "import logging\n"
        "import lightning\n"  # first: as vla_hydra.cluster.resume is, before Hydra's logging set-up
        f"logging.basicConfig(filename={str(log_file)!r}, level=logging.INFO)\n"
        "from vla_hydra.core.logging import silence_known_warnings\n"
        "silence_known_warnings()\n"
        "from lightning.pytorch.utilities.rank_zero import rank_zero_info\n"
        "rank_zero_info('GPU available: False, used: False')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "GPU available" not in proc.stderr
    assert "GPU available: False, used: False" in log_file.read_text()


def test_tpu_line_dropped_and_the_gpu_line_kept(caplog):
    """Lightning's "TPU available: False, using: 0 TPU cores" printed on every run and sweep job; vla_hydra
    has no TPU trainer config. Its GPU line says which device the run uses: kept."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    silence_known_warnings()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("TPU available: True, using: 0 TPU cores")
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available: False, used: False",
        "TPU available: True, using: 0 TPU cores",
    ]


def test_an_unused_gpu_is_named_in_the_cli_s_terms_once(tmp_path, monkeypatch, caplog):
    """On a GPU machine the default trainer=cpu got Lightning's "GPU available but not used. You can set it
    by doing `Trainer(accelerator='gpu')`": advice for Python code, not for this CLI."""
    import warnings

    from lightning.pytorch.accelerators import CUDAAccelerator

    import vla_hydra.training.trainer as trainer_module
    from tests.conftest import small_train_config

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(trainer_module, "_unused_gpu_noted", False)
    trainer_cfg = small_train_config(tmp_path, tmp_path).trainer
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")  # Lightning's warning recorded unless silence_known_warnings drops it
        silence_known_warnings()
        for _ in range(2):  # a sweep's jobs in one process: said once
            trainer_module.build_trainer(trainer_cfg, [], [])
    assert not [w for w in caught if "GPU available" in str(w.message)]
    assert [r.getMessage() for r in caplog.records if "GPU" in r.getMessage()] == [
        "a GPU (cuda) is available but this run trains on the CPU (trainer.accelerator=cpu): trainer=gpu trains on it"
    ]
