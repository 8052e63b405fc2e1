"""Callbacks the strategy tests add through `+callbacks.<name>._target_=...` (importable by every rank)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class ParameterDigest(L.Callback):
    """At the end of training each rank writes its step, world size, backward path and exact parameters."""

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
            "params": params.tolist(),
        }
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
