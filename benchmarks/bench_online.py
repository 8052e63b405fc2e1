"""Online RL speed: env steps/s through train.py's Lightning path vs a plain PyTorch loop of the same
algorithm (same networks, env, update) measured alternately in one process, and env steps to solve.

    python benchmarks/bench_online.py [--algos sac] [--rounds 2] [--threads 1] [--device cpu|cuda]
                                      [--skip-solve]

One function per algorithm (`BENCHES`); each emits JSON lines to stdout, appended to
benchmarks/results/bench_online.jsonl.

SAC (Pendulum-v1, CleanRL defaults unless noted):
- `sac_env_steps_per_s`: `--sac-steps` env steps with `--sac-learning-starts` random ones first (both
  paths identical; each path's clock starts where train.py's does, after its first Lightning step of
  `updates_per_step` env steps), periodic evaluation off; per wall second and per CPU second of the process (the
  latter is what to compare on a machine shared with other jobs). The plain loop is CleanRL's shape: act, step the env,
  store in the replay buffer, one update round per env step, using the module's own `explore_step`
  and `update` with no Trainer around them.
- `sac_env_steps_per_s_vs_cleanrl_style`: the same Lightning runs against SAC written as a plain
  script (CleanRL's loop structure: NumPy replay buffer, separate twin-Q MLPs, three optimizers,
  per-parameter Polyak updates) on the same actor, env and hyper-parameters; the three paths rotate
  which goes first per round.
- `sac_steps_to_solve`: the default config (learning_starts 5000) evaluated every `--solve-eval-every`
  updates (10 episodes); stops at the first evaluation with mean return >= -250 (budget `--solve-steps`,
  20k).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# isort: off
import vla_hydra.core.runtime  # noqa: E402, F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: on
import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from benchmarks.common import bench_config, data_dir, emit, run_header  # noqa: E402
from vla_hydra.train import train  # noqa: E402

NAME = "bench_online"
PENDULUM_SOLVED = -250.0


class StopWhenSolved(L.Callback):
    """Stops training after the first periodic evaluation whose mean return reaches `threshold`."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from vla_hydra.training.callbacks import PolicyEvaluation

        for callback in trainer.callbacks:
            if isinstance(callback, PolicyEvaluation) and callback.history:
                if callback.history[-1]["eval/return_mean"] >= self.threshold:
                    trainer.should_stop = True


def online_config(algo: str, env: str, out: Path, threads: int, device: str, extra: list[str]):
    """train.py's config for an online run: budget in env steps, no gradient-update limit."""
    return bench_config(
        algo,
        out,
        data_dir(),
        updates=-1,
        threads=threads,
        device=device,
        data="rollouts",
        extra=[f"env={env}", *extra],
    )


def sac_plain_loop_env_steps_per_s(cfg, device: str) -> float:
    """CleanRL-shaped loop around the same SAC module: no Trainer, no callbacks, no logging."""
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model), stats=None)
    algo.to(device)
    algo._direct_backward = True  # no trainer: plain loss.backward()
    optimizer = algo.configure_optimizers()
    algo.envs = env.make_training_vector()
    algo.obs, _ = algo.envs.reset(seed=[cfg.seed + i for i in range(algo.num_envs)])
    algo.replay_buffer = algo.make_replay_buffer()
    # train.py's rate starts after its first Lightning step (updates_per_step vector env steps, random
    # ones while inside learning_starts): the same steps run untimed here, so both time the same mix
    untimed = first_lightning_step_env_steps(cfg)
    steps = 0
    while steps < algo.total_timesteps:
        if steps == untimed:
            start, cpu_start = time.perf_counter(), time.process_time()
        algo.explore_step(random_actions=steps < algo.learning_starts)
        steps += algo.num_envs
        if steps > algo.learning_starts and len(algo.replay_buffer) >= algo.batch_size:
            algo.update(algo.replay_buffer.sample((algo.batch_size,)), optimizer)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    algo.envs.close()
    return (steps - untimed) / elapsed, (steps - untimed) / cpu


def first_lightning_step_env_steps(cfg) -> int:
    """Env steps of train.py's first Lightning step, which its throughput figures leave out."""
    return int(cfg.algo.updates_per_step) * int(cfg.env.num_envs)


def sac_cleanrl_style_env_steps_per_s(cfg) -> tuple[float, float]:
    """SAC written as a plain script usually is (CleanRL sac_continuous_action.py's loop): separate
    twin-Q MLPs and target copies, a NumPy replay buffer sampled into new tensors each update, three
    Adam optimizers, an actor-only backward per policy step, the temperature's own forward/backward,
    parameter-by-parameter Polyak updates and `.item()` logging every 100 steps. Same actor network,
    env and hyper-parameters as `cfg`; CPU only. Returns (env steps/s, env steps per CPU-second)."""
    import numpy as np
    import torch.nn.functional as F
    from torch import nn

    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model), stats=None)
    actor, spec, hp = algo.actor, algo.spec, algo
    obs_dim, act_dim = int(np.prod(spec.observation_shape)), spec.action_dim
    hidden = list(cfg.algo.critic_hidden_dims)

    def q_network() -> nn.Module:
        dims, layers = [obs_dim + act_dim, *hidden], []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(dims[-1], 1))

    qf1, qf2 = q_network(), q_network()
    qf1_target, qf2_target = q_network(), q_network()
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=hp.q_lr)
    actor_optimizer = torch.optim.Adam(list(actor.parameters()), lr=hp.policy_lr)
    log_alpha = torch.zeros(1, requires_grad=True)
    a_optimizer = torch.optim.Adam([log_alpha], lr=hp.q_lr)
    alpha = log_alpha.exp().item()
    low, high = np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32)
    capacity = hp.total_timesteps
    rb = {
        "obs": np.zeros((capacity, obs_dim), np.float32),
        "next_obs": np.zeros((capacity, obs_dim), np.float32),
        "actions": np.zeros((capacity, act_dim), np.float32),
        "rewards": np.zeros(capacity, np.float32),
        "dones": np.zeros(capacity, np.float32),
    }
    envs = env.make_training_vector(1)
    obs, _ = envs.reset(seed=[cfg.seed])
    actor_loss = torch.zeros(())
    untimed = first_lightning_step_env_steps(cfg)  # as the plain loop: the steps train.py does not time
    for global_step in range(hp.total_timesteps):
        if global_step == untimed:
            start, cpu_start = time.perf_counter(), time.process_time()
        if global_step < hp.learning_starts:
            actions = np.random.uniform(-1.0, 1.0, (1, act_dim)).astype(np.float32)
        else:
            actions, _ = actor.sample(torch.Tensor(obs))
            actions = actions.detach().cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(
            low + (actions + 1.0) * 0.5 * (high - low)
        )
        real_next_obs = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        rb["obs"][global_step], rb["next_obs"][global_step] = obs[0], real_next_obs[0]
        rb["actions"][global_step], rb["rewards"][global_step] = actions[0], rewards[0]
        rb["dones"][global_step] = terminations[0]
        obs = next_obs
        if global_step > hp.learning_starts:
            idx = np.random.randint(0, global_step + 1, size=hp.batch_size)
            b_obs, b_next = torch.tensor(rb["obs"][idx]), torch.tensor(rb["next_obs"][idx])
            b_act, b_rew = torch.tensor(rb["actions"][idx]), torch.tensor(rb["rewards"][idx])
            b_done = torch.tensor(rb["dones"][idx])
            with torch.no_grad():
                next_actions, next_log_pi = actor.sample(b_next)
                next_in = torch.cat([b_next, next_actions], 1)
                min_next = torch.min(qf1_target(next_in), qf2_target(next_in)).view(-1) - alpha * next_log_pi
                next_q = b_rew + (1 - b_done) * hp.gamma * min_next
            sa = torch.cat([b_obs, b_act], 1)
            qf1_a, qf2_a = qf1(sa).view(-1), qf2(sa).view(-1)
            qf_loss = F.mse_loss(qf1_a, next_q) + F.mse_loss(qf2_a, next_q)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()
            if global_step % hp.policy_frequency == 0:
                for _ in range(hp.policy_frequency):
                    pi, log_pi = actor.sample(b_obs)
                    spi = torch.cat([b_obs, pi], 1)
                    actor_loss = (alpha * log_pi - torch.min(qf1(spi), qf2(spi)).view(-1)).mean()
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()
                    with torch.no_grad():
                        _, log_pi = actor.sample(b_obs)
                    alpha_loss = (-log_alpha.exp() * (log_pi + hp.target_entropy)).mean()
                    a_optimizer.zero_grad()
                    alpha_loss.backward()
                    a_optimizer.step()
                    alpha = log_alpha.exp().item()
            if global_step % hp.target_network_frequency == 0:
                for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                    for param, target_param in zip(net.parameters(), target.parameters(), strict=True):
                        target_param.data.copy_(hp.tau * param.data + (1 - hp.tau) * target_param.data)
            if global_step % 100 == 0:
                _ = (qf_loss.item(), qf1_a.mean().item(), actor_loss.item(), alpha)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    envs.close()
    return (hp.total_timesteps - untimed) / elapsed, (hp.total_timesteps - untimed) / cpu


def bench_sac(args, common: dict, work: Path) -> None:
    extra = [
        f"algo.total_timesteps={args.sac_steps}",
        f"algo.learning_starts={args.sac_learning_starts}",
        *args.override,
    ]
    # the plain loops write no checkpoints; neither does the timed Lightning path (as in bench_ppo.py)
    extra.append("callbacks.model_checkpoint=null")
    plain, lightning, plain_cpu, lightning_cpu, cleanrl, cleanrl_cpu = [], [], [], [], [], []
    for r in range(args.rounds):
        cfg = online_config("sac", "pendulum", work / f"sac{r}", args.threads, args.device, extra)
        first_step = first_lightning_step_env_steps(cfg)
        if int(cfg.algo.total_timesteps) < 2 * first_step:  # train.py times from the end of its first step
            raise SystemExit(
                f"error: --sac-steps {cfg.algo.total_timesteps}: SAC needs at least {2 * first_step}"
            )

        def run_plain(cfg=cfg):
            wall, cpu = sac_plain_loop_env_steps_per_s(cfg, args.device)
            plain.append(wall)
            plain_cpu.append(cpu)

        def run_cleanrl(cfg=cfg):
            if args.device == "cpu":
                wall, cpu = sac_cleanrl_style_env_steps_per_s(cfg)
                cleanrl.append(wall)
                cleanrl_cpu.append(cpu)

        def run_lightning(cfg=cfg):
            results = train(cfg)[1]
            lightning.append(results["train_env_steps_per_s"])
            lightning_cpu.append(results["train_env_steps_per_cpu_s"])

        # rotate which path goes first, so none always runs on a warmer (or busier) machine
        paths = [run_lightning, run_plain, run_cleanrl]
        for run in paths[r % 3 :] + paths[: r % 3]:
            run()
    emit(
        NAME,
        {
            **common,
            "bench": "sac_env_steps_per_s",
            "env": cfg.env.id,
            "env_steps": args.sac_steps,
            "learning_starts": args.sac_learning_starts,
            "update_rounds": args.sac_steps - args.sac_learning_starts,
            "batch_size": int(cfg.algo.batch_size),
            "updates_per_step": int(cfg.algo.updates_per_step),
            "rounds": args.rounds,
            "plain_loop_median": statistics.median(plain),
            "lightning_median": statistics.median(lightning),
            "ratio_lightning_over_plain": statistics.median(lightning) / statistics.median(plain),
            "plain_loop_all": plain,
            "lightning_all": lightning,
            # env steps per CPU-second of the process: robust to other jobs on a shared machine
            "plain_loop_cpu_median": statistics.median(plain_cpu),
            "lightning_cpu_median": statistics.median(lightning_cpu),
            "ratio_cpu_lightning_over_plain": statistics.median(lightning_cpu) / statistics.median(plain_cpu),
            "plain_loop_cpu_all": plain_cpu,
            "lightning_cpu_all": lightning_cpu,
        },
    )
    if cleanrl:
        emit(
            NAME,
            {
                **common,
                "bench": "sac_env_steps_per_s_vs_cleanrl_style",
                "env": cfg.env.id,
                "env_steps": args.sac_steps,
                "learning_starts": args.sac_learning_starts,
                "rounds": args.rounds,
                "cleanrl_style_median": statistics.median(cleanrl),
                "lightning_median": statistics.median(lightning),
                "ratio_lightning_over_cleanrl_style": statistics.median(lightning)
                / statistics.median(cleanrl),
                "cleanrl_style_cpu_median": statistics.median(cleanrl_cpu),
                "lightning_cpu_median": statistics.median(lightning_cpu),
                "ratio_cpu_lightning_over_cleanrl_style": statistics.median(lightning_cpu)
                / statistics.median(cleanrl_cpu),
                "cleanrl_style_all": cleanrl,
                "cleanrl_style_cpu_all": cleanrl_cpu,
            },
        )
    if args.skip_solve:
        return
    cfg = online_config(
        "sac",
        "pendulum",
        work / "sac_solve",
        args.threads,
        args.device,
        [
            f"algo.total_timesteps={args.solve_steps}",
            f"+callbacks.policy_eval={{_target_: vla_hydra.training.callbacks.PolicyEvaluation, "
            f"env: '${{env}}', every_n_updates: {args.solve_eval_every}, episodes: 10, seed: '${{eval.seed}}'}}",
            f"+callbacks.stop_when_solved={{_target_: benchmarks.bench_online.StopWhenSolved, "
            f"threshold: {PENDULUM_SOLVED}}}",
            *args.override,
        ],
    )
    _, results = train(cfg)
    solved = [h for h in results["eval_history"] if h["eval/return_mean"] >= PENDULUM_SOLVED]
    emit(
        NAME,
        {
            **common,
            "bench": "sac_steps_to_solve",
            "env": cfg.env.id,
            "threshold": PENDULUM_SOLVED,
            "budget": int(cfg.algo.total_timesteps),
            "learning_starts": int(cfg.algo.learning_starts),
            "eval_every_n_updates": args.solve_eval_every,
            "env_steps_to_solve": solved[0]["env_steps"] if solved else None,
            # the whole budget: training does not stop when solved
            "run_wall_seconds": results["wall_seconds"],
            "final_eval_return_mean": results["eval_return_mean"],
            "eval_history": [
                (h["env_steps"], round(h["eval/return_mean"], 1)) for h in results["eval_history"]
            ],
        },
    )


# one entry per online algorithm
BENCHES = {"sac": bench_sac}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default=",".join(BENCHES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sac-steps", type=int, default=3000, help="env steps per timed SAC run")
    parser.add_argument("--sac-learning-starts", type=int, default=1000)
    parser.add_argument("--solve-eval-every", type=int, default=500, help="updates between evaluations")
    parser.add_argument("--skip-solve", action="store_true", help="speed only, no steps-to-solve run")
    parser.add_argument("--solve-steps", type=int, default=20000, help="env-step budget of the solve run")
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = run_header(args.threads, args.device)
    work = Path(tempfile.mkdtemp(prefix="vla_bench_online_"))
    for algo in args.algos.split(","):
        if algo not in BENCHES:
            parser.error(f"--algos: no benchmark for {algo!r}; choose from {sorted(BENCHES)}")
        BENCHES[algo](args, common, work)


if __name__ == "__main__":
    main()
