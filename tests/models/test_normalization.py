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


def _pooled_stats_rank(rank: int, init_file: str, out_dir: str) -> None:
    """One of 2 gloo processes: merges its own batches (rank 1 sits one batch out), writes its statistics."""
    import json
    from pathlib import Path

    import torch.distributed as dist

    from vla_hydra.core.runtime import decorrelate_rngs, seed_everything

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    norm = RunningObservationNormalizer((2,))
    for rows in _RANK_BATCHES[rank]:
        norm.update(torch.as_tensor(rows, dtype=torch.float32))
    seed_everything(0)
    decorrelate_rngs(rank)
    record = {"mean": norm.mean.tolist(), "var": norm.var.tolist(), "count": float(norm.count)}
    record["draw"] = torch.rand(3).tolist()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


_RNG = np.random.default_rng(1)
# per rank, the batches of three updates: different sizes and distributions; rank 1 has an empty one
_RANK_BATCHES = [
    [_RNG.normal(0.0, 1.0, (5, 2)), _RNG.normal(4.0, 1.0, (3, 2)), _RNG.normal(1.0, 3.0, (7, 2))],
    [_RNG.normal(-2.0, 0.5, (2, 2)), np.zeros((0, 2)), _RNG.normal(9.0, 2.0, (11, 2))],
]


def test_running_stats_are_pooled_over_processes(tmp_path):
    """Under DDP each rank merges what its own envs saw; the statistics become those of every rank's
    rows at each update (equal on both ranks), not of one rank's. decorrelate_rngs gives the two ranks
    different random streams from the same starting state."""
    import json

    torch.multiprocessing.spawn(
        _pooled_stats_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = RunningObservationNormalizer((2,))
    for own, other in zip(*_RANK_BATCHES, strict=True):
        single.update(torch.as_tensor(np.concatenate([own, other]), dtype=torch.float32))
    everything = np.concatenate([b for batches in _RANK_BATCHES for b in batches])
    for rank in ranks:
        assert rank["count"] == pytest.approx(len(everything), abs=1e-3)
        np.testing.assert_allclose(rank["mean"], single.mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(rank["var"], single.var.numpy(), rtol=1e-5)
        np.testing.assert_allclose(rank["mean"], everything.mean(0), rtol=1e-4)
    assert ranks[0]["draw"] != ranks[1]["draw"]


def test_observation_normalizer_without_statistics_is_the_exact_identity():
    """It used to divide by 1 + eps (1.001): online policies trained on raw observations were then
    evaluated on slightly shrunken ones."""
    from vla_hydra.models.normalization import ObservationNormalizer

    obs = torch.tensor([[3.0, -7.5]])
    assert torch.equal(ObservationNormalizer((2,))(obs), obs)
    with_stats = ObservationNormalizer((2,), mean=torch.tensor([1.0, 1.0]), std=torch.tensor([2.0, 0.0]))
    # eps only where statistics exist: it keeps a constant feature (std 0) from dividing by zero
    torch.testing.assert_close(with_stats(obs), torch.tensor([[2.0 / 2.001, -8.5 / 0.001]]))
