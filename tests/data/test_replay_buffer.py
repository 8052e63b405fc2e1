"""ReplayBuffer: ring semantics (wrap-around, overwrite oldest), sampling only stored entries, and the
state a checkpoint carries."""

from __future__ import annotations

import pytest
import torch

from vla_hydra.data.buffer import ReplayBuffer


def _block(values) -> dict:
    v = torch.as_tensor(values, dtype=torch.float32)
    return {"observations": torch.stack([v, -v], dim=-1), "rewards": v}


def _ring(capacity: int) -> ReplayBuffer:
    return ReplayBuffer(capacity, {"observations": (2,), "rewards": ()})


def test_ring_wraps_around_and_overwrites_the_oldest():
    buffer = _ring(5)
    buffer.add(_block([0, 1, 2]))
    assert (len(buffer), buffer.position) == (3, 3)
    buffer.add(_block([3, 4, 5, 6]))  # 3, 4 fill the end; 5, 6 overwrite 0, 1
    assert (len(buffer), buffer.position) == (5, 2)
    assert buffer.data["rewards"].tolist() == [5, 6, 2, 3, 4]
    assert buffer.data["observations"][:, 1].tolist() == [-5, -6, -2, -3, -4]
    # a block longer than the ring: only its newest `capacity` entries are kept, from the write position
    buffer.add(_block(range(10, 17)))
    assert buffer.data["rewards"].tolist() == [15, 16, 12, 13, 14]
    assert buffer.position == 2


def test_sample_draws_only_stored_transitions_uniformly():
    buffer = _ring(100)
    buffer.add(_block([7, 8, 9]))
    generator = torch.Generator().manual_seed(0)
    batch = buffer.sample((4, 3000), generator)
    assert batch["rewards"].shape == (4, 3000) and batch["observations"].shape == (4, 3000, 2)
    # fields stay paired row by row
    assert torch.equal(batch["observations"][..., 1], -batch["rewards"])
    counts = torch.stack([(batch["rewards"] == v).sum() for v in (7, 8, 9)])
    assert counts.sum() == 12000 and counts.min() > 3700  # ~4000 each; nothing from the unfilled part
    with pytest.raises(ValueError, match="empty"):
        _ring(3).sample((2,))


@pytest.mark.parametrize("stored", [[1, 2], [1, 2, 3, 4, 5, 6, 7]])
def test_state_dict_round_trip_keeps_contents_and_write_position(stored):
    buffer = _ring(4)
    buffer.add(_block(stored))
    state = buffer.state_dict()
    assert len(state["data"]["rewards"]) == len(buffer)  # only the filled part is saved

    restored = _ring(4)
    restored.load_state_dict(state)
    assert (len(restored), restored.position) == (len(buffer), buffer.position)
    assert torch.equal(restored.data["rewards"][: len(buffer)], buffer.data["rewards"][: len(buffer)])
    # both continue identically: the next write overwrites the same slot
    buffer.add(_block([100]))
    restored.add(_block([100]))
    n = len(buffer)
    assert n == len(restored) and torch.equal(restored.data["rewards"][:n], buffer.data["rewards"][:n])


def test_a_full_ring_restored_into_a_larger_one_stays_oldest_first():
    """Resuming with a larger capacity (SAC's is capped at total_timesteps, which a longer run raises): the
    saved ring's oldest row is at its write position, not at 0; restored as it lay, the replay dataset
    written from it (chronological) ran the newest rows before the oldest, splicing episodes together."""
    buffer = _ring(4)
    buffer.add(_block([1, 2, 3]))
    buffer.add(_block([4, 5, 6]))  # stored as [5, 6, 3, 4]
    larger = _ring(8)
    larger.load_state_dict(buffer.state_dict())
    assert larger.chronological()["rewards"].tolist() == [3, 4, 5, 6]
    larger.add(_block([7]))
    assert larger.chronological()["rewards"].tolist() == [3, 4, 5, 6, 7]


def test_a_ring_restored_into_a_smaller_one_keeps_its_newest_entries():
    """Resuming SAC with a lower algo.buffer_size (or a budget already spent) restored a larger ring than
    the new capacity: it ended the run in a ValueError traceback. Now the newest entries are kept, oldest
    first, as `add` keeps them, and the ring goes on overwriting the oldest."""
    full = _ring(4)
    full.add(_block([1, 2, 3]))
    full.add(_block([4, 5, 6]))  # stored as [5, 6, 3, 4]
    partial = _ring(8)
    partial.add(_block([1, 2, 3, 4, 5, 6]))
    for saved in (full, partial):
        smaller = _ring(3)
        smaller.load_state_dict(saved.state_dict())
        assert smaller.chronological()["rewards"].tolist() == [4, 5, 6]
        assert smaller.overwritten and smaller.added == 6
        smaller.add(_block([7]))
        assert smaller.chronological()["rewards"].tolist() == [5, 6, 7]


def test_state_of_another_layout_is_refused():
    state = _ring(4).state_dict()
    with pytest.raises(ValueError, match="fields"):
        ReplayBuffer(4, {"observations": (2,)}).load_state_dict(state)


def test_chronological_puts_each_streams_rows_together_oldest_first():
    buffer = _ring(6)
    for step in range(4):  # two envs: env 0 adds even values, env 1 odd ones; the 4th step wraps
        buffer.add(_block([2 * step, 2 * step + 1]))
    assert buffer.data["rewards"].tolist() == [6, 7, 2, 3, 4, 5]
    rows = buffer.chronological(num_streams=2)
    assert rows["rewards"].tolist() == [2, 4, 6, 3, 5, 7]
    assert rows["observations"][:, 1].tolist() == [-2, -4, -6, -3, -5, -7]
    # a partly filled ring starts at row 0
    partial = _ring(6)
    partial.add(_block([0, 1]))
    assert partial.chronological(2)["rewards"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="multiple of num_streams=4"):
        buffer.chronological(num_streams=4)


def test_whether_the_ring_has_overwritten_entries_survives_a_resume():
    ring = _ring(4)
    ring.add(_block([1, 2, 3, 4]))
    assert not ring.overwritten  # full, nothing lost yet
    ring.add(_block([5]))
    assert ring.overwritten and ring.added == 5
    restored = _ring(8)
    restored.load_state_dict(ring.state_dict())
    assert restored.overwritten and len(restored) == 4
    older = {k: v for k, v in _ring(4).state_dict().items() if k != "added"}  # saved before `added` existed
    fresh = _ring(4)
    fresh.load_state_dict(older)
    assert not fresh.overwritten
