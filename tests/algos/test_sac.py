"""SAC: loss pieces against hand-computed numbers, what the replay buffer stores at terminations and
time limits, the policy delay, a short real Pendulum run that learns, and resume (env steps, replay
buffer)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.algos.stand_ins import StateCritics
from tests.conftest import compose_config, small_train_config
from vla_hydra.algos.online import OnlineAlgorithm
from vla_hydra.algos.sac import (
    REPLAY_BUFFER_KEY,
    sac_actor_loss,
    sac_critic_loss,
    sac_critic_target,
    sac_temperature_loss,
    write_replay_dataset,
)
from vla_hydra.core.config import ASSETS_DIR
from vla_hydra.core.exceptions import ConfigError, OutputError
from vla_hydra.data.d4rl_format import read_d4rl_hdf5
from vla_hydra.envs.evaluation import rollout_episodes
from vla_hydra.eval import load_policy
from vla_hydra.train import train

# small nets and early learning keep the real runs to seconds
SMALL = [
    "algo=sac",
    "env=pendulum",
    "trainer.max_steps=-1",
    "algo.critic_hidden_dims=[64,64]",
    "model.hidden_dims=[64,64]",
]


def test_critic_target_uses_min_of_target_critics_entropy_bonus_and_cuts_at_terminations():
    rewards, terminated = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[3.0, 5.0], [4.0, 1.0]])  # (critics, batch): min per column = [3, 1]
    next_log_pi = torch.tensor([-1.0, 0.5])
    # soft value = [3 - 0.5 * -1, 1 - 0.5 * 0.5] = [3.5, 0.75]; the terminated row keeps only its reward
    target = sac_critic_target(rewards, terminated, next_q, next_log_pi, alpha=0.5, gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * 3.5, 2.0]))


def test_critic_loss_sums_the_critics_mse():
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = sac_critic_loss(q, torch.tensor([1.0, 1.0]))
    # critic 1: (0 + 1) / 2 = 0.5; critic 2: (4 + 9) / 2 = 6.5
    assert loss.item() == pytest.approx(7.0)
    loss.backward()
    torch.testing.assert_close(q.grad, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))  # 2 (q - y) / B


def test_actor_loss_takes_the_pessimistic_critic():
    q_pi = torch.tensor([[1.0, 4.0], [2.0, 3.0]])  # min per column = [1, 3]
    log_pi = torch.tensor([-1.0, 2.0], requires_grad=True)
    # mean([0.5 * -1 - 1, 0.5 * 2 - 3]) = mean([-1.5, -2]) = -1.75
    loss = sac_actor_loss(q_pi, log_pi, alpha=0.5)
    assert loss.item() == pytest.approx(-1.75)
    loss.backward()
    torch.testing.assert_close(log_pi.grad, torch.tensor([0.25, 0.25]))  # alpha / B


def test_temperature_loss_pushes_alpha_towards_the_target_entropy():
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    log_pi = torch.tensor([-1.0, -3.0], requires_grad=True)
    # -(2 * mean([-1 - 2, -3 - 2])) = -(2 * -4) = 8
    loss = sac_temperature_loss(log_alpha, log_pi, target_entropy=-2.0)
    assert loss.item() == pytest.approx(8.0)
    loss.backward()
    # d/dlog_alpha = -alpha * mean(log pi + H) = 8 > 0: entropy (4) above target (2) -> alpha shrinks
    assert log_alpha.grad.item() == pytest.approx(8.0)
    assert log_pi.grad is None or torch.all(log_pi.grad == 0)  # log pi is a constant here


def _bare_sac(overrides: list[str]):
    """A SAC module with its training envs and replay buffer, outside any Trainer."""
    cfg = compose_config("train", [*SMALL, *overrides])
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model), stats=None)
    algo._direct_backward = True
    algo.envs = env.make_training_vector()
    algo.obs, _ = algo.envs.reset(seed=list(range(algo.num_envs)))
    algo.replay_buffer = algo.make_replay_buffer()
    return algo


def test_training_curve_sums_the_env_own_rewards_under_a_reward_changing_wrapper():
    torch.manual_seed(0)
    clip = "{_target_: gymnasium.wrappers.ClipReward, _partial_: true, min_reward: -0.01, max_reward: 0.0}"
    algo = _bare_sac(["env=pendulum", "env.max_episode_steps=20", f"env.wrappers=[{clip}]"])
    for _ in range(60):  # 3 episodes, the last one ending in a same-step autoreset
        algo.explore_step(random_actions=True)
    learned_from = algo.replay_buffer.data["rewards"][: len(algo.replay_buffer)]
    assert learned_from.min() >= -0.01  # the algorithm learns from the clipped rewards
    returns = [e["return"] for e in algo.episode_log]
    assert [e["length"] for e in algo.episode_log] == [20, 20, 20]
    # Pendulum's own returns: below the -0.2 that 20 clipped rewards could sum to at most
    assert max(returns) < -1.0, returns


def test_buffer_bootstraps_through_time_limits_but_not_terminations():
    torch.manual_seed(0)
    # Hopper falls within ~tens of random steps (terminations); a 30-step limit adds truncations
    algo = _bare_sac(["env=hopper", "env.max_episode_steps=30"])
    for _ in range(300):
        algo.explore_step(random_actions=True)
    data = {k: v[: len(algo.replay_buffer)].numpy() for k, v in algo.replay_buffer.data.items()}
    lengths = [e["length"] for e in algo.episode_log]
    ends = np.cumsum(lengths) - 1  # buffer index of each episode's last step
    truncated_ends = [i for i, n in zip(ends, lengths, strict=True) if n == 30]
    terminated_ends = [i for i, n in zip(ends, lengths, strict=True) if n < 30]
    assert truncated_ends and terminated_ends
    assert data["terminals"][terminated_ends].tolist() == [1.0] * len(terminated_ends)
    assert data["terminals"].sum() == len(terminated_ends)  # truncations are not terminal
    # next_observations is the episode's real last observation, not the next episode's first one
    for i in ends[ends < 299]:
        assert not np.allclose(data["next_observations"][i], data["observations"][i + 1])
    inside = np.setdiff1d(np.arange(299), ends)
    np.testing.assert_array_equal(data["next_observations"][inside], data["observations"][inside + 1])
    # the training curve's return of each episode: the sum of that episode's rewards only
    starts = ends - np.array(lengths) + 1
    sums = [data["rewards"][a : b + 1].sum() for a, b in zip(starts, ends, strict=True)]
    np.testing.assert_allclose([e["return"] for e in algo.episode_log], sums, rtol=1e-5)
    algo.envs.close()


def test_replay_dataset_file_keeps_each_envs_episodes_contiguous_and_marks_cut_ones(tmp_path):
    torch.manual_seed(0)
    # two envs; Hopper terminates within tens of random steps, a 30-step limit adds truncations
    algo = _bare_sac(["env=hopper", "env.max_episode_steps=30", "env.num_envs=2"])
    for _ in range(150):
        algo.explore_step(random_actions=True)
    algo.envs.close()
    metadata = write_replay_dataset(
        tmp_path / "replay.hdf5", algo.replay_buffer, 2, "Hopper-v5", algo.action_scaler
    )
    arrays, stored = read_d4rl_hdf5(tmp_path / "replay.hdf5")  # validates: no NaN, last row ends an episode
    assert stored["env_id"] == "Hopper-v5" and stored["transitions"] == 300
    ends = arrays["terminals"] | arrays["timeouts"]
    # inside an episode the next row continues it: both envs' steps were regrouped into runs
    inside = np.flatnonzero(~ends)
    np.testing.assert_array_equal(arrays["next_observations"][inside], arrays["observations"][inside + 1])
    finished = algo.episode_log
    assert int(arrays["terminals"].sum()) == sum(e["length"] < 30 for e in finished)
    cut = len(np.flatnonzero(ends)) - len(finished)  # each env's episode still running when training ended
    assert cut in (1, 2) and metadata["episodes"] == len(finished) + cut
    assert metadata["dataset_return_mean"] == pytest.approx(
        np.mean([e["return"] for e in finished]), rel=1e-5
    )


def test_actor_and_temperature_step_policy_frequency_times_every_policy_frequency_rounds():
    torch.manual_seed(0)
    algo = _bare_sac([])
    for _ in range(300):
        algo.explore_step(random_actions=True)
    optimizer = algo.configure_optimizers()

    def params():
        return [
            torch.cat([p.detach().flatten().clone() for p in m.parameters()])
            for m in (algo.actor, algo.critic, algo.target_critic)
        ] + [algo.log_alpha.detach().clone()]

    batch = algo.replay_buffer.sample((64,))
    before = params()
    losses = algo.update(batch, optimizer)
    first = params()
    assert "actor_loss" not in losses
    # round 1: critic step and target update only
    assert [torch.equal(x, y) for x, y in zip(before, first, strict=True)] == [True, False, False, True]
    losses = algo.update(batch, optimizer)
    assert {"actor_loss", "entropy", "alpha", "critic_loss"} <= set(losses)
    assert not any(torch.equal(x, y) for x, y in zip(first, params(), strict=True))
    # round 2: one shared critic + actor step, one actor-only step (2 actor steps, CleanRL's compensation)
    steps = {id(p): s["step"] for p, s in optimizer.state.items()}
    assert steps[id(next(algo.critic.parameters()))] == 2
    assert steps[id(next(algo.actor.parameters()))] == 2
    assert algo.log_alpha.item() < 0  # entropy above target at init (std ~1): alpha went down
    algo.envs.close()


def test_short_sac_run_on_pendulum_learns_and_checkpoint_reproduces_it(tmp_path, data_dir):
    cfg = small_train_config(
        tmp_path,
        data_dir,
        [
            *SMALL,
            "algo.total_timesteps=3000",
            "algo.learning_starts=500",
            "eval.every_n_updates=100000",
            f"algo.replay_dataset_path={tmp_path / 'replay.hdf5'}",
        ],
    )
    _, results = train(cfg)
    assert results["env_steps"] == 3000
    # the whole run as a D4RL-format file: 15 Pendulum episodes of 200 steps, each ended by its time limit
    replay, _ = read_d4rl_hdf5(tmp_path / "replay.hdf5")
    assert len(replay["rewards"]) == 3000 and replay["timeouts"].sum() == 15 and not replay["terminals"].any()
    # actions in env units, as offline algos read them: Pendulum's [-2, 2], not the buffer's [-1, 1]
    assert 1.5 < np.abs(replay["actions"]).max() <= 2.0
    # a second run never overwrites that file: it stops before training, naming the option
    before = (tmp_path / "replay.hdf5").read_bytes()
    again = small_train_config(
        tmp_path / "again", data_dir, [*SMALL, f"algo.replay_dataset_path={tmp_path / 'replay.hdf5'}"]
    )
    with pytest.raises(ConfigError, match=r"algo.replay_dataset_path=.*replay.hdf5: file exists"):
        train(again)
    assert (tmp_path / "replay.hdf5").read_bytes() == before
    # nor trains for nothing: a path that cannot take the file stops it before training too
    blocked = small_train_config(
        tmp_path / "blocked",
        data_dir,
        [*SMALL, f"algo.replay_dataset_path={tmp_path / 'replay.hdf5' / 'r.hdf5'}"],
    )
    with pytest.raises(
        OutputError, match=r"algo.replay_dataset_path=.*: cannot write there \(.*replay.hdf5 is a file"
    ):
        train(blocked)
    assert not (tmp_path / "blocked" / "run" / "checkpoints").exists()
    start = results["eval_history"][0]
    assert start["env_steps"] == 0
    assert results["eval_return_mean"] > start["eval/return_mean"] + 500, results["eval_history"]
    assert results["eval_return_mean"] > -700
    # the checkpoint alone rebuilds the policy: same deterministic actions, same evaluation
    algo, env, _ = load_policy(results["checkpoint"])
    again = rollout_episodes(algo, env, cfg.eval.episodes, cfg.eval.seed)
    assert again.return_mean == pytest.approx(results["eval_return_mean"], rel=1e-5)


@pytest.mark.parametrize("save_buffer", [True, False])
def test_resume_continues_env_steps_and_replay_buffer(tmp_path, data_dir, save_buffer):
    common = [
        *SMALL,
        "algo.learning_starts=100",
        "algo.batch_size=64",
        f"algo.checkpoint_replay_buffer={str(save_buffer).lower()}",
    ]
    first = small_train_config(tmp_path / "a", data_dir, [*common, "algo.total_timesteps=400"])
    _, results = train(first)
    ckpt = torch.load(results["checkpoint"], map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert int(state["env_steps"]) == 400 and int(state["update_rounds"]) == 300
    assert (REPLAY_BUFFER_KEY in ckpt) == save_buffer

    second = small_train_config(
        tmp_path / "b", data_dir, [*common, "algo.total_timesteps=600", f"ckpt_path={results['checkpoint']}"]
    )
    _, resumed = train(second)
    assert resumed["env_steps"] == 600
    ckpt2 = torch.load(resumed["checkpoint"], map_location="cpu", weights_only=False)
    # learning had started: every resumed env step did an update round (no new warm-up)
    if save_buffer:
        assert int(ckpt2["state_dict"]["update_rounds"]) == 500
        buffer = ckpt2[REPLAY_BUFFER_KEY]
        assert buffer["size"] == 600
        # the first 400 transitions are the first run's
        torch.testing.assert_close(
            buffer["data"]["observations"][:400], ckpt[REPLAY_BUFFER_KEY]["data"]["observations"]
        )
        # continued with a smaller algo.buffer_size: it keeps the newest 500 transitions (the larger
        # saved buffer used to end the run in a ValueError traceback, as did a budget already spent)
        smaller = small_train_config(
            tmp_path / "c",
            data_dir,
            [
                *common,
                "algo.total_timesteps=700",
                "algo.buffer_size=500",
                f"ckpt_path={resumed['checkpoint']}",
            ],
        )
        _, continued = train(smaller)
        assert continued["env_steps"] == 700
        newest = torch.load(continued["checkpoint"], map_location="cpu", weights_only=False)[
            REPLAY_BUFFER_KEY
        ]
        assert newest["size"] == 500 and newest["added"] == 700
        spent = small_train_config(
            tmp_path / "d",
            data_dir,
            [*common, "algo.total_timesteps=400", f"ckpt_path={resumed['checkpoint']}"],
        )
        _, unchanged = train(spent)
        assert unchanged["env_steps"] == 600 and unchanged["train_steps"] == resumed["train_steps"]
        kept = torch.load(unchanged["checkpoint"], map_location="cpu", weights_only=False)[REPLAY_BUFFER_KEY]
        assert kept["size"] == 600
    else:
        # an empty buffer first refills learning_starts (100) transitions of the current policy
        assert int(ckpt2["state_dict"]["update_rounds"]) == 300 + 200 - 99


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_continuation_that_ends_inside_the_refill_warns(
    tmp_path, data_dir, caplog, monkeypatch, world_size
):
    """Resuming a SAC run (no saved buffer) for fewer env steps than the refill ran them, did no update
    and came out with the checkpoint's policy, in silence: the user saw the same eval return again.
    world_size=2 (rank 0 of a trainer=ddp run, simulated in one process): each rank refills its own buffer
    while env_steps counts both ranks' steps, so 150 env steps left (75 per rank) refill nothing either;
    the warning compared them with one rank's 100 and stayed silent."""
    common = [*SMALL, "algo.learning_starts=100", "algo.batch_size=64", "eval.every_n_updates=100000"]
    _, first = train(small_train_config(tmp_path / "a", data_dir, [*common, "algo.total_timesteps=150"]))
    total = 150 + 50 * (2 * world_size - 1)  # 50 or 150 env steps left
    second = small_train_config(
        tmp_path / "b",
        data_dir,
        [*common, f"algo.total_timesteps={total}", f"ckpt_path={first['checkpoint']}"],
    )
    if world_size > 1:
        fit_start = OnlineAlgorithm.on_fit_start

        def as_rank_zero_of_two(self):
            fit_start(self)
            self.world_size = world_size

        monkeypatch.setattr(OnlineAlgorithm, "on_fit_start", as_rank_zero_of_two)
    with caplog.at_level("WARNING", logger="vla_hydra.algos.sac"):
        _, resumed = train(second)
    assert resumed["env_steps"] == total and resumed["train_steps"] == first["train_steps"]
    per_process = " on each of the 2 processes (200 env steps)" if world_size > 1 else ""
    assert (
        f"algo.total_timesteps={total}: resumed at env step 150 from a checkpoint without the replay buffer, "
        f"which first refills 100 transitions of the current policy{per_process}; the {total - 150} env steps "
        "left end before that"
    ) in caplog.text


BEHAVIOR_POLICIES = ASSETS_DIR / "behavior_policies"


@pytest.mark.parametrize(
    "file, env_id, min_score",
    [
        ("hopper_sac", "Hopper-v5", 15),
        ("halfcheetah_sac", "HalfCheetah-v5", 15),
        ("walker2d_sac", "Walker2d-v5", 15),
        ("hopper_sac_expert", "Hopper-v5", 90),
        ("walker2d_sac_expert", "Walker2d-v5", 100),
        ("halfcheetah_sac_expert", "HalfCheetah-v5", 70),
    ],
)
def test_shipped_behavior_policy_loads_and_scores_as_recorded(file, env_id, min_score):
    path = BEHAVIOR_POLICIES / f"{file}.ckpt"
    assert path.stat().st_size < 3_000_000  # inference checkpoint: no optimizer state
    algo, env, config = load_policy(path)
    assert env.id == env_id and config.algo._target_ == "vla_hydra.algos.sac.SAC"
    result = rollout_episodes(algo, env, 3, seed=100000)
    # D4RL-normalised: random policy = 0, D4RL's expert = 100; the README records each policy's
    # 20-episode score (medium policies 43-51, the experts 99.3, 116.3 and HalfCheetah's 77.9)
    assert result.normalized_score > min_score, result.returns


def test_a_budget_inside_the_random_warm_up_still_leaves_a_checkpoint(tmp_path, data_dir):
    """No gradient update happens (200 env steps < learning_starts), so Lightning saves nothing itself;
    train() still writes last.ckpt, and eval loads it."""
    cfg = small_train_config(tmp_path, data_dir, [*SMALL, "algo.total_timesteps=200"])
    _, results = train(cfg)
    assert results["train_steps"] == 0 and results["env_steps"] == 200
    assert Path(results["checkpoint"]).name == "last.ckpt"
    algo, _, _ = load_policy(results["checkpoint"])
    assert int(algo.env_steps) == 200


def test_a_buffer_smaller_than_a_batch_is_refused_before_the_run(tmp_path, data_dir):
    """algo.buffer_size=200 with batch 256 ran every env step, never updated once (updates wait for a full
    batch in the buffer) and ended with exit 0 and an untrained policy."""
    cfg = small_train_config(tmp_path, data_dir, [*SMALL, "algo.buffer_size=200", "algo.total_timesteps=700"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == (
        "algo.buffer_size=200: smaller than algo.batch_size=256, so no batch could ever be drawn; "
        "expected >= algo.batch_size"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_resumed_run_writes_every_transition_of_the_run_into_its_replay_dataset(tmp_path, data_dir):
    """Without the buffer in its checkpoint, a resumed run's replay dataset silently lost every transition
    from before the interruption (4300 of 6000 written); replay_dataset_path now keeps the buffer."""
    common = [*SMALL, "algo.learning_starts=300", "eval.every_n_updates=100000"]
    first = small_train_config(
        tmp_path / "a",
        data_dir,
        [*common, "algo.total_timesteps=600", f"algo.replay_dataset_path={tmp_path / 'a.hdf5'}"],
    )
    _, a = train(first)
    resumed = small_train_config(
        tmp_path / "b",
        data_dir,
        [
            *common,
            "algo.total_timesteps=1200",
            f"algo.replay_dataset_path={tmp_path / 'b.hdf5'}",
            f"ckpt_path={a['checkpoint']}",
        ],
    )
    _, b = train(resumed)
    assert b["env_steps"] == 1200
    replay, _ = read_d4rl_hdf5(tmp_path / "b.hdf5")
    assert len(replay["rewards"]) == 1200
    first_part, _ = read_d4rl_hdf5(tmp_path / "a.hdf5")
    # the resumed run's file begins with the first run's transitions
    assert (replay["observations"][:600] == first_part["observations"]).all()
    # another env count would splice the envs' episodes in the file: refused as the fit starts
    other_count = small_train_config(
        tmp_path / "c",
        data_dir,
        [
            *common,
            "algo.total_timesteps=1200",
            "env.num_envs=2",
            f"algo.replay_dataset_path={tmp_path / 'c.hdf5'}",
            f"ckpt_path={a['checkpoint']}",
        ],
    )
    with pytest.raises(
        ConfigError, match=r"env.num_envs=2: the checkpoint's replay buffer was filled by 1 envs"
    ):
        train(other_count)
    assert not (tmp_path / "c.hdf5").exists()


def test_a_run_inside_its_random_warm_up_reports_its_env_step_throughput(tmp_path, data_dir):
    """total_timesteps below learning_starts: no gradient update, but the env stepped; results.json used
    to leave both env-step rates null."""
    cfg = small_train_config(
        tmp_path,
        data_dir,
        [*SMALL, "algo.total_timesteps=400", "algo.learning_starts=5000", "eval.every_n_updates=100000"],
    )
    _, results = train(cfg)
    assert results["env_steps"] == 400 and results["train_steps"] == 0
    for key in ("train_env_steps_per_s", "train_env_steps_per_cpu_s"):
        assert isinstance(results[key], float) and results[key] > 0, (key, results[key])


def test_a_budget_below_one_batch_says_no_update_was_made(tmp_path, data_dir, caplog):
    """learning_starts below the budget but batch_size above it: updates wait for a full batch, so the run
    ended with its initial policy and said nothing (only a budget inside learning_starts warned)."""
    cfg = small_train_config(
        tmp_path,
        data_dir,
        [*SMALL, "algo.total_timesteps=200", "algo.learning_starts=100", "eval.every_n_updates=100000"],
    )
    with caplog.at_level("WARNING", logger="vla_hydra.algos.sac"):
        _, results = train(cfg)
    assert results["env_steps"] == 200 and results["train_steps"] == 0
    assert (
        "algo.total_timesteps=200 < algo.batch_size=256: the replay buffer never holds a batch, so no "
        "gradient update; the policy stays as initialised"
    ) in caplog.text


def test_a_buffer_of_one_batch_filled_by_several_envs_still_updates(tmp_path, data_dir):
    """algo.buffer_size=256 = algo.batch_size passed the buffer check, but the ring was cut to a multiple
    of env.num_envs=3 below it (255 rows): no batch was ever drawn, 1200 env steps without an update."""
    overrides = [
        "env.num_envs=3",
        "algo.buffer_size=256",
        "algo.total_timesteps=600",
        "algo.learning_starts=100",
    ]
    cfg = small_train_config(tmp_path, data_dir, [*SMALL, *overrides, "eval.every_n_updates=100000"])
    _, results = train(cfg)
    # one round per vector step once the ring holds a batch (vector step 86 of 200): 115 rounds,
    # each a critic step, every second one also two actor steps
    assert results["env_steps"] == 600 and results["train_steps"] == 172


def test_a_replay_dataset_from_an_overwritten_ring_holds_only_whole_episodes(tmp_path):
    """algo.buffer_size below the run's env steps: each env's oldest stored steps are the end of an
    episode whose start was overwritten; they used to be written as a short complete episode (its return
    in dataset_return_mean and in IQL's/CQL's return range)."""
    torch.manual_seed(0)
    algo = _bare_sac(["env=hopper", "env.max_episode_steps=30", "env.num_envs=2", "algo.buffer_size=100"])
    for _ in range(150):  # 300 rows into a ring of 100
        algo.explore_step(random_actions=True)
    algo.envs.close()
    assert algo.replay_buffer.overwritten
    metadata = write_replay_dataset(
        tmp_path / "replay.hdf5", algo.replay_buffer, 2, "Hopper-v5", algo.action_scaler
    )
    arrays, _ = read_d4rl_hdf5(tmp_path / "replay.hdf5")
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    finished = {(e["length"], round(e["return"], 3)) for e in algo.episode_log}
    episodes = [
        (int(end - start + 1), round(float(arrays["rewards"][start : end + 1].sum()), 3))
        for start, end in zip(starts, ends, strict=True)
    ]
    # every episode in the file but each env's last (cut by the end of training) is one the env finished
    unfinished = [ep for ep in episodes if ep not in finished]
    assert len(unfinished) <= 2 and len(episodes) > 2, (episodes, finished)
    assert len(arrays["rewards"]) < 100 and metadata["transitions"] == len(arrays["rewards"])
    whole = [r for length, r in episodes if (length, r) in finished]
    assert metadata["dataset_return_mean"] == pytest.approx(np.mean(whole), abs=1e-3)


class _StateLogProbActor(torch.nn.Module):
    """sample(x): zero actions with log pi = -x[1]."""

    def sample(self, x):
        return torch.zeros(x.shape[0], 1), -x[:, 1]


def test_update_wires_the_soft_target_at_next_states_and_cuts_at_terminals_only():
    """The critic loss of an update on stand-in networks: actions and log pi sampled at s', the target
    critics' min, the discount, and no bootstrap at terminals (a time limit bootstraps)."""
    algo = _bare_sac([])
    algo.gamma = 0.5
    algo.critic, algo.target_critic, algo.actor = StateCritics(0.0), StateCritics(1.0), _StateLogProbActor()
    batch = {
        "observations": torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]),
        "actions": torch.tensor([[1.0], [-1.0]]),
        "rewards": torch.tensor([1.0, 2.0]),
        "next_observations": torch.tensor([[0.0, 3.0, 0.0], [0.0, 5.0, 0.0]]),
        "terminals": torch.tensor([0.0, 1.0]),
        "timeouts": torch.tensor([1.0, 0.0]),
    }
    losses = algo.update(batch, torch.optim.SGD(algo.parameters(), lr=0.0))  # round 1: critic step only
    # alpha = 1; min target Q(s', .) = [3 + 1, 5 + 1] = [4, 6]; log pi(a'|s') = -[3, 5]: soft values [7, 11]
    # targets [1 + 0.5 * 7, 2] = [4.5, 2]; Q(s, a) = [1, 2] and [2, 3]
    # MSEs ((1 - 4.5)^2 + 0) / 2 = 6.125 and ((2 - 4.5)^2 + (3 - 2)^2) / 2 = 3.625, summed
    assert losses["critic_loss"].item() == pytest.approx(9.75)
    assert losses["q_mean"].item() == pytest.approx(2.0)
    algo.envs.close()
