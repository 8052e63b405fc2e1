"""PPO env steps/s: train.py's Lightning path vs two plain PyTorch loops with no Lightning, alternated
in one process; plus the env steps PPO needs to solve CartPole-v1 through train.py.

- "same iteration": a bare loop calling the algorithm's own `train_iteration` (measures what Lightning
  adds around identical work);
- "CleanRL-style": PPO written as a plain script is usually written (CleanRL's ppo.py structure: the
  value of each observation computed during the rollout, NumPy minibatch shuffling, per-minibatch KL /
  clip-fraction statistics read with .item(), explained variance per iteration, default Adam), on the same
  networks (same initialisation), vector envs and hyper-parameters (what a user switching compares).

    python benchmarks/bench_ppo.py [--steps 50000] [--rounds 6] [--solve-seeds 1] [--solve-steps 500000]
                                   [--threads 1]

"Solved" = first periodic evaluation (10 episodes) with mean return >= 475 (CleanRL's budget: 500k
steps). JSON lines to stdout, appended to benchmarks/results/bench_ppo.jsonl.
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
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from benchmarks.common import bench_config, data_dir, emit, run_header  # noqa: E402
from vla_hydra.train import train  # noqa: E402

SOLVED_RETURN = 475.0


def config(out: Path, steps: int, threads: int, extra: list[str] | None = None):
    return bench_config(
        "ppo",
        out,
        data_dir(),
        updates=-1,
        threads=threads,
        data="rollouts",
        extra=["env=cartpole", f"algo.total_timesteps={steps}", *(extra or [])],
    )


def plain_loop_env_steps_per_s(cfg) -> tuple[float, float]:
    """The PPO iteration driven by a bare Python loop: envs, optimizer and iterations, nothing else."""
    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    algo._direct_backward = True  # no trainer: plain loss.backward()
    optimizer = algo.configure_optimizers()
    algo.envs = env.make_training_vector()
    algo.obs, _ = algo.envs.reset(seed=[cfg.seed + i for i in range(env.num_envs)])
    try:
        algo.train_iteration(optimizer)  # warm-up iteration (allocations), not timed
        start_steps, start, start_cpu = int(algo.env_steps), time.perf_counter(), time.process_time()
        while int(algo.env_steps) < algo.total_timesteps:
            algo.train_iteration(optimizer)
        steps = int(algo.env_steps) - start_steps
        return steps / (time.perf_counter() - start), steps / (time.process_time() - start_cpu)
    finally:
        algo.envs.close()


def cleanrl_style_env_steps_per_s(cfg) -> tuple[float, float]:
    """PPO as a plain script (CleanRL ppo.py's loop), same nets/envs/hyper-parameters as `cfg`.

    As in CleanRL, an episode end (termination or truncation) cuts the bootstrap; discrete actions."""
    import numpy as np
    from torch import nn

    env = instantiate(cfg.env)
    algo = instantiate(cfg.algo, _partial_=True)(spec=env.spec(), model=instantiate(cfg.model))
    actor, critic = algo.actor, algo.critic  # the same networks and initialisation as the algo's
    T, N = algo.num_steps, env.num_envs
    batch_size, minibatch_size = T * N, (T * N) // algo.num_minibatches
    num_iterations = algo.total_timesteps // batch_size
    params = list(actor.parameters()) + list(critic.parameters())
    optimizer = torch.optim.Adam(params, lr=algo.lr, eps=1e-5)
    envs = env.make_training_vector()
    obs_shape = envs.single_observation_space.shape
    obs_buf, logprobs = torch.zeros((T, N, *obs_shape)), torch.zeros((T, N))
    actions, rewards = torch.zeros((T, N)), torch.zeros((T, N))
    dones, values = torch.zeros((T, N)), torch.zeros((T, N))
    next_obs, _ = envs.reset(seed=[cfg.seed + i for i in range(N)])
    next_obs, next_done = torch.Tensor(next_obs), torch.zeros(N)

    def iteration(index: int) -> None:
        nonlocal next_obs, next_done
        for group in optimizer.param_groups:
            group["lr"] = (1.0 - index / num_iterations) * algo.lr
        for step in range(T):
            obs_buf[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob = actor.sample(next_obs)
                values[step] = critic(next_obs).flatten()
            actions[step], logprobs[step] = action, logprob
            next_obs_np, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs = torch.Tensor(next_obs_np)
            next_done = torch.Tensor(np.logical_or(terminated, truncated).astype(np.float32))
        with torch.no_grad():
            next_value = critic(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(T)):
                if t == T - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + algo.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (
                    delta + algo.gamma * algo.gae_lambda * nextnonterminal * lastgaelam
                )
            returns = advantages + values
        b_obs, b_logprobs = obs_buf.reshape((-1, *obs_shape)), logprobs.reshape(-1)
        b_actions, b_advantages = actions.reshape(-1), advantages.reshape(-1)
        b_returns, b_values = returns.reshape(-1), values.reshape(-1)
        b_inds, clipfracs = np.arange(batch_size), []
        for _ in range(algo.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb = b_inds[start : start + minibatch_size]
                newlogprob, entropy = actor.log_prob_entropy(b_obs[mb], b_actions.long()[mb])
                newvalue = critic(b_obs[mb]).view(-1)
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > algo.clip_coef).float().mean().item()]
                mb_adv = b_advantages[mb]
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - algo.clip_coef, 1 + algo.clip_coef)
                ).mean()
                v_unclipped = (newvalue - b_returns[mb]) ** 2
                v_clipped = b_values[mb] + torch.clamp(
                    newvalue - b_values[mb], -algo.clip_coef, algo.clip_coef
                )
                v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                loss = pg_loss - algo.ent_coef * entropy.mean() + v_loss * algo.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, algo.max_grad_norm)
                optimizer.step()
        y_pred, y_true = b_values.numpy(), b_returns.numpy()
        var_y = np.var(y_true)
        _ = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y  # explained variance
        _ = (approx_kl.item(), np.mean(clipfracs))

    try:
        iteration(0)  # warm-up iteration (allocations), not timed
        start, start_cpu = time.perf_counter(), time.process_time()
        for index in range(1, num_iterations):
            iteration(index)
        steps = (num_iterations - 1) * batch_size
        return steps / (time.perf_counter() - start), steps / (time.process_time() - start_cpu)
    finally:
        envs.close()


def solve_config(out: Path, seed: int, threads: int, steps: int | None = None):
    """The default `algo=ppo env=cartpole` run (CleanRL's 500k budget unless `steps`), evaluated every 20
    iterations."""
    from omegaconf import open_dict

    from vla_hydra.core.config import compose_config

    cfg = compose_config(
        "train",
        [
            "algo=ppo",
            "env=cartpole",
            f"seed={seed}",
            f"torch_threads={threads}",
            "eval.every_n_updates=320",  # 20 iterations x 16 updates = every 10240 env steps
            "trainer.enable_progress_bar=false",
            *([f"algo.total_timesteps={steps}"] if steps else []),
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def steps_to_solve(results: dict) -> int | None:
    for entry in results["eval_history"]:
        if entry["eval/return_mean"] >= SOLVED_RETURN:
            return entry["env_steps"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="env steps per timed run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--solve-seeds", type=int, default=1, help="seeds of the 500k-step solve run (0 = skip)"
    )
    parser.add_argument(
        "--solve-steps", type=int, default=None, help="env-step budget of the solve runs (default 500k)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp), args.steps, args.threads)
    batch = int(cfg.algo.num_steps) * int(cfg.env.num_envs)
    if args.steps < 2 * batch:  # each path times from the end of its first iteration
        parser.error(f"--steps {args.steps}: needs at least {2 * batch} (2 iterations of {batch} env steps)")
    header = run_header(args.threads, bench="ppo_cartpole")
    lightning, plain, lightning_cpu, plain_cpu, cleanrl, cleanrl_cpu = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):

            def run_lightning(r=r):
                cfg = config(
                    Path(tmp) / f"l{r}", args.steps, args.threads, ["callbacks.model_checkpoint=null"]
                )
                _, results = train(cfg)
                lightning.append(results["train_env_steps_per_s"])
                lightning_cpu.append(results["train_env_steps_per_cpu_s"])

            def run_plain(r=r):
                wall, cpu = plain_loop_env_steps_per_s(config(Path(tmp) / f"p{r}", args.steps, args.threads))
                plain.append(wall)
                plain_cpu.append(cpu)

            def run_cleanrl(r=r):
                wall, cpu = cleanrl_style_env_steps_per_s(
                    config(Path(tmp) / f"c{r}", args.steps, args.threads)
                )
                cleanrl.append(wall)
                cleanrl_cpu.append(cpu)

            # rotate which path goes first, so none always runs on a warmer (or busier) machine
            paths = [run_lightning, run_plain, run_cleanrl]
            for run in paths[r % 3 :] + paths[: r % 3]:
                run()
        same_iteration, cleanrl_style = "same-iteration bare loop", "CleanRL-style plain PPO script"
        for metric, ours, reference, reference_name in (
            ("env_steps_per_s", lightning, plain, same_iteration),
            ("env_steps_per_cpu_s", lightning_cpu, plain_cpu, same_iteration),
            ("env_steps_per_s_vs_cleanrl_style", lightning, cleanrl, cleanrl_style),
            ("env_steps_per_cpu_s_vs_cleanrl_style", lightning_cpu, cleanrl_cpu, cleanrl_style),
        ):
            emit(
                "bench_ppo",
                {
                    **header,
                    "metric": metric,
                    # plain_*: the reference named here (the keys stay, for earlier results files)
                    "reference": reference_name,
                    "env_steps": args.steps,
                    "lightning_median": statistics.median(ours),
                    "plain_median": statistics.median(reference),
                    "ratio": statistics.median(ours) / statistics.median(reference),
                    "lightning_runs": ours,
                    "plain_runs": reference,
                },
            )
        for seed in range(args.solve_seeds):
            _, results = train(solve_config(Path(tmp) / f"solve{seed}", seed, args.threads, args.solve_steps))
            emit(
                "bench_ppo",
                {
                    **header,
                    "metric": "steps_to_solve",
                    "seed": seed,
                    "steps_to_solve": steps_to_solve(results),
                    "run_wall_seconds": results[
                        "wall_seconds"
                    ],  # the whole 500k budget, not the time to solve
                    "final_eval_return": results["eval_return_mean"],
                },
            )


if __name__ == "__main__":
    main()
