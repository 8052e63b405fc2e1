"""mp4 videos of policy episodes (`eval.video=true`), rendered headless.

MuJoCo renders through EGL without a display (MUJOCO_GL=egl, set here unless the user chose a backend);
classic-control envs render with pygame's software surface. Frames are encoded with the ffmpeg binary
that the imageio-ffmpeg wheel ships, so no system ffmpeg is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vla_hydra.core.logging import get_logger
from vla_hydra.envs.evaluation import evaluation_mode
from vla_hydra.envs.factory import EnvFactory

log = get_logger(__name__)

os.environ.setdefault("MUJOCO_GL", "egl")
# classic-control envs draw with pygame/SDL: off-screen frames need no window, and SDL's default
# driver prints "error: XDG_RUNTIME_DIR is invalid" on a headless machine
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def check_can_render(env_factory: EnvFactory, option: str) -> None:
    """Render one frame of the env before a run that asks for a video (`option`, e.g. eval.video=true)
    trains or evaluates anything: an env without rgb_array rendering, or a MuJoCo backend that needs a
    display (MUJOCO_GL=glfw), failed with a renderer's traceback only once training was over."""
    import warnings

    from vla_hydra.core.exceptions import ConfigError

    env = None
    try:
        with warnings.catch_warnings():  # gymnasium's own warning about an unlisted render_mode: said below
            warnings.simplefilter("ignore")
            env = env_factory.make(render_mode="rgb_array")
        env.reset(seed=0)
        frame, error = env.render(), None
    except ConfigError:  # the env itself cannot be made: its own one-line error
        raise
    except Exception as err:  # noqa: BLE001 - whatever the renderer raises means "cannot film it"
        frame, error = None, " ".join(f"{type(err).__name__}: {err}".split()).rstrip(": ")[:200]
    finally:
        if env is not None:
            env.close()
    if isinstance(frame, np.ndarray) and frame.ndim == 3:
        return
    modes = env.metadata.get("render_modes") if env is not None else None
    why = error or f"render() returned {type(frame).__name__}, not an image"
    hint = ""
    if env is not None and type(env.unwrapped).__module__.startswith("gymnasium.envs.mujoco"):
        hint = f"; MuJoCo renders headless with MUJOCO_GL=egl (here MUJOCO_GL={os.environ.get('MUJOCO_GL')})"
    elif modes is not None and "rgb_array" not in modes:
        hint = f"; its render_modes are {list(modes)}, without rgb_array"
    raise ConfigError(f"{option}: env {env_factory.id} cannot render video frames ({why}){hint}")


def record_video(
    policy: Any,
    env_factory: EnvFactory,
    path: str | Path,
    episodes: int = 1,
    seed: int = 0,
    fps: int | None = None,
) -> dict[str, Any]:
    """Roll out `episodes` episodes one after another (episode i reset with seed + i) and write them
    as one mp4. Returns {"path", "frames", "returns"}."""
    import imageio.v2 as imageio

    from vla_hydra.core.exceptions import OutputError

    path = Path(path)
    try:  # before the rollouts: an unwritable place fails at once, in one line
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot write the video there ({err.strerror or err})") from err
    act = policy.act if hasattr(policy, "act") else policy
    env = env_factory.make(record_env_reward=True, render_mode="rgb_array")
    fps = fps or int(env.metadata.get("render_fps", 30))
    frames, returns = [], []
    try:
        with evaluation_mode(policy):
            for episode in range(episodes):
                if hasattr(policy, "begin_rollout"):
                    policy.begin_rollout(1)
                obs, _ = env.reset(seed=seed + episode)
                frames.append(env.render())
                done, total = False, 0.0
                while not done:
                    action = act(obs[None])[0]
                    obs, reward, terminated, truncated, info = env.step(action)
                    # the env's own reward, as evaluation sums it (env.wrappers may scale what trained)
                    # and gives it to a stateful policy (a DT's returns-to-go). Episode i starts from
                    # evaluation's episode i state; in a chaotic env (MuJoCo) one env's float rounding
                    # differs from the batched evaluation's, so its return may differ slightly
                    reward = float(info.get("env_reward", reward))
                    total += reward
                    done = terminated or truncated
                    frames.append(env.render())
                    if hasattr(policy, "observe_rollout_step"):
                        policy.observe_rollout_step(np.array([reward]), np.array([done]))
                returns.append(total)
                # a MuJoCo frame takes ~0.2 s of software rendering here: a 1000-step episode, minutes
                log.info(
                    f"video episode {episode + 1}/{episodes}: return {total:.1f}, {len(frames)} frames so far"
                )
    finally:
        env.close()
    # written next to the target, then renamed: an interrupted run never leaves a truncated video
    # (the temporary name keeps the .mp4 suffix, which the writer needs to pick its container)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        # macro_block_size=1: keep the env's frame size (e.g. 500x500) instead of padding to 16
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(np.asarray(frame, dtype=np.uint8))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path.resolve()), "frames": len(frames), "returns": returns}


def add_video_to_results(
    policy: Any,
    env_factory: EnvFactory,
    results: dict[str, Any],
    results_path: Path,
    episodes: int,
    seed: int,
) -> None:
    """`video=true` of train and eval: `episodes` episodes to videos/eval.mp4 beside `results_path`, named
    in the results, which are written again. Called after the results were first written, so a failing
    video loses no result."""
    from vla_hydra.core.io import write_json_atomic

    log.info(f"recording {episodes} episode(s) to video")
    video = record_video(policy, env_factory, results_path.parent / "videos" / "eval.mp4", episodes, seed)
    results["video"] = video["path"]
    log.info(f"video:      {video['path']}")
    write_json_atomic(results_path, results)
