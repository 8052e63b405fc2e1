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


def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path, data_dir):
    probe = tmp_path / "ranks"
    proc = run_module(
        "vla_hydra.train",
        "trainer=ddp",
        "trainer.max_steps=100",
        "eval.episodes=2",
        "eval.every_n_updates=100",
        "callbacks.policy_eval.episodes=2",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.digest._target_=tests.cluster.probes.ParameterDigest",
        f"+callbacks.digest.path={probe}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert (rank["world_size"], rank["global_step"], rank["strategy"]) == (2, 100, "DDPStrategy")
        assert rank["backend"] == "gloo"
        # manual optimization goes through Lightning's manual_backward (DDP's gradient all-reduce)
        assert rank["direct_backward"] is False
    # each rank samples different minibatches (seed + rank): equal weights mean gradients were averaged
    assert ranks[0]["params"] == ranks[1]["params"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["train_steps"] == 100


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
    strategy = compose_config("train", ["trainer=deepspeed"]).trainer.strategy
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + stage),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    from omegaconf import OmegaConf

    proc = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_SCRIPT, json.dumps(OmegaConf.to_container(strategy)), str(stage)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
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
    assert "Lightning refuses it here: No supported gpu backend found!" in last
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
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", ZERO3_POLYAK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["partitioned"] is True
    assert result["max_error"] < 1e-6


ZERO3_EVAL_SCRIPT = """
import json, os
from types import SimpleNamespace
import torch, deepspeed
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
from lightning.pytorch.strategies import DeepSpeedStrategy
from vla_hydra.training.sharding import gathered_weights

deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
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
evaluated = None
with gathered_weights(trainer, model):  # every rank enters; rank 0 alone runs the policy
    if rank == 0:
        with torch.no_grad():
            evaluated = [float(model(x).sum()) for _ in range(3)]
next_loss = engine(x).sum()  # training goes on after the evaluation
engine.backward(next_loss)
engine.step()
if rank == 0:
    print(json.dumps({"evaluated": evaluated, "next_loss": float(next_loss), "shard": model[0].weight.numel()}))
"""


def test_zero3_evaluation_on_rank_zero_between_training_steps_across_two_ranks(tmp_path):
    """PolicyEvaluation's path under ZeRO-3 with 2 ranks (CPU engine, every layer partitioned): all ranks
    gather, rank 0 alone runs forwards, nobody hangs, and rank 0 sees the weights training uses."""
    pytest.importorskip("deepspeed")
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "DS_ACCELERATOR": "cpu",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29512",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "PYTHONPATH": str(ROOT),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", ZERO3_EVAL_SCRIPT],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert result["shard"] == 0  # partitioned outside the gathered block
    assert result["evaluated"] == [pytest.approx(result["next_loss"], abs=1e-6)] * 3
