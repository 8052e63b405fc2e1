"""D4RL-format files: round trip, next_observations derivation, and one-line errors naming the field."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vla_hydra.core.exceptions import DatasetError
from vla_hydra.data.buffer import TensorBuffer, transitions_from_d4rl
from vla_hydra.data.d4rl_format import read_d4rl_hdf5, write_d4rl_hdf5


def make_arrays(n_episodes=3, length=5, obs_dim=3, act_dim=1, with_next=True, terminal_last=False):
    obs, nxt, acts, rews, terms, touts = [], [], [], [], [], []
    for ep in range(n_episodes):
        o = np.arange(length + 1, dtype=np.float32)[:, None] * np.ones(obs_dim, np.float32) + 100 * ep
        obs.append(o[:-1])
        nxt.append(o[1:])
        acts.append(np.full((length, act_dim), ep, np.float32))
        rews.append(np.ones(length, np.float32))
        end = np.zeros(length, bool)
        end[-1] = True
        is_terminal = terminal_last and ep == n_episodes - 1
        terms.append(end & is_terminal)
        touts.append(end & ~is_terminal)
    arrays = {
        "observations": np.concatenate(obs),
        "actions": np.concatenate(acts),
        "rewards": np.concatenate(rews),
        "terminals": np.concatenate(terms),
        "timeouts": np.concatenate(touts),
    }
    if with_next:
        arrays["next_observations"] = np.concatenate(nxt)
    return arrays


def test_round_trip_keeps_arrays_and_metadata(tmp_path):
    arrays = make_arrays()
    path = write_d4rl_hdf5(
        tmp_path / "d.hdf5", arrays, {"env_id": "Pendulum-v1", "ref_random_return": -1200.5}
    )
    loaded, meta = read_d4rl_hdf5(path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert meta == {"env_id": "Pendulum-v1", "ref_random_return": -1200.5}
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp file"


def test_a_metadata_dataset_instead_of_a_group_is_not_read_as_metadata(tmp_path):
    """A converter's own `metadata` array (a JSON string, a table) is no D4RL metadata group: it used to
    stop the read with AttributeError ('Dataset' object has no attribute 'items')."""
    arrays = make_arrays()
    path = tmp_path / "own.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.create_dataset("metadata", data='{"source": "my robot"}')
    loaded, meta = read_d4rl_hdf5(path)
    np.testing.assert_array_equal(loaded["observations"], arrays["observations"])
    assert meta == {}


def test_next_observations_derived_within_episodes_and_timeout_steps_dropped():
    with_next = transitions_from_d4rl(make_arrays(with_next=True, terminal_last=True))
    without = transitions_from_d4rl(make_arrays(with_next=False, terminal_last=True))
    # episodes 0 and 1 end in timeouts: their last step has no successor row -> dropped (2 rows); the
    # terminal last step of episode 2 is kept (it never bootstraps).
    assert len(with_next["observations"]) == 15 and len(without["observations"]) == 13
    # row 0 -> row 1 within episode 0
    np.testing.assert_array_equal(without["next_observations"][0], [1, 1, 1])
    # first row of episode 1 is at index 4 after dropping one row; its successor is obs 101
    np.testing.assert_array_equal(without["observations"][4], [100, 100, 100])
    np.testing.assert_array_equal(without["next_observations"][4], [101, 101, 101])
    assert without["terminals"].sum() == 1 and without["terminals"][-1] == 1


def test_a_step_both_terminal_and_timed_out_is_kept_as_terminal():
    """A terminal never bootstraps, so it needs no successor row even when the time limit fell on the same
    step: only timed-out steps that did not terminate are dropped."""
    arrays = make_arrays(n_episodes=2, length=3, with_next=False)
    arrays["terminals"][2] = True  # episode 0 ends terminal and timed out at once; episode 1 times out
    data = transitions_from_d4rl(arrays)
    # rows 0, 1, 2 (terminal) kept; rows 3, 4 kept, row 5 (timeout only, no successor) dropped
    np.testing.assert_array_equal(data["observations"][:, 0], [0, 1, 2, 100, 101])
    np.testing.assert_array_equal(data["terminals"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data["next_observations"][:, 0], [1, 2, 2, 101, 102])


def test_a_file_of_only_timed_out_single_steps_without_successors_fails_in_one_line(tmp_path):
    """Every row ends a timed-out episode and no next_observations: no transition is left. It used to
    surface as torch's 'random_ expects from < to' at the first sampled batch."""
    from vla_hydra.data.datamodule import OfflineDataModule

    arrays = make_arrays(length=1, with_next=False)
    path = write_d4rl_hdf5(tmp_path / "steps.hdf5", arrays, {})
    datamodule = OfflineDataModule(str(path), batch_size=2)
    with pytest.raises(DatasetError) as err:
        datamodule.setup()
    text = str(err.value)
    assert "\n" not in text and f"{path} [next_observations]" in text and "no transition" in text


def test_buffer_samples_blocks_of_minibatches_from_the_data():
    data = transitions_from_d4rl(make_arrays())
    buffer = TensorBuffer(data)
    import torch

    gen = torch.Generator().manual_seed(0)
    block = buffer.sample((4, 8), gen)
    assert block["observations"].shape == (4, 8, 3) and block["rewards"].shape == (4, 8)
    # every sampled row is a real row: obs - next_obs differ by exactly -1 in every dim
    diff = block["next_observations"] - block["observations"]
    assert torch.all(diff == 1)
    # uniform over all 15 transitions: a block of 4096 draws every one of them (~273 times each)
    rows = buffer.sample((64, 64), gen)["observations"][..., 0]
    counts = torch.stack([(rows == v).sum() for v in data["observations"][:, 0].tolist()])
    assert len(data["observations"]) == 15 and counts.min() > 200


@pytest.mark.parametrize(
    "case,field,message",
    [
        ("missing", None, "file not found"),
        ("not_hdf5", None, "not an HDF5 file"),
        ("missing_key", "rewards", "missing required key"),
        ("nan", "observations", "NaN or inf (first at row 7)"),
        ("inf_reward", "rewards", "NaN or inf (first at row 2)"),
        ("length", "actions", "has 14 rows, expected 15"),
        ("empty", "observations", "empty"),
        ("cut_episode", "terminals", "neither terminal nor timeout"),
        ("truncated_file", None, "unreadable HDF5 file"),
        ("directory", None, "a directory; expected a D4RL-format HDF5 file"),
        ("reward_pairs", "rewards", "has shape (15, 2), expected (15,): one value per step"),
        ("next_obs_width", "next_observations", "has shape (15, 4), expected (15, 3)"),
        ("text_obs", "observations", "expected numbers"),
        ("group_obs", "observations", "is a group; expected an array with one row per step"),
        ("scalar_timeouts", "timeouts", "is a scalar; expected an array with one row per step"),
        ("half_terminal", "terminals", "holds 0.5 at row 4; expected 0/1 flags"),
        ("nan_timeout", "timeouts", "holds nan at row 2; expected 0/1 flags"),
        ("float64_overflow", "rewards", "holds 1e+300 at row 2; expected values within float32's range"),
        ("action_matrix", "actions", "has shape (15, 1, 1), expected (15, action_dim)"),
        ("dangling_link", "rewards", 'is a link (<SoftLink to "/nowhere">) whose target cannot be opened'),
        # a writer killed while filling its datasets: the unwritten rows read as 0s, silently
        (
            "unfinished",
            "observations",
            "only 1 of its 3 chunks written (the rest reads as 0s): the file was not finished",
        ),
        ("never_written", "actions", "never written (it reads as 0s): the file was not finished"),
        # not 'data damaged ... delete it': the file is fine, the plugin is missing
        ("missing_filter", "observations", "compressed with HDF5 filter 32001, which is not available here"),
    ],
)
def test_bad_files_raise_one_line_error_naming_file_and_field(tmp_path, case, field, message):
    path = tmp_path / f"{case}.hdf5"
    arrays = make_arrays()
    if case == "not_hdf5":
        path.write_text("observations,actions\n1,2\n")
    elif case == "directory":
        path.mkdir()
    elif case == "truncated_file":  # a copy cut short: HDF5's signature is there, the data are not
        full = write_d4rl_hdf5(tmp_path / "full.hdf5", make_arrays(n_episodes=200), {"env_id": "Pendulum-v1"})
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    elif case != "missing":
        if case == "missing_key":
            del arrays["rewards"]
        elif case == "nan":
            arrays["observations"][7, 1] = np.nan
        elif case == "inf_reward":
            arrays["rewards"][2] = np.inf
        elif case == "length":
            arrays["actions"] = arrays["actions"][:-1]
        elif case == "empty":
            arrays = {k: v[:0] for k, v in arrays.items()}
        elif case == "cut_episode":
            arrays["timeouts"][-1] = False
        elif case == "reward_pairs":  # read with reshape(-1) this would shift every reward by rows
            arrays["rewards"] = np.stack([arrays["rewards"], arrays["rewards"]], axis=1)
        elif case == "next_obs_width":
            arrays["next_observations"] = np.concatenate([arrays["next_observations"]] * 2, axis=1)[:, :4]
        elif case == "text_obs":
            arrays["observations"] = arrays["observations"].astype("S8")
        elif case == "half_terminal":  # float flags: 0.5 would silently count as a termination
            arrays["terminals"] = arrays["terminals"].astype(np.float32)
            arrays["terminals"][4] = 0.5
        elif case == "nan_timeout":
            arrays["timeouts"] = arrays["timeouts"].astype(np.float32)
            arrays["timeouts"][2] = np.nan
        elif case == "float64_overflow":  # finite in the file, inf once training casts it to float32
            arrays["rewards"] = arrays["rewards"].astype(np.float64)
            arrays["rewards"][2] = 1e300
        elif case == "action_matrix":  # (B, 1, 1) actions broadcast against (B, 1) predictions
            arrays["actions"] = arrays["actions"][:, :, None]
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                if case == "group_obs" and k == "observations":
                    f.create_dataset("observations/state", data=v)
                elif case == "scalar_timeouts" and k == "timeouts":
                    f.create_dataset(k, data=np.bool_(True))
                elif case == "dangling_link" and k == "rewards":
                    f[k] = h5py.SoftLink("/nowhere")
                elif case == "unfinished" and k == "observations":
                    f.create_dataset(k, shape=v.shape, dtype=v.dtype, chunks=(5, 3))[:5] = v[:5]
                elif case == "never_written" and k == "actions":
                    f.create_dataset(k, shape=v.shape, dtype=v.dtype)
                elif case == "missing_filter" and k == "observations":  # blosc's id, without its plugin
                    kw = dict(chunks=v.shape, compression=32001, allow_unknown_filter=True)
                    f.create_dataset(k, shape=v.shape, dtype=v.dtype, **kw).id.write_direct_chunk((0, 0), v)
                else:
                    f.create_dataset(k, data=v)
    with pytest.raises(DatasetError) as err:
        read_d4rl_hdf5(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and message in text
    if field:
        assert f"[{field}]" in text


def test_cut_final_episode_is_refused_or_truncated_on_request(tmp_path):
    arrays = make_arrays(with_next=False)
    arrays["timeouts"][-1] = False  # collection stopped mid-episode, as in some D4RL files
    path = write_d4rl_hdf5(tmp_path / "cut.hdf5", arrays, {})
    with pytest.raises(DatasetError, match="cut_final_episode=truncate"):
        read_d4rl_hdf5(path)
    loaded, _ = read_d4rl_hdf5(path, cut_final_episode="truncate")
    assert loaded["timeouts"][-1] and not loaded["terminals"][-1]
    # the cut step has no successor in the file, so it is dropped like any timeout-final step
    assert len(transitions_from_d4rl(loaded)["observations"]) == len(arrays["observations"]) - 3


def test_a_cut_last_episode_is_left_out_of_the_episode_return_range(tmp_path):
    """IQL/CQL scale rewards by 1000 / (max - min episode return): the 2-step remainder of a cut episode
    is no episode and used to set the minimum (2 instead of 5 here)."""
    from vla_hydra.data.datamodule import OfflineDataModule

    arrays = {k: v[:-3] for k, v in make_arrays(n_episodes=3, length=5).items()}  # episodes of 5, 5, 2 (cut)
    path = write_d4rl_hdf5(tmp_path / "cut.hdf5", arrays, {})
    data = OfflineDataModule(str(path), batch_size=4, updates_per_step=1, cut_final_episode="truncate")
    data.setup("fit")
    stats = data.stats()
    assert (stats.episode_return_min, stats.episode_return_max) == (5.0, 5.0)
    # a file whose last episode ends properly keeps all of its episodes
    whole = OfflineDataModule(
        str(write_d4rl_hdf5(tmp_path / "whole.hdf5", make_arrays(n_episodes=2, length=4), {})),
        batch_size=4,
        updates_per_step=1,
        cut_final_episode="truncate",
    )
    whole.setup("fit")
    assert list(whole.episode_returns) == [4.0, 4.0]


@pytest.mark.parametrize(
    "actions,env_id,message",
    [
        (
            np.arange(15) % 2,
            "Pendulum-v1",
            "[actions]: holds integer class indices, but env Pendulum-v1 has Box(1,) actions",
        ),
        (
            np.zeros((15, 2), np.float32),
            "CartPole-v1",
            "[actions]: holds 2-dim vectors, but env CartPole-v1 has Discrete(2) actions",
        ),
        (  # booleans are class indices too, not (N,) Box actions served as (B,) against (B, 1)
            np.arange(15) % 2 == 1,
            "Pendulum-v1",
            "[actions]: holds integer class indices, but env Pendulum-v1 has Box(1,) actions",
        ),
        (
            np.arange(15) % 3,
            "CartPole-v1",
            "[actions]: class indices range over [0, 2], outside env CartPole-v1's Discrete(2) range [0, 1]",
        ),
        (  # a column of integers is class indices too; it used to train as Pendulum torques 0 and 1
            (np.arange(15) % 2)[:, None],
            "Pendulum-v1",
            "[actions]: holds integer class indices, but env Pendulum-v1 has Box(1,) actions",
        ),
        (  # integer vectors (MultiDiscrete data, one-hot classes) used to be cast to floats and trained on
            np.ones((15, 3), np.int64),
            "Hopper-v5",
            "[actions]: has dtype int64 (3-dim integer vectors), but env Hopper-v5 has Box(3,) actions: "
            "expected floating-point action vectors",
        ),
    ],
)
def test_action_kind_must_match_the_env(tmp_path, actions, env_id, message):
    from vla_hydra.data.datamodule import OfflineDataModule
    from vla_hydra.envs.factory import EnvFactory

    obs_dim = {"CartPole-v1": 4, "Hopper-v5": 11}.get(env_id, 3)
    arrays = {**make_arrays(obs_dim=obs_dim), "actions": actions}
    path = write_d4rl_hdf5(tmp_path / "d.hdf5", arrays, {})
    datamodule = OfflineDataModule(str(path))
    datamodule.setup()
    with pytest.raises(DatasetError) as err:
        datamodule.check_compatible(EnvFactory(id=env_id).spec())
    assert str(err.value) == f"dataset {path} {message}"


@pytest.mark.parametrize(
    "actions",
    # (N, 1) columns of class indices, as per-step scalars may be stored, used to be refused as 1-dim vectors
    [
        np.arange(15) % 2,
        np.arange(15) % 2 == 1,
        (np.arange(15) % 2)[:, None],
        (np.arange(15) % 2 == 1)[:, None],
    ],
)
def test_discrete_class_indices_matching_the_env_are_accepted(tmp_path, actions):
    from vla_hydra.data.datamodule import OfflineDataModule
    from vla_hydra.envs.factory import EnvFactory

    arrays = {**make_arrays(obs_dim=4), "actions": actions}
    datamodule = OfflineDataModule(str(write_d4rl_hdf5(tmp_path / "d.hdf5", arrays, {})))
    datamodule.setup()
    datamodule.check_compatible(EnvFactory(id="CartPole-v1").spec())
    assert datamodule.discrete_actions and datamodule.action_range == (0, 1)


def test_per_step_scalars_stored_as_columns_are_accepted(tmp_path):
    """(N, 1) rewards/terminals/timeouts, as some converters write them, read as (N,)."""
    arrays = make_arrays()
    for key in ("rewards", "terminals", "timeouts"):
        arrays[key] = arrays[key][:, None]
    loaded, _ = read_d4rl_hdf5(write_d4rl_hdf5(tmp_path / "cols.hdf5", arrays, {}))
    assert all(loaded[key].shape == (15,) for key in ("rewards", "terminals", "timeouts"))
    assert loaded["timeouts"].sum() == 3


def test_one_dimensional_float_actions_read_as_one_column(tmp_path):
    """Box(1,) actions stored as (N,) floats (as some converters write them) are one column per step:
    served as (N,) they reached the losses as (B,) against (B, 1) predictions, which broadcast to (B, B)
    (behaviour cloning trained on every pair of rows) or failed in the critics' concatenation."""
    import torch

    from vla_hydra.data.datamodule import OfflineDataModule
    from vla_hydra.envs.factory import EnvFactory

    arrays = make_arrays()
    arrays["actions"] = arrays["actions"][:, 0].astype(np.float64)
    path = write_d4rl_hdf5(tmp_path / "flat.hdf5", arrays, {})
    loaded, _ = read_d4rl_hdf5(path)
    assert loaded["actions"].shape == (15, 1)
    datamodule = OfflineDataModule(str(path), batch_size=8)
    datamodule.setup()
    datamodule.check_compatible(EnvFactory(id="Pendulum-v1").spec())
    assert datamodule.buffer.sample((2, 8), torch.Generator().manual_seed(0))["actions"].shape == (2, 8, 1)
    segments = OfflineDataModule(str(path), batch_size=8, segment_length=4)
    segments.setup()
    assert segments.buffer.sample((8,), torch.Generator().manual_seed(0))["actions"].shape == (8, 4, 1)


def test_a_file_from_another_env_with_the_same_shapes_is_refused(tmp_path):
    """HalfCheetah and Walker2d share their shapes (17 obs, 6 actions): the recorded env id decides."""
    from vla_hydra.data.datamodule import OfflineDataModule
    from vla_hydra.envs.factory import EnvFactory

    arrays = make_arrays(obs_dim=17, act_dim=6)
    path = write_d4rl_hdf5(tmp_path / "cheetah.hdf5", arrays, {"env_id": "HalfCheetah-v5"})
    datamodule = OfflineDataModule(str(path))
    datamodule.setup()
    with pytest.raises(DatasetError) as err:
        datamodule.check_compatible(EnvFactory(id="Walker2d-v5").spec())
    assert str(err.value) == (
        f"dataset {path} [metadata/env_id]: collected in HalfCheetah-v5, but the policy would be "
        "evaluated in env Walker2d-v5; use env=halfcheetah, or keep this env with data=walker2d_random or "
        "data=walker2d_sac_expert or data=walker2d_sac_medium or data=walker2d_sac_medium_expert or "
        "data=walker2d_sac_medium_replay"
    )
    datamodule.check_compatible(EnvFactory(id="HalfCheetah-v5").spec())  # its own env is fine


def test_actions_outside_the_env_bounds_are_warned_about_and_far_outside_refused(tmp_path, caplog):
    """Slightly out-of-bounds actions are clipped with a warning; actions beyond the bounds by more than
    their width (another env's, or unscaled) used to be clipped too, training on bang-bang data."""
    from vla_hydra.data.datamodule import OfflineDataModule
    from vla_hydra.envs.factory import EnvFactory

    arrays = make_arrays()
    arrays["actions"] = arrays["actions"] * 1.5  # 0, 1.5, 3 against Pendulum's [-2, 2]
    datamodule = OfflineDataModule(str(write_d4rl_hdf5(tmp_path / "d.hdf5", arrays, {})))
    datamodule.setup()
    with caplog.at_level("WARNING"):
        datamodule.check_compatible(EnvFactory(id="Pendulum-v1").spec())
    assert (
        "33% of the steps have actions outside env Pendulum-v1's bounds [-2, 2] (largest |a| 3)"
        in caplog.text
    )
    arrays["actions"] = arrays["actions"] / 1.5 * 10.0  # 0, 10, 20: beyond the bounds by more than 4
    path = write_d4rl_hdf5(tmp_path / "far.hdf5", arrays, {})
    datamodule = OfflineDataModule(str(path))
    datamodule.setup()
    with pytest.raises(DatasetError) as err:
        datamodule.check_compatible(EnvFactory(id="Pendulum-v1").spec())
    assert str(err.value) == (
        f"dataset {path} [actions]: 67% of the steps have actions beyond env Pendulum-v1's bounds [-2, 2] "
        "(largest |a| 20) by more than the bounds' width; expected actions in the env's units: rescale them "
        "in the file (clip them there if they are this env's)"
    )


def test_generated_files_are_scored_with_the_envs_published_references(tmp_path):
    """A file made by vla_hydra.collect stores its own random/behaviour-policy returns; where the env has
    published references (D4RL's for MuJoCo) those score it, whichever data= reads the file; otherwise
    (or for files from elsewhere, e.g. Minari's own) the stored ones do."""
    from vla_hydra.data.datamodule import OfflineDataModule

    d4rl_hopper = {"random": -20.272305, "expert": 3234.3}
    stored = {"ref_random_return": 19.9, "ref_expert_return": 64.2}
    for created_by, env_refs, expected in [
        ("vla_hydra.collect", d4rl_hopper, d4rl_hopper),
        ("vla_hydra.collect", None, {"random": 19.9, "expert": 64.2}),
        ("minari", d4rl_hopper, {"random": 19.9, "expert": 64.2}),
    ]:
        path = write_d4rl_hdf5(
            tmp_path / f"{created_by}{bool(env_refs)}.hdf5",
            make_arrays(),
            {**stored, "created_by": created_by},
        )
        datamodule = OfflineDataModule(str(path))
        datamodule.setup()
        assert datamodule.reference_returns(env_refs) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name,family",
    [
        ("hopper-medium-replay-v2", "Hopper"),
        ("halfcheetah_medium-v2", "HalfCheetah"),  # the file-name spelling
        ("walker2d-full-replay-v2", "Walker2d"),
        ("antmaze-umaze-v2", None),
        ("Ant-maze-u-maze-noisy-multistart-False-multigoal-False-sparse", None),  # AntMaze's file name
        ("pen-human-v1", None),
    ],
)
def test_the_env_a_d4rl_dataset_name_belongs_to(name, family):
    from vla_hydra.data.d4rl_format import d4rl_env_family

    assert d4rl_env_family(name) == family


def test_a_flipped_bit_in_a_written_file_is_named_with_its_field(tmp_path):
    """Without a checksum a damaged copy read back as slightly different numbers, and trained."""
    path = write_d4rl_hdf5(tmp_path / "d.hdf5", make_arrays(n_episodes=200), {"env_id": "Pendulum-v1"})
    with h5py.File(path, "r") as f:
        assert all(f[key].fletcher32 for key in ("observations", "actions", "rewards", "terminals"))
        offset = f["observations"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0x04  # one bit of one observation
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        read_d4rl_hdf5(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "[observations]" in text and "data damaged" in text


def test_a_file_another_process_is_writing_is_not_called_damaged(tmp_path):
    """HDF5 locks a file open for writing; the reader's error said 'a partial copy or an interrupted
    write? delete it', which would throw away a file still being written."""
    import fcntl

    path = write_d4rl_hdf5(tmp_path / "d.hdf5", make_arrays(), {})
    with open(path, "rb") as writer:  # the exclusive lock a writing h5py process holds
        fcntl.flock(writer, fcntl.LOCK_EX)
        with pytest.raises(DatasetError) as err:
            read_d4rl_hdf5(path)
    assert str(err.value) == (
        f"dataset {path}: locked by another process that has it open for writing (HDF5 file lock); "
        "wait until it has finished writing the file, then run again"
    )
    assert read_d4rl_hdf5(path)[0]["observations"].shape == (15, 3)  # once the writer is done


# ---------------------------------------------------------------------------------------------------
# files without timeouts (D4RL's -v0 files): episode ends inferred from the env's time limit


def _without_timeouts(tmp_path, lengths, terminal_episodes, name="old.hdf5", metadata=None):
    """A file with no `timeouts` key (and no next_observations, as D4RL's -v0 files): episodes of
    `lengths` rows back to back, those indexed in `terminal_episodes` ending in a terminal; row i's
    reward is i, its observation (i, -i, 2i)."""
    n = sum(lengths)
    terminals = np.zeros(n, bool)
    terminals[[sum(lengths[: k + 1]) - 1 for k in terminal_episodes]] = True
    rows = np.arange(n, dtype=np.float32)
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        f["observations"] = np.stack([rows, -rows, 2 * rows], axis=1)
        f["actions"] = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
        f["rewards"] = rows
        f["terminals"] = terminals
        for key, value in (metadata or {}).items():
            f[f"metadata/{key}"] = value
    return path


def test_missing_timeouts_are_inferred_from_the_time_limit_for_transitions_and_segments(tmp_path, caplog):
    """Time limit 5; episodes of 5 and 5 rows (time limit), 3 (terminal), 5 (time limit: the counter
    restarts after the terminal, else it would end at row 14). D4RL's rule: episode_step == limit - 1."""
    from vla_hydra.data.datamodule import OfflineDataModule

    path = _without_timeouts(tmp_path, [5, 5, 3, 5], terminal_episodes=[2])
    with caplog.at_level("INFO"):
        loaded, _ = read_d4rl_hdf5(path, time_limit=5)
    assert np.flatnonzero(loaded["timeouts"]).tolist() == [4, 9, 17]
    assert np.flatnonzero(loaded["terminals"]).tolist() == [12]
    assert f"dataset {path} has no timeouts: inferred 3 timeouts from a 5-step time limit" in caplog.text

    # the transition datasets (TD3+BC, IQL, CQL, BC): episode returns, and timeout rows without a successor
    data = OfflineDataModule(str(path), batch_size=4, max_episode_steps=5)
    data.setup()
    assert data.episode_returns.tolist() == [10, 35, 33, 75]  # 0+..+4, 5+..+9, 10+11+12, 13+..+17
    transitions = {k: v.numpy() for k, v in data.buffer.data.items()}
    kept = [r for r in range(18) if r not in (4, 9, 17)]
    assert transitions["rewards"].tolist() == kept
    assert transitions["terminals"].tolist() == [float(r == 12) for r in kept]
    # the next state of row 3 is row 4, of row 5 (an episode's first) row 6: never across a boundary
    assert transitions["next_observations"][:, 0].tolist() == [r if r == 12 else r + 1 for r in kept]

    # the Decision Transformer's segments see the same four episodes
    segments = OfflineDataModule(str(path), batch_size=4, max_episode_steps=5, segment_length=3)
    segments.setup()
    buffer = segments.buffer
    assert buffer.num_episodes == 4
    assert buffer.data["timesteps"][:18].tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1, 2] + [0, 1, 2, 3, 4]
    assert buffer.data["returns_to_go"][[0, 5, 10, 13, 17]].tolist() == [10, 35, 33, 75, 17]


def test_a_cut_last_episode_without_timeouts_is_refused_or_truncated(tmp_path):
    """Episodes of 5, 3 (terminal) and a last one cut after 2 of its 5 steps."""
    from vla_hydra.data.datamodule import FINAL_EPISODE_CUT, OfflineDataModule

    path = _without_timeouts(tmp_path, [5, 3, 2], terminal_episodes=[1])
    with pytest.raises(DatasetError, match=r"\[terminals\]: last transition is neither terminal nor timeout"):
        read_d4rl_hdf5(path, time_limit=5)
    loaded, metadata = read_d4rl_hdf5(path, cut_final_episode="truncate", time_limit=5)
    assert np.flatnonzero(loaded["timeouts"]).tolist() == [4, 9] and metadata[FINAL_EPISODE_CUT]
    data = OfflineDataModule(str(path), max_episode_steps=5, cut_final_episode="truncate")
    data.setup()
    assert data.episode_returns.tolist() == [10, 18]  # the cut 9 + 8 is no episode return
    segments = OfflineDataModule(
        str(path), max_episode_steps=5, cut_final_episode="truncate", segment_length=2
    )
    segments.setup()
    assert segments.buffer.num_episodes == 3
    assert segments.buffer.data["timesteps"][:10].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]


def test_the_time_limit_of_a_file_without_timeouts_comes_from_its_env(tmp_path, caplog):
    """data.max_episode_steps, else the registered limit of the file's env (metadata/env_id), else of the
    env the policy is evaluated in; none of them: one line naming the file and the field."""
    from vla_hydra.data.datamodule import OfflineDataModule

    named = _without_timeouts(tmp_path, [200, 150], [1], "named.hdf5", {"env_id": "Pendulum-v1"})
    with caplog.at_level("INFO"):
        loaded, _ = read_d4rl_hdf5(named)
    assert np.flatnonzero(loaded["timeouts"]).tolist() == [199]
    assert (
        "200-step time limit (the registered limit of env Pendulum-v1, named by metadata/env_id)"
        in caplog.text
    )

    anonymous = _without_timeouts(tmp_path, [200, 200], [], "anonymous.hdf5")
    for read in (lambda: read_d4rl_hdf5(anonymous), lambda: OfflineDataModule(str(anonymous)).setup()):
        with pytest.raises(DatasetError) as err:
            read()
        text = str(err.value)
        assert "\n" not in text and text.startswith(
            f"dataset {anonymous} [timeouts]: missing, and no time limit"
        )
        assert "data.max_episode_steps=" in text
    data = OfflineDataModule(str(anonymous))
    data.use_eval_env("Pendulum-v1", 100)  # the registered limit is the data's; 100 only this run's
    data.setup()
    assert data.episode_returns.tolist() == [sum(range(200)), sum(range(200, 400))]
    mine = OfflineDataModule(str(anonymous), max_episode_steps=100)  # data.max_episode_steps wins
    mine.use_eval_env("Pendulum-v1", None)
    mine.setup()
    assert len(mine.episode_returns) == 4


@pytest.mark.parametrize(
    "case,message",
    [
        ("empty", "[observations]: dataset is empty"),
        ("short", "[terminals]: has 11 rows, expected 12"),
        ("half", "[terminals]: holds 0.5 at row 3; expected 0/1 flags"),
        ("text", "[terminals]: has dtype |S1, expected numbers"),
        ("pairs", "[terminals]: has shape (12, 2), expected (12,)"),
    ],
)
def test_bad_files_without_timeouts_name_the_bad_field(tmp_path, case, message):
    """Timeouts are inferred from the terminals before those are validated: bad terminals (or none at
    all: an empty file used to raise numpy's "cannot reshape array of size 0") get the usual one line."""
    terminals = np.zeros(12)
    terminals[6] = 1
    terminals = {
        "empty": terminals[:0],
        "short": terminals[:-1],
        "half": np.where(np.arange(12) == 3, 0.5, terminals),
        "text": np.array([b"0"] * 12),
        "pairs": np.stack([terminals, terminals], axis=1),
    }[case]
    rows = 0 if case == "empty" else 12
    path = tmp_path / f"{case}.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((rows, 2), np.float32)
        f["actions"] = np.zeros((rows, 1), np.float32)
        f["rewards"] = np.zeros(rows, np.float32)
        f["terminals"] = terminals
    with pytest.raises(DatasetError) as err:
        read_d4rl_hdf5(path, time_limit=4)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"dataset {path} {message}"), text


def test_observation_statistics_hand_computed_and_kept_by_a_rebuilt_policy(tmp_path):
    """Per-dimension mean and population std (ddof 0, as CORL) over the file's rows; the policy divides by
    std + 1e-3, and a policy rebuilt without the data (as load_policy does) gets them from its state."""
    import torch

    from vla_hydra.algos.bc import BC
    from vla_hydra.data.datamodule import OfflineDataModule
    from vla_hydra.envs.factory import EnvSpec
    from vla_hydra.models.mlp import DeterministicActor

    arrays = make_arrays(n_episodes=2, length=2, obs_dim=2)  # column 0: 0, 1, 100, 101
    arrays["observations"][:, 1] = 7.0  # a constant column: std 0
    path = write_d4rl_hdf5(tmp_path / "stats.hdf5", arrays, {})
    data = OfflineDataModule(str(path), batch_size=2)
    data.setup("fit")
    stats = data.stats()
    # mean 50.5; deviations +-50.5, +-49.5: std sqrt((2 * 50.5^2 + 2 * 49.5^2) / 4) = sqrt(2500.25)
    torch.testing.assert_close(stats.obs_mean, torch.tensor([50.5, 7.0]))
    torch.testing.assert_close(stats.obs_std, torch.tensor([2500.25**0.5, 0.0]))
    assert (stats.episode_return_min, stats.episode_return_max) == (2.0, 2.0)

    spec = EnvSpec("Test-v0", (2,), 1, [-1.0], [1.0])

    def actor(shape, dim):
        return DeterministicActor(shape, dim, hidden_dims=(4,))

    trained = BC(spec, actor, stats=stats)
    obs = torch.tensor([[100.5, 7.5]])
    expected = torch.tensor([[50.0 / (2500.25**0.5 + 1e-3), 0.5 / 1e-3]])
    torch.testing.assert_close(trained.obs_normalizer(obs), expected)
    rebuilt = BC(spec, actor)
    rebuilt.load_state_dict(trained.state_dict())
    torch.testing.assert_close(rebuilt.obs_normalizer(obs), expected)


def test_inferred_timeouts_hand_computed_and_a_terminal_at_the_limit_is_terminal_only():
    from vla_hydra.data.d4rl_format import infer_timeouts

    # limit 3: rows 0-2 time out at row 2; row 5 is terminal and at the limit (terminal only); the counter
    # restarts after it, so rows 6-8 time out at row 8; rows 9, 10 are a cut remainder
    terminals = np.zeros(11, bool)
    terminals[5] = True
    assert np.flatnonzero(infer_timeouts(terminals, 3)).tolist() == [2, 8]
    # (N, 1) columns read as (N,)
    assert np.flatnonzero(infer_timeouts(terminals[:, None], 3)).tolist() == [2, 8]
