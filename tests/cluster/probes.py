"""Callbacks the strategy tests add through `+callbacks.<name>._target_=...` (importable by every rank)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class ParameterDigest(L.Callback):
    """At the end of training each rank writes its step, world size, backward path, exact parameters and
    buffers, and (online algorithms) the returns of its training episodes."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        self.path.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "direct_backward": pl_module._direct_backward,
            "strategy": type(trainer.strategy).__name__,
            "backend": trainer.strategy._process_group_backend,
            "find_unused_parameters": getattr(trainer.strategy.model, "find_unused_parameters", None),
            "params": params.tolist(),
            "buffers": {
                name: b.detach().double().flatten().tolist() for name, b in pl_module.named_buffers()
            },
            # online algorithms: what this rank's own envs did
            "train_returns": [e["return"] for e in getattr(pl_module, "episode_log", [])],
        }
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _full_state_dict_without_offload(module, world_size: int, rank0_only: bool = True):
    """Lightning's full-state-dict context without offload_to_cpu: torch's CPU path of that option
    hands back views of storage it then frees (a segfault when Lightning saves); on a CPU there is
    nothing to offload anyway."""
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    return FullyShardedDataParallel.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


class CPUFSDPStrategy(L.pytorch.strategies.FSDPStrategy):
    """Lightning's FSDP strategy with its GPU-only gate lifted, so the suite can run vla_hydra's FSDP
    path (FULL_SHARD over gloo processes) through train.py on a CPU machine. Lightning refuses
    `FSDPStrategy` itself on CPU by an exact type check; torch's FSDP runs on CPU with gloo. Only
    device placement and the state-dict offload differ from the GPU strategy."""

    def _determine_device_ids(self):
        return None  # barrier(device_ids=...) is for NCCL

    def _setup_model(self, model):
        # Lightning passes device_id=root_device.index, None on a CPU, which torch's FSDP refuses
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )

    def lightning_module_state_dict(self):
        with _patched_state_dict_context():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with _patched_state_dict_context():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, *args, **kwargs):
        with _patched_state_dict_context():
            return super().load_checkpoint(*args, **kwargs)


def _patched_state_dict_context():
    from unittest import mock

    return mock.patch(
        "lightning.pytorch.strategies.fsdp._get_full_state_dict_context", _full_state_dict_without_offload
    )


class FailAtStart(L.Callback):
    """Raises a plain exception (a bug, not a user error) when training starts, if `fail`."""

    def __init__(self, fail: bool):
        self.fail = fail

    def on_train_start(self, trainer, pl_module) -> None:
        if self.fail:
            raise RuntimeError("probe failure at train start")
