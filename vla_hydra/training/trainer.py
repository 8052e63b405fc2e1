"""The Lightning Trainer from `trainer=` config."""

from __future__ import annotations

from omegaconf import DictConfig

from vla_hydra.core.exceptions import ConfigError


def build_trainer(trainer_cfg: DictConfig, callbacks: list, loggers: list):
    """The Lightning Trainer, saving checkpoints atomically; settings Lightning refuses on this machine (a
    GPU strategy without GPUs, more devices than exist) become a one-line ConfigError naming them."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vla_hydra.training.checkpoint_io import use_atomic_checkpoint_io
    from vla_hydra.training.checks import check_trainer_settings

    check_trainer_settings(trainer_cfg)
    extra = {}
    if "enable_checkpointing" not in trainer_cfg and not any(
        isinstance(cb, ModelCheckpoint) for cb in callbacks
    ):
        # callbacks.model_checkpoint=null: no checkpoints, rather than Lightning's default callback's
        # epoch=E-step=S.ckpt at every epoch end, which nothing (results.json, resume) would name
        extra["enable_checkpointing"] = False
    try:
        trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, **extra)
    except InstantiationException as err:
        # MisconfigurationException: a setting this machine cannot run; ValueError/TypeError: a value
        # Lightning does not accept (trainer.precision=fp8, ...); ImportError: an accelerator whose package
        # is not installed (trainer.accelerator=tpu needs torch_xla)
        if not isinstance(err.__cause__, (MisconfigurationException, ValueError, TypeError, ImportError)):
            raise
        strategy = trainer_cfg.get("strategy")
        if isinstance(strategy, DictConfig):
            strategy = str(strategy.get("_target_", "?")).rsplit(".", 1)[-1]
        raise ConfigError(
            f"trainer (accelerator={trainer_cfg.get('accelerator')}, devices={trainer_cfg.get('devices')}, "
            f"strategy={strategy}): Lightning refuses it here: {err.__cause__}{_no_gpu_hint(trainer_cfg)}"
        ) from err
    use_atomic_checkpoint_io(trainer)
    note_unused_gpu(trainer)
    return trainer


def _no_gpu_hint(trainer_cfg: DictConfig) -> str:
    """What a GPU setting on a machine without CUDA means in the CLI's terms: Lightning's reason ("No
    supported gpu backend found!") said neither that trainer=fsdp / deepspeed / gpu need CUDA GPUs nor what
    runs here instead."""
    import torch

    if str(trainer_cfg.get("accelerator")) not in ("gpu", "cuda") or torch.cuda.is_available():
        return ""
    return (
        " (this trainer needs CUDA GPUs and this machine has none; here: trainer=cpu, or trainer=ddp for "
        "several CPU processes)"
    )


_unused_gpu_noted = False


def note_unused_gpu(trainer) -> None:
    """A GPU this run leaves unused, once a process, in the CLI's terms (trainer=cpu is the default):
    Lightning's own warning (silenced by silence_known_warnings) advised `Trainer(accelerator='gpu')`."""
    global _unused_gpu_noted
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    from vla_hydra.core.logging import get_logger

    unused = [
        kind
        for kind, accelerator in (("cuda", CUDAAccelerator), ("mps", MPSAccelerator))
        if accelerator.is_available() and not isinstance(trainer.accelerator, accelerator)
    ]
    if unused and not _unused_gpu_noted:
        _unused_gpu_noted = True
        get_logger(__name__).warning(
            f"a GPU ({unused[0]}) is available but this run trains on the CPU "
            f"(trainer.accelerator={type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()}): "
            "trainer=gpu trains on it"
        )


def last_checkpoint(trainer, callbacks: list) -> str:
    """The checkpoint the fit left (results.json names it), "" without checkpointing."""
    from pathlib import Path

    from lightning.pytorch.callbacks import ModelCheckpoint

    # Lightning versions the name (last-v1.ckpt) rather than overwrite a last.ckpt already in the dir
    checkpointing = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    last_ckpt = checkpointing[0].last_model_path if checkpointing else ""
    if (
        checkpointing
        and not last_ckpt
        and checkpointing[0].dirpath
        and not trainer.fast_dev_run  # debug=fdr: a smoke test leaves no checkpoint
    ):
        # no optimizer step happened (e.g. an online budget inside the random warm-up), so Lightning
        # saved nothing: still leave the policy as it is, without replacing an existing file. Every
        # rank takes part (sharded weights are gathered collectively); rank 0's view of the file decides.
        fallback = Path(checkpointing[0].dirpath) / "last.ckpt"
        if not trainer.strategy.broadcast(fallback.exists()):
            trainer.save_checkpoint(fallback, weights_only=False)
        # an existing one is the checkpoint this run continued with nothing left to train (a run dir
        # holding another's is refused before training); Lightning names it only in the dir it was saved in
        last_ckpt = str(fallback)
    return last_ckpt
