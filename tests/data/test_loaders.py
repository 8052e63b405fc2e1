"""Dataset loaders beyond plain files: D4RL datasets by name (files laid out like real D4RL downloads,
with and without next_observations) and local Minari datasets made with Minari's own DataCollector,
trained end to end, plus their one-line errors."""

from __future__ import annotations

import warnings

import gymnasium as gym
import h5py
import numpy as np
import pytest

from tests.conftest import run_module, small_train_config
from vla_hydra.core.exceptions import ConfigError, DatasetError
from vla_hydra.data.datamodule import d4rl_datamodule, minari_datamodule
from vla_hydra.train import train

# ---------------------------------------------------------------------------------------------------
# D4RL by name


def d4rl_arrays() -> dict[str, np.ndarray]:
    """15 rows: episode 0 (rows 0-5) and episode 2 (rows 10-14) end in timeouts, episode 1 (rows 6-9)
    in a terminal. observations[i] = (i, 10 i, -i); the successor of an episode's last row is not a row
    of the file: i + 0.5 for a timeout, i + 0.25 for a terminal (the state the env fell into)."""
    n = 15
    obs = np.arange(n, dtype=np.float32)[:, None] * np.array([1, 10, -1], np.float32)
    next_obs = np.concatenate([obs[1:], obs[-1:]]).copy()
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    timeouts[[5, 14]] = True
    terminals[9] = True
    next_obs[[5, 14]] = obs[[5, 14]] + 0.5 * np.array([1, 10, -1], np.float32)
    next_obs[9] = obs[9] + 0.25 * np.array([1, 10, -1], np.float32)
    return {
        "observations": obs,
        "actions": np.linspace(-1, 1, n, dtype=np.float32)[:, None],
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_obs,
    }


def write_d4rl_like(path, arrays: dict[str, np.ndarray], with_next: bool = True):
    """The layout of a downloaded D4RL v2 file: top-level arrays, `infos/` per-step extras and a
    `metadata/` group holding scalars AND the behaviour policy's weights in nested groups."""
    n = len(arrays["rewards"])
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key != "next_observations" or with_next:
                f.create_dataset(key, data=value)
        f.create_dataset("infos/qpos", data=np.zeros((n, 4)))
        f.create_dataset("infos/qvel", data=np.zeros((n, 3)))
        f.create_dataset("infos/action_log_probs", data=np.zeros(n, np.float32))
        f.create_dataset("metadata/algorithm", data=b"SAC")
        f.create_dataset("metadata/iteration", data=np.int64(1000000))
        f.create_dataset("metadata/policy/fc0/weight", data=np.ones((8, 3), np.float32))
        f.create_dataset("metadata/policy/nonlinearity", data=b"relu")
    return path


def test_d4rl_by_name_with_and_without_next_observations_give_the_same_transitions(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    arrays = d4rl_arrays()
    # D4RL's file names: '-' -> '_' except before the version
    write_d4rl_like(tmp_path / "hopper_medium-v2.hdf5", arrays, with_next=True)
    write_d4rl_like(tmp_path / "hopper_medium_replay-v2.hdf5", arrays, with_next=False)

    loaded = {}
    files = {
        "hopper-medium-v2": "hopper_medium-v2.hdf5",
        "hopper-medium-replay-v2": "hopper_medium_replay-v2.hdf5",
    }
    for name, file_name in files.items():
        dm = d4rl_datamodule(name)
        dm.setup("fit")
        assert dm.name == name and dm.path == tmp_path / file_name
        # top-level metadata is read; the policy weights nested under metadata/policy/ are skipped
        assert dm.metadata == {"algorithm": "SAC", "iteration": 1000000}
        # episode returns 0+..+5 = 15, 6+7+8+9 = 30, 10+..+14 = 60
        np.testing.assert_array_equal(dm.episode_returns, [15, 30, 60])
        loaded[name] = {k: v.numpy() for k, v in dm.buffer.data.items()}
    with_next, without = loaded["hopper-medium-v2"], loaded["hopper-medium-replay-v2"]

    # with next_observations every row is a transition; timeout rows stay bootstrapped (not terminal)
    assert len(with_next["observations"]) == 15
    np.testing.assert_array_equal(with_next["terminals"], arrays["terminals"].astype(np.float32))
    assert with_next["terminals"][[5, 14]].tolist() == [0, 0] and with_next["timeouts"][[5, 14]].tolist() == [
        1,
        1,
    ]
    np.testing.assert_array_equal(with_next["next_observations"][5], [5.5, 55, -5.5])
    # without them the timeout-final rows 5 and 14 have no successor in the file -> dropped
    keep = np.ones(15, bool)
    keep[[5, 14]] = False
    assert len(without["observations"]) == 13 and without["timeouts"].sum() == 0
    terminal_row = 8  # row 9 of the file, after dropping row 5
    for key in with_next:
        expected = with_next[key][keep]
        if key == "next_observations":
            # a terminal step never bootstraps: without the file's s' it keeps its own s as placeholder
            np.testing.assert_array_equal(without[key][terminal_row], [9, 90, -9])
            np.testing.assert_array_equal(expected[terminal_row], [9.25, 92.5, -9.25])
            expected[terminal_row] = without[key][terminal_row]
        np.testing.assert_array_equal(without[key], expected, err_msg=key)
    assert without["terminals"].tolist() == [0] * 8 + [1] + [0] * 4


def test_d4rl_v0_file_without_timeouts_ends_episodes_at_its_envs_time_limit(tmp_path, monkeypatch, caplog):
    """D4RL's -v0 files store no timeouts: episodes end at terminals and every 1000 steps after one
    (Hopper's limit, known from the dataset's name). 2,300 rows: 1000 (limit), 300 (terminal), 1000
    (limit) minus the last 2 steps, a cut the data=d4rl config truncates."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    n = 2298
    terminals = np.zeros(n, bool)
    terminals[1299] = True
    arrays = {
        "observations": np.zeros((n, 11), np.float32),
        "actions": np.zeros((n, 3), np.float32),
        "rewards": np.ones(n, np.float32),
        "terminals": terminals,
    }
    # the name D4RL publishes and downloads hopper-medium-v0 under (no version; medium-replay is `mixed`)
    path = write_d4rl_like(tmp_path / "hopper_medium.hdf5", arrays, with_next=False)
    dm = d4rl_datamodule("hopper-medium-v0", cut_final_episode="truncate")
    assert dm.path == path and d4rl_datamodule(path=str(path)).name == "hopper-medium-v0"
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert (
        "1000-step time limit (the registered limit of env Hopper-v5, the env of D4RL dataset" in caplog.text
    )
    assert dm.episode_returns.tolist() == [1000, 300]  # the cut 998 steps are no episode return
    # the 1000-step episode's last step and the cut's have no successor in the file: 2 rows dropped
    assert len(dm.buffer) == n - 2 and dm.buffer.data["terminals"].sum() == 1


def test_missing_d4rl_file_error_lists_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    with pytest.raises(DatasetError) as err:
        d4rl_datamodule("walker2d-medium-expert-v2")
    text = str(err.value)
    assert "\n" not in text
    assert str(tmp_path / "d4rl" / "walker2d_medium_expert-v2.hdf5") in text
    assert str(tmp_path / "d4rl" / "walker2d-medium-expert-v2.hdf5") in text
    assert "D4RL_DATASET_DIR" in text and "data.path=" in text and "download" in text

    # no $D4RL_DATASET_DIR: D4RL's default download dir under the home directory
    monkeypatch.delenv("D4RL_DATASET_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetError, match="not found") as err:
        d4rl_datamodule("hopper-random-v2")
    assert str(tmp_path / "home" / ".d4rl" / "datasets" / "hopper_random-v2.hdf5") in str(err.value)
    # a -v0 locomotion dataset is looked for under D4RL's own name for it first
    with pytest.raises(DatasetError, match="not found") as err:
        d4rl_datamodule("walker2d-medium-replay-v0")
    home = tmp_path / "home" / ".d4rl" / "datasets"
    assert f"(looked for {home / 'walker_mixed.hdf5'}, {home / 'walker2d_medium_replay-v0.hdf5'}, " in str(
        err.value
    )


def test_d4rl_file_by_path_is_named_after_its_file_and_must_be_evaluated_in_its_env(tmp_path):
    """D4RL files record no env id: the dataset's name does (halfcheetah-...). HalfCheetah and Walker2d
    share their shapes (17 obs, 6 actions), so only the name stops HalfCheetah data being trained and
    scored (with Walker2d's reference returns) in Walker2d."""
    from vla_hydra.envs.factory import EnvFactory

    arrays = d4rl_arrays()
    arrays["observations"] = np.repeat(arrays["observations"][:, :1], 17, axis=1)
    arrays["next_observations"] = np.repeat(arrays["next_observations"][:, :1], 17, axis=1)
    arrays["actions"] = np.repeat(arrays["actions"], 6, axis=1) * 0.5
    path = write_d4rl_like(tmp_path / "halfcheetah_medium_replay-v2.hdf5", arrays)
    dm = d4rl_datamodule(path=str(path))
    assert dm.name == "halfcheetah-medium-replay-v2"
    dm.setup("fit")
    with pytest.raises(DatasetError) as err:
        dm.check_compatible(EnvFactory(id="Walker2d-v5").spec())
    assert str(err.value) == (
        f"dataset {path}: D4RL dataset 'halfcheetah-medium-replay-v2' holds HalfCheetah data, but the policy "
        "would be evaluated and scored in env Walker2d-v5; use env=halfcheetah"
    )
    dm.check_compatible(EnvFactory(id="HalfCheetah-v5").spec())
    # the same file read with data=hdf5 (README: any D4RL-format file) trained in Walker2d without a word
    from vla_hydra.data.datamodule import OfflineDataModule

    plain = OfflineDataModule(path=str(path))
    plain.setup("fit")
    with pytest.raises(DatasetError) as err:
        plain.check_compatible(EnvFactory(id="Walker2d-v5").spec())
    assert str(err.value) == (
        f"dataset {path}: D4RL dataset 'halfcheetah_medium_replay-v2' holds HalfCheetah data, but the policy "
        "would be evaluated and scored in env Walker2d-v5; use env=halfcheetah"
    )
    plain.check_compatible(EnvFactory(id="HalfCheetah-v5").spec())
    # neither a name nor a path: one line naming the key
    with pytest.raises(ConfigError, match=r"^data.name: required for data=d4rl"):
        d4rl_datamodule()
    # a data.path that does not exist says how to obtain D4RL's file, not how to collect one
    with pytest.raises(
        DatasetError, match="file not found .data.path, D4RL dataset 'hopper-medium-v2'.; download"
    ):
        d4rl_datamodule("hopper-medium-v2", path=str(tmp_path / "absent.hdf5"))


@pytest.mark.parametrize(
    "case,message",
    [
        ("length", "[actions]: has 14 rows, expected 15"),
        ("nan", "[next_observations]: contains NaN or inf (first at row 3)"),
        ("empty", "[observations]: dataset is empty"),
        ("cut", "[terminals]: last transition is neither terminal nor timeout"),
        ("equal_refs", "[metadata/ref_expert_return]: equals the random reference return (-5)"),
        ("array_ref", "[metadata/ref_expert_return]: holds [-5.0]; expected a finite number"),
        (
            "text_ref_time_limit",
            "[metadata/ref_time_limit]: holds 'abc'; expected a whole number of steps >= 1",
        ),
    ],
)
def test_bad_d4rl_file_by_name_fails_in_one_line_naming_the_resolved_file(
    tmp_path, monkeypatch, case, message
):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    arrays = d4rl_arrays()
    if case == "length":
        arrays["actions"] = arrays["actions"][:-1]
    elif case == "nan":
        arrays["next_observations"][3, 2] = np.inf
    elif case == "empty":
        arrays = {k: v[:0] for k, v in arrays.items()}
    elif case == "cut":
        arrays["timeouts"][-1] = False
    path = write_d4rl_like(tmp_path / "halfcheetah_medium-v2.hdf5", arrays)
    if case in ("equal_refs", "array_ref", "text_ref_time_limit"):  # else a traceback at the first score
        with h5py.File(path, "a") as f:
            f["metadata/ref_random_return"] = -5.0
            f["metadata/ref_expert_return"] = {"equal_refs": -5.0, "array_ref": np.array([-5.0])}.get(
                case, 5.0
            )
            if case == "text_ref_time_limit":  # int() of it was a traceback before the first evaluation
                f["metadata/ref_time_limit"] = "abc"
    dm = d4rl_datamodule("halfcheetah-medium-v2")
    with pytest.raises(DatasetError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"dataset {path} ") and message in text, text


# ---------------------------------------------------------------------------------------------------
# Minari


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def collect_minari(dataset_id, env_id, seeds, max_steps, **create_kwargs) -> list[dict]:
    """Random-policy episodes recorded by minari.DataCollector; returns what the env itself returned."""
    import minari

    env = minari.DataCollector(gym.make(env_id, max_episode_steps=max_steps))
    rng = np.random.default_rng(0)
    space = env.action_space
    episodes = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        ep = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")}
        while True:
            if isinstance(space, gym.spaces.Discrete):
                action = int(rng.integers(space.n))
            else:
                action = rng.uniform(space.low, space.high).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(ep, (obs, next_obs, action, reward, terminated, truncated), strict=True):
                ep[key].append(value)
            obs = next_obs
            if terminated or truncated:
                break
        episodes.append({k: np.asarray(v) for k, v in ep.items()})
    with warnings.catch_warnings():  # Minari asks for author, description, ... metadata
        warnings.simplefilter("ignore")
        env.create_dataset(dataset_id=dataset_id, **create_kwargs)
    env.close()
    return episodes


def test_minari_transitions_equal_the_collected_episodes(minari_root):
    # Hopper falls under random actions: with a 40-step limit some episodes terminate, some truncate
    episodes = collect_minari("test/hopper/random-v0", "Hopper-v5", seeds=range(6), max_steps=40)
    ends = [(bool(e["terminated"][-1]), bool(e["truncated"][-1])) for e in episodes]
    assert (True, False) in ends and (False, True) in ends, ends

    dm = minari_datamodule("test/hopper/random-v0")
    dm.setup("fit")
    assert dm.path == minari_root / "test" / "hopper" / "random-v0" / "data"
    assert dm.name == "test/hopper/random-v0" and dm.metadata["env_id"] == "Hopper-v5"
    data = {k: v.numpy() for k, v in dm.buffer.data.items()}
    expected = {
        "observations": np.concatenate([e["obs"] for e in episodes]),
        "next_observations": np.concatenate([e["next_obs"] for e in episodes]),
        "actions": np.concatenate([e["actions"] for e in episodes]),
        "rewards": np.concatenate([e["rewards"] for e in episodes]),
        "terminals": np.concatenate([e["terminated"] for e in episodes]),
        "timeouts": np.concatenate([e["truncated"] & ~e["terminated"] for e in episodes]),
    }
    assert len(data["observations"]) == sum(len(e["rewards"]) for e in episodes)  # no row dropped
    for key, value in expected.items():
        np.testing.assert_array_equal(data[key], value.astype(np.float32), err_msg=key)
    assert data["terminals"].sum() == sum(t for t, _ in ends) and data["timeouts"].sum() == sum(
        t for _, t in ends
    )
    np.testing.assert_allclose(dm.episode_returns, [e["rewards"].sum() for e in episodes], rtol=1e-5)
    assert dm.ref_returns is None  # no Minari reference scores in this dataset


def test_minari_dataset_trains_end_to_end_through_the_config(tmp_path, data_dir, minari_root):
    episodes = collect_minari(
        "test/pendulum/random-v0",
        "Pendulum-v1",
        seeds=range(4),
        max_steps=50,
        ref_min_score=-1200.0,
        ref_max_score=-150.0,
    )
    cfg = small_train_config(
        tmp_path,
        data_dir,
        # Minari measured its reference scores on the dataset's 50-step episodes: evaluated alike
        ["data=minari", "data.dataset_id=test/pendulum/random-v0", "env=pendulum", "env.max_episode_steps=50"]
        + ["debug=fdr"],
    )
    _, results = train(cfg)
    assert results["dataset"] == "test/pendulum/random-v0"
    assert results["dataset_path"] == str(minari_root / "test" / "pendulum" / "random-v0" / "data")
    assert results["dataset_transitions"] == sum(len(e["rewards"]) for e in episodes) == 200
    assert results["train_steps"] == 1  # debug=fdr: one update
    # Minari's reference scores become the normalized score's random/expert returns
    expected = 100 * (results["eval_return_mean"] + 1200) / (-150 + 1200)
    assert results["normalized_score"] == pytest.approx(expected)
    # ... and at the length they were measured at only: Pendulum's registered 200 steps get no score
    dm = minari_datamodule("test/pendulum/random-v0")
    dm.setup("fit")
    assert dm.reference_time_limit == 50
    assert dm.reference_returns(None, 200) is None and dm.reference_returns(None, 50) is not None


def test_minari_discrete_action_dataset_trains_bc(tmp_path, data_dir, minari_root):
    episodes = collect_minari("test/cartpole/random-v0", "CartPole-v1", seeds=range(3), max_steps=100)
    dm = minari_datamodule("test/cartpole/random-v0")
    dm.setup("fit")
    assert dm.discrete_actions and dm.action_range == (0, 1)
    expected = np.concatenate([e["actions"] for e in episodes])
    np.testing.assert_array_equal(dm.buffer.data["actions"].numpy(), expected.astype(np.float32))
    cfg = small_train_config(
        tmp_path,
        data_dir,
        ["data=minari", "data.dataset_id=test/cartpole/random-v0", "env=cartpole", "debug=fdr"],
    )
    _, results = train(cfg)
    assert results["dataset_transitions"] == len(expected)
    assert results["train_steps"] == 1  # debug=fdr: one update


def test_minari_dataset_from_another_env_names_that_env(tmp_path, data_dir, minari_root):
    collect_minari("test/hopper/few-v0", "Hopper-v5", seeds=[0], max_steps=20)
    cfg = small_train_config(
        tmp_path, data_dir, ["data=minari", "data.dataset_id=test/hopper/few-v0", "env=pendulum", "debug=fdr"]
    )
    with pytest.raises(DatasetError) as err:
        train(cfg)
    assert (
        "[observations]: shape per step (11,) does not match env Pendulum-v1 observation shape (3,) "
        in str(err.value)
    )
    assert str(err.value).endswith(
        "(the dataset was collected in Hopper-v5: env=hopper, or keep this env with data=pendulum_expert or "
        "data=pendulum_mixed or data=pendulum_random_expert)"
    )


def _episode(steps=3, end="truncated", **override):
    from minari.data_collector import EpisodeBuffer

    fields = {
        "observations": np.arange((steps + 1) * 3, dtype=np.float32).reshape(steps + 1, 3) / 10,
        "actions": np.zeros((steps, 1), np.float32),
        "rewards": [-1.0] * steps,
        "terminations": [False] * (steps - 1) + [end == "terminated"],
        "truncations": [False] * (steps - 1) + [end == "truncated"],
    }
    return EpisodeBuffer(**{**fields, **override})


@pytest.mark.parametrize(
    "case,message",
    [
        ("nan_reward", "[rewards]: contains NaN or inf (first at row 4)"),
        ("inf_last_obs", "[next_observations]: contains NaN or inf (first at row 5)"),
        # Minari keeps rewards as float64: named as stored, not as the inf float32 makes of it
        ("float64_overflow", "[rewards]: holds 1e+300 at row 4; expected values within float32's range"),
        (
            "obs_length",
            "[observations]: episode 1 has observations of shape (3, 3) for 3 steps, expected (4, 3)",
        ),
        ("action_length", "[actions]: episode 1 has 2 rows, expected 3 (its rewards)"),
        ("empty", "[observations]: dataset is empty (0 transitions)"),
        ("cut", "[truncations]: episode 1 ends with neither termination nor truncation"),
        ("dict_obs", "[observations]: Dict observation space is not supported: only Box"),
    ],
)
def test_bad_minari_dataset_fails_in_one_line_naming_dataset_and_field(minari_root, case, message):
    import minari

    spaces = {
        "observation_space": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        "action_space": gym.spaces.Box(-2, 2, (1,), np.float32),
    }
    obs = np.arange(12, dtype=np.float32).reshape(4, 3)
    second = {
        "nan_reward": dict(rewards=[-1.0, np.nan, -1.0]),  # row 3 + 1
        "float64_overflow": dict(rewards=[-1.0, 1e300, -1.0]),
        "inf_last_obs": dict(observations=np.concatenate([obs[:3], [[0, np.inf, 0]]])),  # s' of row 3 + 2
        "obs_length": dict(observations=obs[:3]),
        "action_length": dict(actions=np.zeros((2, 1), np.float32)),
        "cut": dict(truncations=[False] * 3),
    }
    buffers = [_episode(end="terminated"), _episode(**second.get(case, {}))]
    if case == "empty":
        buffers = []
    elif case == "dict_obs":
        spaces["observation_space"] = gym.spaces.Dict({"pos": spaces["observation_space"]})
        buffers = [_episode(observations={"pos": obs})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/bad-v0", buffers, **spaces)
    dm = minari_datamodule("test/bad-v0")
    with pytest.raises(DatasetError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"dataset {minari_root / 'test' / 'bad-v0' / 'data'} [")
    assert message in text, text


def test_a_truncated_minari_data_file_fails_in_one_line(minari_root):
    """Minari opens its data file at the first episode: a half-copied one was an OSError traceback."""
    import minari

    spaces = {
        "observation_space": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        "action_space": gym.spaces.Box(-2, 2, (1,), np.float32),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/cut-v0", [_episode() for _ in range(20)], **spaces)
    data = minari_root / "test" / "cut-v0" / "data"
    (main,) = data.glob("main_data.*")
    main.write_bytes(main.read_bytes()[: main.stat().st_size // 2])
    with pytest.raises(DatasetError) as err:
        minari_datamodule("test/cut-v0").setup("fit")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"dataset {data}: Minari cannot read its episodes (")
    assert text.endswith("a partial copy or an interrupted download? copy or download it again"), text


def test_missing_minari_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, minari_root):
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            "test/other-v0",
            [_episode()],
            observation_space=gym.spaces.Box(-1, 1, (3,), np.float32),
            action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
        )
    dm = minari_datamodule("mujoco/hopper/medium-v0")  # building it reads nothing; setup() looks
    with pytest.raises(DatasetError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert "\n" not in text
    assert f"looked in {minari_root / 'mujoco' / 'hopper' / 'medium-v0' / 'data'}" in text
    assert "MINARI_DATASETS_PATH" in text and "local datasets there: test/other-v0" in text
    assert "minari download mujoco/hopper/medium-v0" in text and "DataCollector" in text
    with pytest.raises(ConfigError, match="not a Minari dataset id"):
        minari_datamodule("hopper-medium").setup("fit")  # no -vN

    # as a user meets it on the command line: one line on stderr, exit code 1
    proc = run_module(
        "vla_hydra.train",
        "data=minari",
        "data.dataset_id=mujoco/hopper/medium-v0",
        "env=hopper",
        f"hydra.run.dir={tmp_path}/run",
        env={"MINARI_DATASETS_PATH": str(minari_root)},
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset ") and "not found locally" in lines[0], (
        proc.stderr
    )
    # looking creates nothing: minari's own listing used to create a missing datasets root
    empty_root = tmp_path / "no-minari-here"
    proc = run_module(
        "vla_hydra.train", "data=minari", "data.dataset_id=mujoco/hopper/medium-v0", "env=hopper",
        f"hydra.run.dir={tmp_path}/run2", env={"MINARI_DATASETS_PATH": str(empty_root)},
    )  # fmt: skip
    assert proc.returncode == 1 and "local datasets there: none" in proc.stderr and not empty_root.exists()


def test_a_batch_larger_than_the_dataset_is_warned_about(tmp_path, caplog):
    """Minibatches are drawn with replacement, so it runs, but a batch of 1,000,000 on a 40k-row file
    (a typo) used to sit at step 0 for minutes without a word."""
    from vla_hydra.data.datamodule import OfflineDataModule

    path = write_d4rl_like(tmp_path / "tiny.hdf5", d4rl_arrays())
    for batch_size, warned in ((8, False), (100, True)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            OfflineDataModule(str(path), batch_size=batch_size, updates_per_step=1).setup("fit")
        messages = [r.getMessage() for r in caplog.records if "larger than the dataset" in r.getMessage()]
        assert bool(messages) == warned
    assert messages[0].startswith("data.batch_size=100 is larger than the dataset (15 transitions in ")
