"""Distributed strategies that run on a CPU: Lightning DDP with 2 gloo processes through the CLI, and
DeepSpeed's own ZeRO engine (DS_ACCELERATOR=cpu) with the settings conf/trainer/deepspeed.yaml gives
Lightning. Lightning's FSDP and DeepSpeed strategies need CUDA GPUs (documented in docs/clusters.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, compose_config, run_module


def _deepspeed_on_cpu(script: str, *args: str, port: int, ranks: int = 1) -> list[dict]:
    """Run `script` under DeepSpeed's CPU accelerator as `ranks` processes (gloo); each rank's last stdout
    line, parsed as JSON."""
    procs = []
    for rank in range(ranks):
        env = {
            **os.environ,
            "DS_ACCELERATOR": "cpu",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(ranks),
            "PYTHONPATH": str(ROOT),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(err[-2000:] for _, err in outputs)
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def _ddp_ranks(tmp_path, *overrides: str) -> tuple[list[dict], dict]:
    """A `trainer=ddp` run over 2 CPU processes: what each rank's ParameterDigest wrote, and results.json."""
    probe = tmp_path / "ranks"
    proc = run_module(
        "vla_hydra.train",
        "trainer=ddp",
        "eval.episodes=2",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.digest._target_=tests.cluster.probes.ParameterDigest",
        f"+callbacks.digest.path={probe}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    return ranks, json.loads((tmp_path / "run" / "results.json").read_text())


def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path, data_dir):
    ranks, results = _ddp_ranks(
        tmp_path,
        "trainer.max_steps=100",
        "eval.every_n_updates=100",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
    )
    for rank in ranks:
        assert (rank["world_size"], rank["global_step"], rank["strategy"]) == (2, 100, "DDPStrategy")
        assert rank["backend"] == "gloo"
        # BC's one loss reaches every parameter: DDP does not search for unused ones
        assert rank["find_unused_parameters"] is False
        # manual optimization goes through Lightning's manual_backward (DDP's gradient all-reduce)
        assert rank["direct_backward"] is False
    # each rank samples different minibatches (seed + rank): equal weights mean gradients were averaged
    assert ranks[0]["params"] == ranks[1]["params"]
    assert results["train_steps"] == 100


def test_ddp_policy_delay_algorithm_keeps_identical_weights(tmp_path, data_dir):
    """TD3+BC's critic-only updates between its delayed actor updates leave the actor out of their
    backward passes: DDP must look for unused parameters, and both ranks still end with the same weights
    (PyTorch's 'did not find any unused parameters' warning for such runs is its false positive)."""
    ranks, results = _ddp_ranks(
        tmp_path,
        "algo=td3bc",
        "algo.updates_per_step=5",  # blocks of 5 updates: odd blocks hold two actor updates, even ones three
        "trainer.max_steps=20",
        "callbacks.policy_eval=null",
        f"paths.data_dir={data_dir}",
    )
    for rank in ranks:
        assert (rank["world_size"], rank["global_step"]) == (2, 20)
        assert rank["find_unused_parameters"] is True
        assert rank["buffers"]["num_updates"] == [20]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert results["train_steps"] == 20


def test_ddp_resume_continues_every_ranks_random_streams(tmp_path, data_dir):
    """Each rank draws its own target-policy noise (decorrelate_rngs). The checkpoint held rank 0's RNG
    states alone, reseeded per rank on resume: a TD3+BC run continued with ckpt_path= ended with other
    weights than the uninterrupted one (return -1113.04 vs -1113.13 after 100 updates)."""
    steps = [
        "algo=td3bc",
        "algo.updates_per_step=5",
        "callbacks.policy_eval=null",
        f"paths.data_dir={data_dir}",
    ]
    straight, _ = _ddp_ranks(tmp_path / "straight", *steps, "trainer.max_steps=20")
    _ddp_ranks(tmp_path / "split", *steps, "trainer.max_steps=10")
    checkpoint = tmp_path / "split" / "run" / "checkpoints" / "last.ckpt"
    resumed, _ = _ddp_ranks(tmp_path / "resumed", *steps, "trainer.max_steps=20", f"ckpt_path={checkpoint}")
    assert [r["global_step"] for r in resumed] == [20, 20]
    assert resumed[0]["params"] == resumed[1]["params"] == straight[0]["params"]


@pytest.mark.parametrize(
    ("algo", "overrides"),
    [
        # 2 ranks x 4 envs x 128 steps per iteration: a 3,072-step budget is 3 iterations of 16 updates
        ("ppo", ["env=cartpole", "algo.total_timesteps=3072", "algo.normalize_rewards=true"]),
        # episodes of different lengths on the two ranks: the budget must still end both at once
        ("grpo", ["env=cartpole", "algo.total_timesteps=1500", "algo.group_size=4", "algo.num_groups=2"]),
    ],
)
def test_online_ddp_ranks_run_their_own_envs_and_share_the_budget(tmp_path, algo, overrides):
    """Online RL over 2 DDP processes: each rank explores its own envs with its own noise, the env-step
    budget counts both ranks' steps (so it ends after half the iterations, on both ranks together), and
    the running observation/reward statistics are pooled over both ranks' experience, identical on both."""
    ranks, results = _ddp_ranks(
        tmp_path, f"algo={algo}", *overrides, "algo.normalize_observations=true", "callbacks.policy_eval=null"
    )
    budget = int(overrides[1].split("=")[1])
    env_steps = [r["buffers"]["env_steps"][0] for r in ranks]
    assert env_steps[0] == env_steps[1] == results["env_steps"] >= budget
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == results["train_steps"]
    if algo == "ppo":
        assert results["env_steps"] == budget and results["train_steps"] == 3 * 16
    # different experience on each rank (seeds apart), the same weights (gradients averaged)
    assert ranks[0]["train_returns"] and ranks[0]["train_returns"] != ranks[1]["train_returns"]
    assert ranks[0]["params"] == ranks[1]["params"]
    # statistics pooled over both ranks: equal on both, and they counted every observation of both
    stats = [name for name in ranks[0]["buffers"] if name.startswith(("obs_normalizer.", "reward_scaler."))]
    # each rank's per-env discounted returns follow its own envs (not overwritten by rank 0's)
    stats.remove("reward_scaler.discounted_return") if algo == "ppo" else None
    if algo == "ppo":
        discounted = [r["buffers"]["reward_scaler.discounted_return"] for r in ranks]
        assert discounted[0] != discounted[1]
    assert "obs_normalizer.count" in stats
    for name in stats:
        assert ranks[0]["buffers"][name] == pytest.approx(ranks[1]["buffers"][name], rel=1e-9), name
    assert ranks[0]["buffers"]["obs_normalizer.count"][0] == pytest.approx(results["env_steps"], abs=1e-3)


FSDP_ON_CPU = [
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy._target_=tests.cluster.probes.CPUFSDPStrategy",
]


def _fsdp_and_reference_runs(
    tmp_path, fsdp: list[str], common: list[str], reference: tuple[str, ...] = ("trainer=ddp",)
) -> tuple[dict, dict]:
    """results.json of the same run under FSDP (CPU; FULL_SHARD over 2 processes unless `fsdp` says
    otherwise) and under `reference` (DDP over the same 2 processes by default)."""
    results = []
    for name, strategy in (("fsdp", fsdp), ("reference", list(reference))):
        proc = run_module(
            "vla_hydra.train", *strategy, *common, f"hydra.run.dir={tmp_path / name}", timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    return results[0], results[1]


def test_fsdp_full_shard_over_two_cpu_processes_trains_like_ddp(tmp_path, data_dir):
    """vla_hydra's whole FSDP path through train.py (FULL_SHARD over 2 gloo processes; Lightning's
    strategy with only its GPU gate lifted, tests/cluster/probes.py): in-step updates with
    finish_fsdp_backward, evaluations before and during training on every rank, the best-policy
    checkpoint, the consolidated last.ckpt, the final evaluation read from it and a resume from it.
    The same run under DDP (same seeds, same per-rank minibatches, gradients averaged either way) gives
    the same returns."""
    common = [
        "algo=td3bc",
        "trainer.max_steps=100",
        "eval.episodes=2",
        "eval.every_n_updates=50",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
    ]
    fsdp = [*FSDP_ON_CPU, "callbacks.policy_eval.best_checkpoint=${paths.output_dir}/checkpoints/best.ckpt"]
    fsdp_run, ddp_run = _fsdp_and_reference_runs(tmp_path, fsdp, common)
    assert fsdp_run["train_steps"] == ddp_run["train_steps"] == 100
    returns = [[h["eval/return_mean"] for h in r["eval_history"]] for r in (fsdp_run, ddp_run)]
    assert len(returns[0]) == 3 and returns[0] == pytest.approx(returns[1], rel=1e-6)
    # the final evaluation reads the consolidated checkpoint; it matches the live sharded model's
    assert fsdp_run["eval_return_mean"] == pytest.approx(returns[0][-1], rel=1e-6)
    assert fsdp_run["eval_return_mean"] == pytest.approx(ddp_run["eval_return_mean"], rel=1e-6)
    # the best-policy file holds whole weights gathered from both ranks
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import load_policy

    algo, env, config = load_policy(fsdp_run["best_checkpoint"])
    again = rollout_episodes(algo, env, 2, config.callbacks.policy_eval.seed)
    assert again.return_mean == pytest.approx(fsdp_run["best_eval"]["eval/return_mean"], rel=1e-6)
    # resume on both ranks from the consolidated file: the evaluation at the resume point sees exactly
    # the saved weights, and training continues to the new budget
    proc = run_module(
        "vla_hydra.train",
        *fsdp,
        *[o for o in common if not o.startswith("trainer.max_steps")],
        "trainer.max_steps=150",
        f"ckpt_path={fsdp_run['checkpoint']}",
        f"hydra.run.dir={tmp_path / 'fsdp_resumed'}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((tmp_path / "fsdp_resumed" / "results.json").read_text())
    assert resumed["train_steps"] == 150
    # the whole curve: the earlier run's evaluations, then the resumed run's (its first, at step 100,
    # re-scores the restored weights and replaces the entry of that step)
    history = resumed["eval_history"]
    assert [h["step"] for h in history] == [0, 50, 100, 150]
    assert [h["eval/return_mean"] for h in history[:3]] == pytest.approx(returns[0], rel=1e-6)


@pytest.mark.parametrize("algo", ["iql", pytest.param("cql", marks=pytest.mark.slow)])
def test_fsdp_trains_like_ddp_with_parameters_kept_whole(tmp_path, data_dir, algo):
    """IQL's Gaussian log_std and CQL's log_alpha live outside the wrapped layers: FSDP keeps them whole
    on every rank and vla_hydra averages their gradients (prepare_fsdp); CQL's actor loss also runs the
    critic ensemble on detached weights, which FSDP could free before the backward pass needs them
    (copied under FSDP). 50 updates over 2 processes give DDP's returns."""
    common = [
        f"algo={algo}",
        "trainer.max_steps=50",
        "eval.episodes=2",
        "eval.every_n_updates=50",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
    ]
    fsdp_run, ddp_run = _fsdp_and_reference_runs(tmp_path, FSDP_ON_CPU, common)
    returns = [[h["eval/return_mean"] for h in r["eval_history"]] for r in (fsdp_run, ddp_run)]
    assert len(returns[0]) == 2 and returns[0] == pytest.approx(returns[1], rel=1e-6)
    assert returns[0][1] != returns[0][0]  # it trained


def test_fsdp_on_one_process_trains_sac_like_a_single_device_run(tmp_path):
    """On one device FSDP switches to NO_SHARD. SAC's actor loss reads the critic on detached copies, a
    forward with no backward through the critic's weights, which left the critic's unit exposing its
    weights as plain tensors: the next Polyak update found no critic parameters and the checkpoint
    none to save (finish_fsdp_backward now restores them). Same returns as trainer=cpu."""
    common = [
        "algo=sac",
        "env=pendulum",
        "algo.total_timesteps=700",
        "algo.learning_starts=500",
        "eval.episodes=2",
        "eval.every_n_updates=100",
        "callbacks.policy_eval.episodes=2",
    ]
    runs = _fsdp_and_reference_runs(tmp_path, [*FSDP_ON_CPU, "trainer.devices=1"], common, ("trainer=cpu",))
    returns = [[h["eval/return_mean"] for h in run["eval_history"]] for run in runs]
    assert len(returns[0]) >= 2 and returns[0] == pytest.approx(returns[1], rel=1e-6)
    assert runs[0]["eval_return_mean"] == pytest.approx(runs[1]["eval_return_mean"], rel=1e-6)


DEEPSPEED_SCRIPT = """
import json, os, sys
import torch, deepspeed
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
from hydra.utils import instantiate
from omegaconf import OmegaConf

# the shared-memory all-reduce kernel is a CPU speed-up that JIT-compiles for minutes on first use;
# gloo does the same reduction
deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
strategy_cfg, stage = OmegaConf.create(json.loads(sys.argv[1])), int(sys.argv[2])
strategy_cfg.stage = stage
# the DeepSpeed config Lightning would pass to the engine, built from conf/trainer/deepspeed.yaml
config = dict(instantiate(strategy_cfg).config)
config["train_micro_batch_size_per_gpu"] = 32
config["optimizer"] = {"type": "Adam", "params": {"lr": 1e-2, "torch_adam": True}}
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
x = torch.randn(32, 3)
y = x.sum(1, keepdim=True)
losses = []
for _ in range(60):
    loss = ((engine(x) - y) ** 2).mean()
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
print(json.dumps({"stage": engine.zero_optimization_stage(), "optimizer": type(engine.optimizer).__name__,
                  "first": losses[0], "last": losses[-1]}))
"""


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_deepspeed_engine_on_cpu_with_the_trainer_config(tmp_path, stage):
    pytest.importorskip("deepspeed")
    from omegaconf import OmegaConf

    strategy = compose_config("train", ["trainer=deepspeed"]).trainer.strategy
    (result,) = _deepspeed_on_cpu(
        DEEPSPEED_SCRIPT, json.dumps(OmegaConf.to_container(strategy)), str(stage), port=29500 + stage
    )
    assert result["stage"] == stage
    assert result["optimizer"] == (
        "DeepSpeedZeroOptimizer" if stage == 2 else "DeepSpeedZeroOptimizer_Stage3"
    )
    assert result["last"] < 0.1 * result["first"]  # it trains: a linear target is fitted


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_gpu_only_strategies_on_a_cpu_machine_fail_in_one_line(tmp_path, data_dir, strategy):
    run_dir = tmp_path / "run"
    proc = run_module(
        "vla_hydra.train", f"trainer={strategy}", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trainer (accelerator=gpu, devices=2, strategy="), proc.stderr[-2000:]
    assert last.endswith(
        "Lightning refuses it here: No supported gpu backend found! (this trainer needs CUDA GPUs and this "
        "machine has none; here: trainer=cpu, or trainer=ddp for several CPU processes)"
    )
    assert "Traceback" not in proc.stderr and not (run_dir / "results.json").exists()


ZERO3_POLYAK_SCRIPT = """
import json, torch, deepspeed
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
from vla_hydra.models.critics import soft_update

deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
torch.manual_seed(0)


class OnlineAndTarget(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.online, self.target = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
        self.target.requires_grad_(False)

    def forward(self, x):
        return self.online(x).sum() + self.target(x).sum()


model = OnlineAndTarget()
want = [(0.75 * t + 0.25 * o).detach().clone() for t, o in zip(model.target.parameters(), model.online.parameters())]
# threshold 0: even these small layers are partitioned (by default ZeRO-3 keeps layers under 1e5
# elements whole on every rank, which is what the GPU test's small networks get)
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
}
deepspeed.initialize(model=model, model_parameters=model.online.parameters(), config=config)
partitioned = all(p.numel() == 0 for p in model.parameters())
soft_update(model.target, model.online, 0.25)
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    got = [p.detach().clone() for p in model.target.parameters()]
print(json.dumps({"partitioned": partitioned, "max_error": max(float((g - w).abs().max()) for g, w in zip(got, want))}))
"""


def test_soft_update_reaches_zero3_partitioned_parameters(tmp_path):
    """Outside a forward pass a ZeRO-3 parameter is an empty placeholder, so a plain in-place Polyak
    update does nothing at all (checked during development: the target kept its initial weights);
    soft_update gathers both networks, updates, and partitions the result back."""
    pytest.importorskip("deepspeed")
    (result,) = _deepspeed_on_cpu(ZERO3_POLYAK_SCRIPT, port=29511)
    assert result["partitioned"] is True
    assert result["max_error"] < 1e-6


ZERO3_EVAL_SCRIPT = """
import json, os
from types import SimpleNamespace
import torch, deepspeed
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
from lightning.pytorch.strategies import DeepSpeedStrategy
from vla_hydra.training.sharding import gathered_weights


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
torch.manual_seed(0)
model = mlp()
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "Adam", "params": {"lr": 1e-2, "torch_adam": True}},
}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
rank, x = int(os.environ["RANK"]), torch.ones(2, 4)
engine.backward(engine(x).sum())
engine.step()
trainer = SimpleNamespace(global_rank=rank, strategy=DeepSpeedStrategy(stage=3))
# PolicyEvaluation's path: every rank runs the same forwards (each gathers collectively) ...
with torch.no_grad():
    evaluated = [float(model(x).sum()) for _ in range(3)]
# ... and every rank gathers for the best-policy checkpoint, which rank 0 would write
with gathered_weights(trainer, model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
plain = mlp()
plain.load_state_dict(state)
next_loss = engine(x).sum()  # training goes on
engine.backward(next_loss)
engine.step()
print(json.dumps({"rank": rank, "evaluated": evaluated, "from_state_dict": float(plain(x).sum()),
                  "next_loss": float(next_loss), "shard": model[0].weight.numel()}))
"""


def test_zero3_evaluation_and_best_checkpoint_between_training_steps_across_two_ranks(tmp_path):
    """PolicyEvaluation's path under ZeRO-3 with 2 ranks (CPU engine, every layer partitioned): all ranks
    run the rollout forwards, all gather for the state dict, nobody hangs, and both see the weights
    training uses."""
    pytest.importorskip("deepspeed")
    for result in _deepspeed_on_cpu(ZERO3_EVAL_SCRIPT, port=29512, ranks=2):
        assert result["shard"] == 0  # partitioned outside forwards and the gathered block
        assert result["evaluated"] == [pytest.approx(result["next_loss"], abs=1e-6)] * 3
        assert result["from_state_dict"] == pytest.approx(result["next_loss"], abs=1e-6)
