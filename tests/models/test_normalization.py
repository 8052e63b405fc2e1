"""Running observation statistics and reward scaling against NumPy on the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_hydra.models.normalization import RewardScaler, RunningObservationNormalizer


def test_running_observation_stats_equal_the_stats_of_all_batches_seen():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 2)).astype(np.float32) for n in (5, 17, 40)]
    norm = RunningObservationNormalizer((2,))
    for batch in batches:
        norm.update(torch.as_tensor(batch))
    everything = np.concatenate(batches)
    # the 1e-4 pseudo-count prior shifts the statistics by ~1e-5 relative
    np.testing.assert_allclose(norm.mean.numpy(), everything.mean(0), rtol=1e-4)
    np.testing.assert_allclose(norm.std.numpy(), everything.std(0), rtol=1e-4)
    out = norm(torch.as_tensor(everything))
    np.testing.assert_allclose(out.mean(0).numpy(), 0.0, atol=1e-4)
    # far outliers are clipped to +-10 (NormalizeObservation's clip)
    assert norm(torch.tensor([[1e6, -1e6]])).tolist() == [[10.0, -10.0]]


def test_reward_scaler_divides_by_the_std_of_discounted_returns():
    scaler = RewardScaler(num_envs=2, gamma=0.5, clip=100.0)
    rewards = [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])]
    done = torch.tensor([False, False])
    returns, scaled = [], None
    running = np.zeros(2)
    for r in rewards:
        running = running * 0.5 + r.numpy()
        returns.append(running.copy())
        scaled = scaler(r, done)
    expected_std = np.concatenate(returns).std()
    assert scaled.tolist() == pytest.approx((np.array([1.0, 2.0]) / expected_std).tolist(), rel=1e-3)
    # an episode end restarts that env's discounted return
    scaler(torch.tensor([1.0, 1.0]), torch.tensor([True, False]))
    assert scaler.discounted_return.tolist() == pytest.approx([0.0, running[1] * 0.5 + 1.0])
