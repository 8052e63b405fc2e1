"""Learning-rate schedules as pure functions of progress (an algorithm sets the result on its optimizer
each update or iteration: checkpoints carry the progress counters, so a resume continues the schedule)."""

from __future__ import annotations

import math


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """CosineAnnealingLR (eta_min 0) at `step`: base_lr * (1 + cos(pi * step / total)) / 2, 0 after."""
    if total_steps <= 0:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def warmup_lr(base_lr: float, updates_done: int, warmup_updates: int) -> float:
    """Linear warm-up: base_lr * (updates_done + 1) / warmup_updates, then constant (CORL's DT schedule)."""
    return base_lr * min(1.0, (updates_done + 1) / max(warmup_updates, 1))


def linear_decay_lr(base_lr: float, done: float, total: float) -> float:
    """Linear annealing to 0 (CleanRL's PPO anneal_lr): base_lr * (1 - done / total), never below 0."""
    return base_lr * max(0.0, 1.0 - done / total)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
