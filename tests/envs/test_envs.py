"""Scripted controller, evaluation rollouts and normalized scores on the real Pendulum-v1."""

from __future__ import annotations

import numpy as np
import pytest

from vla_hydra.envs.controllers import PendulumSwingUp, UniformRandomPolicy
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.envs.factory import EnvFactory, normalized_score


def test_normalized_score_matches_d4rl_formula():
    assert normalized_score(50.0, {"random": 0.0, "expert": 200.0}) == pytest.approx(25.0)
    # hopper constants from D4RL: (-20.272305, 3234.3); expert return -> 100
    assert normalized_score(3234.3, {"random": -20.272305, "expert": 3234.3}) == pytest.approx(100.0)
    assert normalized_score(1.0, None) is None


def test_swing_up_controller_solves_pendulum_and_random_does_not():
    env = EnvFactory(id="Pendulum-v1")
    expert = rollout_episodes(PendulumSwingUp(), env, num_episodes=10, seed=0)
    spec = env.spec()
    random = rollout_episodes(UniformRandomPolicy(spec.action_low, spec.action_high), env, 10, seed=0)
    assert expert.lengths.tolist() == [200] * 10
    assert expert.return_mean > -250 and random.return_mean < -900


def test_rollouts_are_seeded():
    env = EnvFactory(id="Pendulum-v1")
    a = rollout_episodes(PendulumSwingUp(), env, 3, seed=5)
    b = rollout_episodes(PendulumSwingUp(), env, 3, seed=5)
    c = rollout_episodes(PendulumSwingUp(), env, 3, seed=6)
    np.testing.assert_array_equal(a.returns, b.returns)
    assert not np.array_equal(a.returns, c.returns)


def test_unknown_env_id_is_a_config_error():
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError, match="env.id='NoSuchEnv-v0'"):
        EnvFactory(id="NoSuchEnv-v0").spec()


def test_an_env_id_whose_module_cannot_be_imported_is_a_config_error():
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(
        ConfigError, match=r"^env.id='no_such_pkg.envs:Robot-v0': cannot import no_such_pkg.envs"
    ):
        EnvFactory(id="no_such_pkg.envs:Robot-v0").spec()


def test_an_env_module_that_fails_on_import_is_a_config_error(tmp_path, monkeypatch):
    """The user's module exists but raises as it is imported: one line naming it and the error, also with
    ref_returns set (whose time-limit check imports the module first), not a traceback."""
    from vla_hydra.core.exceptions import ConfigError

    (tmp_path / "broken_envs.py").write_text("undefined_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"^env.id='broken_envs:Robot-v0': cannot import broken_envs to register it "
        r"\(NameError: name 'undefined_name' is not defined\)$",
    ):
        EnvFactory(id="broken_envs:Robot-v0", ref_returns={"random": 0.0, "expert": 1.0}).spec()


@pytest.mark.parametrize(
    "env_id,space",
    [("FrozenLake-v1", "Discrete(16)"), ("Blackjack-v1", "Tuple(Discrete(32), Discrete(11), ")],
)
def test_an_observation_space_that_is_not_an_array_is_refused_with_the_flattening_wrapper(env_id, space):
    """env.id=FrozenLake-v1 failed in PPO's first forward pass with an IndexError, Blackjack-v1 with a
    TypeError; FlattenObservation (the hint) makes both trainable."""
    from functools import partial

    import gymnasium as gym

    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError) as err:
        EnvFactory(id=env_id).spec()
    assert str(err.value).startswith(f"env.id='{env_id}': observation space {space}")
    assert str(err.value).endswith(
        "is not a Box of arrays; flatten it with "
        "env.wrappers='[{_target_: gymnasium.wrappers.FlattenObservation, _partial_: true}]'"
    )
    flat = EnvFactory(id=env_id, wrappers=[partial(gym.wrappers.FlattenObservation)]).spec()
    assert flat.observation_shape == ((16,) if env_id == "FrozenLake-v1" else (45,))


def test_unbounded_actions_are_refused(tmp_path, monkeypatch):
    """A user's env with Box(-inf, inf) actions trained to NaN returns (actions scaled to infinite bounds)
    and exited 0."""
    from vla_hydra.core.exceptions import ConfigError

    (tmp_path / "unbounded_envs.py").write_text(
        "import gymnasium as gym\n"
        "import numpy as np\n"
        "from gymnasium.envs.classic_control.pendulum import PendulumEnv\n"
        "class Unbounded(PendulumEnv):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)\n"
        "gym.register('Unbounded-v0', entry_point=Unbounded, max_episode_steps=20)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        EnvFactory(id="unbounded_envs:Unbounded-v0").spec()
    assert str(err.value) == (
        "env.id='unbounded_envs:Unbounded-v0': action space Box(-inf, inf, (1,), float32) has unbounded "
        "actions; the policies act in [-1, 1] scaled to the env's bounds: declare finite ones in the env's "
        "action_space"
    )


def test_an_argument_the_env_does_not_take_is_a_config_error():
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"env.kwargs=\{'foo': 1\}: CartPole-v1 cannot be made with them"):
        EnvFactory(id="CartPole-v1", kwargs={"foo": 1}).spec()


def test_evaluation_sums_the_env_rewards_under_a_reward_changing_wrapper():
    from functools import partial

    import gymnasium as gym

    policy = PendulumSwingUp()
    plain = rollout_episodes(policy, EnvFactory(id="Pendulum-v1"), 3, seed=7)
    clipped_env = EnvFactory(
        id="Pendulum-v1", wrappers=[partial(gym.wrappers.ClipReward, min_reward=-0.01, max_reward=0.0)]
    )
    clipped = rollout_episodes(policy, clipped_env, 3, seed=7)
    np.testing.assert_allclose(clipped.returns, plain.returns)
    assert plain.returns.min() < -2.0  # what the clipped rewards (>= -0.01 x 200 steps) could not sum to


@pytest.mark.parametrize("wrapper", ["NormalizeObservation", "NormalizeReward"])
def test_wrappers_with_running_statistics_are_refused(wrapper):
    from functools import partial

    import gymnasium as gym

    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(
        ConfigError, match=rf"env.wrappers\[0\]: {wrapper} keeps statistics .* algo.normalize_"
    ):
        EnvFactory(id="Pendulum-v1", wrappers=[partial(getattr(gym.wrappers, wrapper))])


def test_a_wrapper_given_by_name_says_how_to_write_it():
    """`env.wrappers=[gymnasium.wrappers.TimeAwareObservation]` (a string) failed at the first env made with
    "env.wrappers[0]: cannot wrap CartPole-v1 ('str' object is not callable)"."""
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError) as err:
        EnvFactory(id="CartPole-v1", wrappers=["gymnasium.wrappers.TimeAwareObservation"])
    assert str(err.value) == (
        "env.wrappers[0]=gymnasium.wrappers.TimeAwareObservation: a name, not an env -> env callable; write "
        "env.wrappers='[{_target_: gymnasium.wrappers.TimeAwareObservation, _partial_: true}]' "
        "(with the wrapper's arguments)"
    )


def test_configured_wrappers_apply_to_every_env_and_the_spec(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        [
            "env=pendulum",
            "env.max_episode_steps=30",
            "env.wrappers=[{_target_: gymnasium.wrappers.FrameStackObservation, _partial_: true, stack_size: 4}]",
        ],
    )
    factory = instantiate(cfg.env)
    assert factory.spec().observation_shape == (4, 3)
    envs = factory.make_training_vector()
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (1, 4, 3)
    steps = 0
    done = False
    while not done:
        obs, _, terminated, truncated, _ = envs.step(np.zeros((1, 1), dtype=np.float32))
        steps += 1
        done = bool(terminated[0] or truncated[0])
    assert steps == 30  # the time limit from env.max_episode_steps
    envs.close()


def test_mujoco_warnings_go_to_the_log_not_to_a_file_in_the_working_directory(tmp_path):
    """gymnasium's HalfCheetah-v5 model triggers a deprecation warning that MuJoCo, left alone, prints and
    appends to MUJOCO_LOG.TXT in the cwd on every env made (640 KB after one test session)."""
    from tests.conftest import run_python

    probe = (
        "from vla_hydra.envs.factory import EnvFactory\n"
        "for _ in range(3):\n"
        "    env = EnvFactory(id='HalfCheetah-v5').make(); env.reset(seed=0); env.close()\n"
    )
    proc = run_python(probe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert "settotalmass" not in proc.stdout + proc.stderr  # known and harmless: debug level only


def test_a_mujoco_backend_that_cannot_load_is_a_config_error():
    """MUJOCO_GL picks the GL backend as mujoco is imported: a typo, or osmesa without libOSMesa, failed
    every MuJoCo run with a traceback from inside mujoco's import."""
    from tests.conftest import run_python

    probe = "from vla_hydra.envs.factory import EnvFactory\nEnvFactory(id='Hopper-v5').spec()\n"
    proc = run_python(probe, env={"MUJOCO_GL": "no-such-backend"})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "vla_hydra.core.exceptions.ConfigError: env.id='Hopper-v5': cannot import mujoco with "
        "MUJOCO_GL=no-such-backend; unset it, or MUJOCO_GL=egl renders headless (RuntimeError: "
    ), proc.stderr


def test_other_mujoco_warnings_are_logged_once(caplog):
    from vla_hydra.envs.factory import _log_mujoco_warning

    with caplog.at_level("WARNING"):
        for _ in range(3):
            _log_mujoco_warning("Nan, Inf or huge value in QACC at DOF 0. The simulation is unstable.")
    assert [r.getMessage() for r in caplog.records] == [
        "MuJoCo: Nan, Inf or huge value in QACC at DOF 0. The simulation is unstable."
    ]


def test_published_reference_returns_hold_only_for_the_registered_episode_length():
    refs = {"random": 22.0, "expert": 500.0}
    assert EnvFactory(id="CartPole-v1", ref_returns=refs).ref_returns == refs
    assert EnvFactory(id="CartPole-v1", ref_returns=refs, max_episode_steps=500).ref_returns == refs
    assert EnvFactory(id="CartPole-v1", ref_returns=refs, max_episode_steps=100).ref_returns is None
    assert (
        EnvFactory(id="CartPole-v1", ref_returns=refs, kwargs={"max_episode_steps": 100}).ref_returns is None
    )
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"^env.ref_returns: random and expert are both 5.0; expected two"):
        EnvFactory(id="CartPole-v1", ref_returns={"random": 5, "expert": 5})  # scores would divide by 0


def test_an_env_configs_references_do_not_score_another_env_id():
    """cartpole.yaml's ref_returns are CartPole-v1's; with env.id=Acrobot-v1 they are dropped, references
    given for that env are kept."""
    cartpole = {"random": 22.0, "expert": 500.0}
    assert EnvFactory(id="CartPole-v1", ref_returns=cartpole).ref_returns == cartpole
    assert EnvFactory(id="Acrobot-v1", ref_returns=cartpole).ref_returns is None
    hopper = {"random": -20.272305, "expert": 3234.3}
    assert EnvFactory(id="Walker2d-v5", ref_returns=hopper).ref_returns is None
    own = {"random": -500.0, "expert": -100.0}
    assert EnvFactory(id="Acrobot-v1", ref_returns=own).ref_returns == own


def test_a_users_env_registered_by_its_own_module_is_made_timed_and_scored(tmp_path, monkeypatch):
    """env.id=<module>:<id>, gym.make's form for an env a user's package registers on import: its episode
    length is the registered one (it was unknown, and published references given for the registered length
    were dropped as if measured on other episodes), and async workers make it too."""
    (tmp_path / "user_robot_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('UserPendulum-v0', entry_point='gymnasium.envs.classic_control.pendulum:PendulumEnv',\n"
        "             max_episode_steps=50)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    refs = {"random": -400.0, "expert": -40.0}
    env = EnvFactory(
        id="user_robot_envs:UserPendulum-v0", ref_returns=refs, num_envs=2, vectorization="async"
    )
    assert env.time_limit == 50 and env.spec().env_id == "user_robot_envs:UserPendulum-v0"
    assert EnvFactory(id=env.id, ref_returns=refs, max_episode_steps=50).ref_returns == refs
    assert EnvFactory(id=env.id, ref_returns=refs, max_episode_steps=60).ref_returns is None
    result = rollout_episodes(PendulumSwingUp(), env, 2, seed=0)
    assert result.lengths.tolist() == [50, 50] and result.normalized_score is not None
    vector = env.make_training_vector()
    try:
        observations, _ = vector.reset(seed=0)
        assert observations.shape == (2, 3)
    finally:
        vector.close()


def test_rollouts_count_each_episode_only_until_it_ends():
    """Episodes of different lengths in one vector rollout: an env whose episode ended (terminated, or
    truncated by the time limit) adds no more reward or length, though the vector env resets it and keeps
    stepping it. CartPole pays 1 per step, so each return is its episode's length, counted here with a
    plain single env per seed."""
    import gymnasium as gym

    def push_left(obs):
        return np.zeros(len(obs), dtype=np.int64)

    expected = []
    for seed in range(8):
        env = gym.make("CartPole-v1", max_episode_steps=10)
        env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            steps, done = steps + 1, terminated or truncated
        expected.append(steps)
        env.close()
    assert len(set(expected)) > 1 and 10 in expected  # mixed lengths, some cut by the time limit

    result = rollout_episodes(push_left, EnvFactory(id="CartPole-v1", max_episode_steps=10), 8, seed=0)
    assert result.lengths.tolist() == expected
    assert result.returns.tolist() == [float(n) for n in expected]
    assert result.to_dict()["eval_length_mean"] == pytest.approx(np.mean(expected))
