"""TrajectoryBuffer: returns-to-go, timesteps, right padding and episode boundaries on a hand-made dataset,
and the datamodule serving it as blocks of segments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_hydra.data.d4rl_format import write_d4rl_hdf5
from vla_hydra.data.datamodule import OfflineDataModule
from vla_hydra.data.trajectories import TrajectoryBuffer, episode_bounds

# Three episodes, rows 0-8:  A = rows 0-2 (ends in a timeout), B = rows 3-4 (ends in a terminal),
# C = rows 5-8 (ends in a timeout). Observation of row i is (i, 10 i), action of row i is i / 10.
REWARDS = [1.0, 2.0, 3.0, 10.0, 20.0, -1.0, -2.0, -3.0, -4.0]
TERMINALS = [0, 0, 0, 0, 1, 0, 0, 0, 0]
TIMEOUTS = [0, 0, 1, 0, 0, 0, 0, 0, 1]
PAD = None  # marks a padding position in EXPECTED

# start row -> (rows of the segment of length 3, returns-to-go, timesteps), worked out by hand:
# A: rtg 1+2+3=6, 2+3=5, 3;  B: 10+20=30, 20;  C: -1-2-3-4=-10, -9, -7, -4
EXPECTED = {
    0: ([0, 1, 2], [6.0, 5.0, 3.0], [0, 1, 2]),
    1: ([1, 2, PAD], [5.0, 3.0, 0.0], [1, 2, 0]),
    2: ([2, PAD, PAD], [3.0, 0.0, 0.0], [2, 0, 0]),
    3: ([3, 4, PAD], [30.0, 20.0, 0.0], [0, 1, 0]),
    4: ([4, PAD, PAD], [20.0, 0.0, 0.0], [1, 0, 0]),
    5: ([5, 6, 7], [-10.0, -9.0, -7.0], [0, 1, 2]),
    6: ([6, 7, 8], [-9.0, -7.0, -4.0], [1, 2, 3]),
    7: ([7, 8, PAD], [-7.0, -4.0, 0.0], [2, 3, 0]),
    8: ([8, PAD, PAD], [-4.0, 0.0, 0.0], [3, 0, 0]),
}


def _arrays() -> dict[str, np.ndarray]:
    rows = np.arange(9, dtype=np.float32)
    return {
        "observations": np.stack([rows, 10 * rows], axis=1),
        "actions": (rows / 10).reshape(-1, 1),
        "rewards": np.array(REWARDS, dtype=np.float32),
        "terminals": np.array(TERMINALS, dtype=bool),
        "timeouts": np.array(TIMEOUTS, dtype=bool),
    }


def test_episode_bounds_split_at_terminals_and_timeouts():
    starts, ends = episode_bounds(np.array(TERMINALS), np.array(TIMEOUTS))
    assert starts.tolist() == [0, 3, 5] and ends.tolist() == [3, 5, 9]
    # rows after the last end form their own (cut) episode
    starts, ends = episode_bounds(np.array([0, 1, 0, 0]), np.array([0, 0, 0, 0]))
    assert starts.tolist() == [0, 2] and ends.tolist() == [2, 4]


def test_segments_match_hand_computed_table_and_never_cross_episodes():
    buffer = TrajectoryBuffer(_arrays(), segment_length=3)
    assert len(buffer) == 9 and buffer.num_episodes == 3
    batch = buffer.sample((40, 25), torch.Generator().manual_seed(0))
    assert batch["observations"].shape == (40, 25, 3, 2)
    assert batch["actions"].shape == (40, 25, 3, 1)
    for key in ("returns_to_go", "timesteps", "mask"):
        assert batch[key].shape == (40, 25, 3), key
    assert batch["timesteps"].dtype == torch.int64 and batch["mask"].dtype == torch.float32

    flat = {k: v.reshape(1000, 3, *v.shape[3:]) for k, v in batch.items()}
    seen = set()
    for i in range(1000):
        start = int(flat["observations"][i, 0, 0])  # first step is always real; obs[0] = its row
        seen.add(start)
        rows, rtg, timesteps = EXPECTED[start]
        assert flat["mask"][i].tolist() == [0.0 if r is PAD else 1.0 for r in rows]
        assert flat["returns_to_go"][i].tolist() == rtg
        assert flat["timesteps"][i].tolist() == timesteps
        obs = [[0.0, 0.0] if r is PAD else [float(r), 10.0 * r] for r in rows]
        assert flat["observations"][i].tolist() == obs
        actions = [[0.0] if r is PAD else [np.float32(r / 10).item()] for r in rows]
        assert flat["actions"][i].tolist() == actions
    assert seen == set(range(9))


def test_start_rows_are_uniform_over_episode_steps():
    buffer = TrajectoryBuffer(_arrays(), segment_length=2)
    starts = buffer.sample((18000,), torch.Generator().manual_seed(1))["observations"][:, 0, 0].long()
    counts = torch.bincount(starts, minlength=9)
    # 2000 expected per row (std ~42): an episode is drawn in proportion to its length
    assert counts.min() > 1800 and counts.max() < 2200, counts.tolist()


def test_sampling_is_reproducible_from_the_generator_and_segment_longer_than_episodes_pads():
    buffer = TrajectoryBuffer(_arrays(), segment_length=6)
    a = buffer.sample((4, 5), torch.Generator().manual_seed(3))
    b = buffer.sample((4, 5), torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the longest episode has 4 steps: at least the last 2 of 6 positions are always padding
    assert a["mask"][..., 4:].sum() == 0
    # padding only follows real steps (right padding): the mask never goes 0 -> 1
    assert (a["mask"][..., 1:] <= a["mask"][..., :-1]).all()
    assert buffer.to("cpu") is buffer and buffer.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_buffer_on_gpu_samples_on_gpu():
    buffer = TrajectoryBuffer(_arrays(), segment_length=3).to("cuda")
    batch = buffer.sample((8,), torch.Generator(device="cuda").manual_seed(0))
    assert all(v.device.type == "cuda" for v in batch.values())
    start = batch["observations"][:, 0, 0].long().cpu()
    expected = torch.tensor([EXPECTED[int(s)][1] for s in start])
    assert torch.equal(batch["returns_to_go"].cpu(), expected)


def test_datamodule_serves_blocks_of_segments(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "tiny.hdf5", _arrays(), {})
    datamodule = OfflineDataModule(str(path), batch_size=4, updates_per_step=2, segment_length=3)
    datamodule.setup("fit")
    assert isinstance(datamodule.buffer, TrajectoryBuffer)
    block = next(iter(datamodule.train_dataloader()))
    assert block["observations"].shape == (2, 4, 3, 2) and block["mask"].shape == (2, 4, 3)
    start = block["observations"][..., 0, 0].long()
    expected = torch.tensor([[EXPECTED[int(s)][1] for s in row] for row in start])
    assert torch.equal(block["returns_to_go"], expected)
