"""Checkpoint directories of sharded strategies on a CPU machine: what is told apart and what is refused
in one line. The GPU side (training with FSDP/DeepSpeed and reading what they write) is in
tests/cluster/test_gpu_strategies.py."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from vla_hydra.cluster.resume import resume_checkpoint
from vla_hydra.core.checkpoints import is_deepspeed_checkpoint
from vla_hydra.core.exceptions import CheckpointError, ConfigError
from vla_hydra.eval import load_policy
from vla_hydra.training.sharding import prepare_strategy


def test_a_plain_directory_is_refused_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"a directory, not a checkpoint file .*'latest' file"):
        load_policy(tmp_path)


def test_a_deepspeed_directory_is_recognised_and_a_broken_one_refused(tmp_path):
    pytest.importorskip("deepspeed")
    ckpt = tmp_path / "last.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    assert not is_deepspeed_checkpoint(ckpt)
    (ckpt / "latest").write_text("checkpoint")
    assert is_deepspeed_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: unreadable DeepSpeed checkpoint"):
        load_policy(ckpt)


def test_resume_accepts_a_deepspeed_directory_but_not_a_plain_one(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.mkdir()
    cfg = compose_config("train", [f"ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match="a directory; expected a checkpoint file"):
        resume_checkpoint(cfg, tmp_path / "run")
    (ckpt / "latest").write_text("checkpoint")
    assert resume_checkpoint(cfg, tmp_path / "run") == str(ckpt)


def _prepared(algo: str, trainer: str, *overrides: str):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    cfg = compose_config("train", [f"algo={algo}", f"trainer={trainer}", *overrides])
    spec = instantiate(cfg.env).spec()
    module = instantiate(cfg.algo, _partial_=True)(spec=spec, model=instantiate(cfg.model))
    strategy = instantiate(cfg.trainer.strategy)
    prepare_strategy(SimpleNamespace(strategy=strategy), module)
    return module, strategy


def test_fsdp_keeps_parameters_outside_wrapped_layers_whole():
    module, strategy = _prepared("td3bc", "fsdp")  # Linear layers and the critic ensemble only
    assert module.replicated_parameters == [] and "ignored_states" not in strategy.kwargs
    module, strategy = _prepared("iql", "fsdp")  # the Gaussian policy's log_std
    assert module.replicated_parameters == [module.actor.log_std]
    assert strategy.kwargs["ignored_states"] == [module.actor.log_std]
    module, _ = _prepared("cql", "fsdp")
    assert module.replicated_parameters == [module.log_alpha]


def test_deepspeed_refuses_what_it_cannot_train_in_one_line():
    # ZeRO keeps gradients in its own buffers: an update that clips norms itself would clip nothing
    with pytest.raises(ConfigError, match=r"^trainer=deepspeed: algo=dt clips gradient norms"):
        _prepared("dt", "deepspeed")
    with pytest.raises(ConfigError, match=r"^trainer=deepspeed: algo\.policy_freq=2 leaves networks out"):
        _prepared("td3bc", "deepspeed")  # TD3's delayed actor
    _prepared("td3bc", "deepspeed", "algo.policy_freq=1")
    _prepared("iql", "deepspeed")


FSDP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from hydra.utils import instantiate
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from tests.conftest import compose_config
from vla_hydra.training.sharding import finish_fsdp_backward

rank, world_size, data_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = compose_config("train", ["algo=td3bc", "trainer=fsdp", f"paths.data_dir={data_dir}"])
torch.manual_seed(0)
spec = instantiate(cfg.env).spec()
data = instantiate(cfg.data)
data.prepare_data()
data.setup("fit")
algo = instantiate(cfg.algo, _partial_=True)(spec=spec, model=instantiate(cfg.model), stats=data.stats())
block = next(iter(data.train_dataloader()))  # the same minibatches on every rank
minibatches = [{k: v[i] for k, v in block.items()} for i in range(12)]


class Root(torch.nn.Module):
    # Lightning runs training_step inside the root module's forward; vla_hydra updates in there
    def __init__(self, algo):
        super().__init__()
        self.algo = algo

    def forward(self, optimizer):
        return [{k: float(v) for k, v in self.algo.update(b, optimizer).items()} for b in minibatches]


root = Root(algo)
if world_size > 1:
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    classes = instantiate(cfg.trainer.strategy.auto_wrap_policy)
    root = FullyShardedDataParallel(
        root, use_orig_params=True, device_id=torch.device("cpu"),
        sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=ModuleWrapPolicy(classes),
    )

    def backprop(loss):
        loss.backward()
        finish_fsdp_backward(root, [])

    algo.backprop = backprop
else:
    algo.backprop = lambda loss: loss.backward()
algo.step_optimizer = lambda optimizer: optimizer.step()
optimizer = algo.configure_optimizers()
losses = root(optimizer)
if world_size > 1:
    with FullyShardedDataParallel.summon_full_params(root):  # refuses unless every unit is idle again
        weights = float(sum(p.double().sum() for p in algo.actor.parameters()))
else:
    weights = float(sum(p.double().sum() for p in algo.actor.parameters()))
if rank == 0:
    print(json.dumps({"losses": losses, "actor_weight_sum": weights}))
"""


def test_fsdp_two_cpu_ranks_reproduce_a_plain_td3bc_run(tmp_path, data_dir):
    """Raw FSDP (FULL_SHARD over 2 gloo ranks, conf/trainer/fsdp.yaml's wrap classes) around TD3+BC,
    updating inside the root forward as Lightning does: with finish_fsdp_backward after each backward
    it matches a plain single-process run, including the delayed actor that sits out every other
    backward (without it the actor steps on stale gradients)."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    def launch(rank: int, world_size: int) -> subprocess.Popen:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631", "PYTHONPATH": str(ROOT)}
        return subprocess.Popen(
            [sys.executable, "-c", FSDP_SCRIPT, str(rank), str(world_size), str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    plain = launch(0, 1).communicate(timeout=300)
    ranks = [launch(r, 2) for r in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    want, got = (json.loads(out.strip().splitlines()[-1]) for out, _ in (plain, outputs[0]))
    assert len(got["losses"]) == 12 and "actor_loss" in got["losses"][1]

    def flat(result: dict) -> list[float]:
        return [v for step in result["losses"] for v in step.values()] + [result["actor_weight_sum"]]

    assert [list(step) for step in got["losses"]] == [list(step) for step in want["losses"]]
    assert flat(got) == pytest.approx(flat(want), rel=1e-5)
