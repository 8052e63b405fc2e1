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
