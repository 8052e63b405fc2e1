"""Learning-rate schedules against hand-computed values."""

import pytest

from vla_hydra.algos.schedules import cosine_lr, linear_decay_lr, warmup_lr


def test_cosine_lr_hand_computed():
    assert cosine_lr(3e-4, 0, 1000) == pytest.approx(3e-4)
    # half way: 3e-4 * (1 + cos(pi/2)) / 2 = 1.5e-4; a quarter: 3e-4 * (1 + 0.707107) / 2 = 2.56066e-4
    assert cosine_lr(3e-4, 500, 1000) == pytest.approx(1.5e-4)
    assert cosine_lr(3e-4, 250, 1000) == pytest.approx(2.56066e-4, rel=1e-5)
    assert cosine_lr(3e-4, 1000, 1000) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(3e-4, 5000, 1000) == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the horizon


def test_warmup_lr_is_linear_then_constant():
    # base 1e-4 over 1000 updates: update k uses 1e-4 * (k + 1) / 1000
    assert warmup_lr(1e-4, 0, 1000) == pytest.approx(1e-7)
    assert warmup_lr(1e-4, 499, 1000) == pytest.approx(5e-5)
    assert warmup_lr(1e-4, 999, 1000) == pytest.approx(1e-4)
    assert warmup_lr(1e-4, 50_000, 1000) == pytest.approx(1e-4)


def test_linear_decay_lr_reaches_zero_at_the_budget_and_stays_there():
    # CleanRL PPO: lr = (1 - (iteration - 1) / num_iterations) * base; 3 of 4 iterations done -> a quarter
    assert linear_decay_lr(2.5e-4, 0, 4) == pytest.approx(2.5e-4)
    assert linear_decay_lr(2.5e-4, 3, 4) == pytest.approx(6.25e-5)
    assert linear_decay_lr(2.5e-4, 4, 4) == 0.0
    assert linear_decay_lr(2.5e-4, 5000, 4000) == 0.0  # env steps past the budget: 0, not negative
