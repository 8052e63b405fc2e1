"""Evaluation videos: real rendering (pygame for classic control, EGL for MuJoCo), real mp4s that decode."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

from tests.conftest import small_train_config
from vla_hydra.envs.controllers import PendulumSwingUp
from vla_hydra.envs.factory import EnvFactory
from vla_hydra.envs.video import record_video
from vla_hydra.train import train


def _decode(path):
    reader = imageio.get_reader(path, format="FFMPEG")
    frames = [frame for frame in reader]
    reader.close()
    return frames


def test_pendulum_video_has_one_frame_per_step_and_shows_the_swing_up(tmp_path):
    out = record_video(
        PendulumSwingUp(), EnvFactory(id="Pendulum-v1"), tmp_path / "v.mp4", episodes=1, seed=3
    )
    frames = _decode(out["path"])
    assert out["frames"] == 201 and len(frames) == 201  # reset frame + 200 steps
    assert frames[0].shape == (500, 500, 3)
    assert out["returns"][0] > -400  # the controller swings up: this is its episode, not a blank one
    assert not np.array_equal(frames[0], frames[100])


def test_video_returns_are_the_envs_own_under_reward_changing_wrappers(tmp_path):
    # evaluation sums the env's own rewards whatever env.wrappers do to them; the video's returns too
    clipped = EnvFactory(
        id="Pendulum-v1",
        max_episode_steps=20,
        wrappers=[partial(gym.wrappers.ClipReward, min_reward=-0.01, max_reward=0.0)],
    )
    out = record_video(PendulumSwingUp(), clipped, tmp_path / "v.mp4", episodes=1, seed=3)
    plain = record_video(
        PendulumSwingUp(), EnvFactory(id="Pendulum-v1", max_episode_steps=20), tmp_path / "p.mp4", 1, seed=3
    )
    assert out["returns"] == plain["returns"] and plain["returns"][0] < -20 * 0.01


def test_a_stateful_policy_observes_the_rewards_evaluation_gives_it(tmp_path):
    """A Decision Transformer lowers its returns-to-go by the rewards it observes: evaluation gives it
    the env's own (what its dataset holds), so a video must too, or under a reward-changing wrapper the
    video shows another policy's episode than the one evaluated."""
    from vla_hydra.envs.evaluation import rollout_episodes

    class Recording:
        def __init__(self):
            self.rewards = []

        def act(self, obs):
            return np.full((len(obs), 1), 0.5, dtype=np.float32)

        def begin_rollout(self, num_envs):
            self.rewards = []

        def observe_rollout_step(self, rewards, done):
            self.rewards.append(float(rewards[0]))

    clipped = EnvFactory(
        id="Pendulum-v1",
        max_episode_steps=20,
        wrappers=[partial(gym.wrappers.ClipReward, min_reward=-0.01, max_reward=0.0)],
    )
    evaluated, filmed = Recording(), Recording()
    rollout_episodes(evaluated, clipped, 1, seed=3)
    record_video(filmed, clipped, tmp_path / "v.mp4", episodes=1, seed=3)
    assert filmed.rewards == evaluated.rewards and min(evaluated.rewards) < -0.01


def test_mujoco_video_renders_headless(tmp_path, caplog):
    env = EnvFactory(id="Hopper-v5", max_episode_steps=10)
    with caplog.at_level("INFO", logger="vla_hydra"):
        out = record_video(lambda obs: np.zeros((len(obs), 3)), env, tmp_path / "hopper.mp4", episodes=2)
    frames = _decode(out["path"])
    assert len(frames) == out["frames"] and 4 <= out["frames"] <= 22
    assert frames[0].std() > 5  # a rendered scene, not a blank frame
    # progress per episode: software-rendered MuJoCo takes minutes for a long episode
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("video episode")]
    assert [line.split(":")[0] for line in progress] == ["video episode 1/2", "video episode 2/2"]
    assert progress[-1].endswith(f"{out['frames']} frames so far")


def test_train_writes_eval_video_when_asked(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path,
        data_dir,
        ["algo=ppo", "env=cartpole", "debug=fdr", "eval.video=true", "eval.video_episodes=2"],
    )
    _, results = train(cfg)
    frames = _decode(results["video"])
    assert results["video"].endswith("videos/eval.mp4") and len(frames) >= 2 * 9  # >= 2 short episodes


def test_a_video_that_cannot_be_written_fails_in_one_line_and_keeps_the_results(tmp_path, data_dir):
    import json

    import pytest

    from vla_hydra.core.exceptions import OutputError

    cfg = small_train_config(tmp_path, data_dir, ["algo=ppo", "env=cartpole", "debug=fdr", "eval.video=true"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "videos").write_text("a file where the videos dir would go")
    with pytest.raises(OutputError, match="cannot write the video there") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["algo"] == "ppo" and "video" not in results


class _NoRenderEnv(gym.Env):
    """A task without rgb_array rendering (many users' robot envs): it trains and evaluates, but cannot be
    filmed."""

    metadata = {"render_modes": []}

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), -float(np.square(action).sum()), False, False, {}


def test_a_video_of_an_env_that_cannot_render_is_refused_before_training_and_evaluation(tmp_path, data_dir):
    """eval.video=true on such an env trained the whole run, then failed with gymnasium's
    NotImplementedError traceback; vla_hydra.eval's video=true evaluated first, then failed the same way."""
    import pytest
    from omegaconf import open_dict

    from tests.conftest import compose_config
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.eval import evaluate

    gym.register("TestNoRender-v0", entry_point=_NoRenderEnv, max_episode_steps=16)
    overrides = [
        "algo=ppo_continuous",
        "env.id=TestNoRender-v0",
        "algo.total_timesteps=64",
        "algo.num_steps=64",
    ]
    cfg = small_train_config(tmp_path, data_dir, [*overrides, "eval.video=true"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == (
        "eval.video=true: env TestNoRender-v0 cannot render video frames (NotImplementedError); "
        "its render_modes are [], without rgb_array"
    )
    assert (
        not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "results.json").exists()
    )

    cfg = small_train_config(tmp_path / "plain", data_dir, overrides)
    _, results = train(cfg)  # without a video it trains, and eval can re-evaluate its checkpoint
    eval_cfg = compose_config("eval", [f"ckpt_path={results['checkpoint']}", "episodes=2", "video=true"])
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    with pytest.raises(ConfigError, match=r"^video=true: env TestNoRender-v0 cannot render video frames"):
        evaluate(eval_cfg)
    assert not (tmp_path / "eval" / "eval_results.json").exists()
