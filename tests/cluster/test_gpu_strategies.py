"""Lightning's FSDP and DeepSpeed strategies through the CLI, on one CUDA GPU (they refuse CPUs; on a
CPU machine these skip and test_strategies.py checks the refusal and DeepSpeed's own engine instead).

What one GPU can show: training and the final evaluation run, the checkpoint each strategy writes
(FSDP: one consolidated file; DeepSpeed: a directory of ZeRO shards) is what `vla_hydra.eval` and
`ckpt_path=` resume read, and ZeRO-3's partitioned target networks still get their Polyak updates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_module

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="Lightning's FSDP and DeepSpeed strategies need a CUDA GPU"
)

SMALL_RUN = [
    "trainer.devices=1",
    "eval.episodes=4",
    "callbacks.policy_eval.episodes=2",
    "trainer.enable_progress_bar=false",
]


def _train(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    proc = run_module(
        "vla_hydra.train",
        *SMALL_RUN,
        *overrides,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / "results.json").read_text())


def _same_return_from_checkpoint(results: dict):
    """The saved checkpoint, loaded on the GPU, gives the policy that training evaluated."""
    from vla_hydra.envs.evaluation import rollout_episodes
    from vla_hydra.eval import load_policy

    algo, env, config = load_policy(results["checkpoint"], device="cuda")
    assert algo.trained_steps == results["train_steps"]
    again = rollout_episodes(algo, env, config.eval.episodes, config.eval.seed)
    assert again.return_mean == pytest.approx(results["eval_return_mean"], rel=1e-3)
    return algo


def test_fsdp_trains_bc_into_one_checkpoint_file(tmp_path, data_dir):
    results = _train(tmp_path / "fsdp", data_dir, "trainer=fsdp", "trainer.max_steps=1000")
    assert results["train_steps"] == 1000 and results["normalized_score"] > 50
    assert Path(results["checkpoint"]).is_file()  # state_dict_type=full: consolidated
    _same_return_from_checkpoint(results)


@pytest.mark.parametrize(
    ("overrides", "kept_whole"),
    [
        (["algo=iql", "trainer.max_steps=300"], "actor.log_std"),
        (["algo=sac", "env=pendulum", "algo.total_timesteps=1500", "algo.learning_starts=500"], "log_alpha"),
    ],
    ids=["iql", "sac"],
)
def test_fsdp_on_gpu_trains_parameters_it_keeps_whole(tmp_path, data_dir, overrides, kept_whole):
    # IQL's state-independent log_std and SAC's log_alpha sit outside FSDP's wrapped layers: FSDP
    # ignores them (training.sharding.prepare_fsdp) and does not move them, so vla_hydra puts them on
    # the GPU itself; a run that left them on the CPU fails at its first update on a device mismatch
    results = _train(tmp_path / "run", data_dir, "trainer=fsdp", *overrides)
    assert results["train_steps"] > 0
    algo = _same_return_from_checkpoint(results)
    value = algo.get_parameter(kept_whole).detach()
    assert value.abs().min() > 0  # it was trained: both start at 0 (model.log_std_init; SAC's alpha 1)


def test_deepspeed_zero2_trains_bc_and_eval_reads_the_shard_directory(tmp_path, data_dir):
    results = _train(tmp_path / "ds2", data_dir, "trainer=deepspeed", "trainer.max_steps=1000")
    assert results["train_steps"] == 1000 and results["normalized_score"] > 50
    assert Path(results["checkpoint"]).is_dir()
    _same_return_from_checkpoint(results)
    proc = run_module("vla_hydra.eval", f"ckpt_path={results['checkpoint']}", "episodes=2")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "strategy",
    [
        ["trainer=fsdp"],
        ["trainer=deepspeed", "trainer.strategy.stage=2"],
        ["trainer=deepspeed", "trainer.strategy.stage=3"],
    ],
    ids=["fsdp", "zero2", "zero3"],
)
def test_td3bc_target_networks_follow_polyak_updates_and_resume(tmp_path, data_dir, strategy):
    # tau=1: after the last (actor-delayed, even) update the targets must equal the online networks.
    # (These layers are under ZeRO-3's persistence threshold, so ZeRO-3 keeps them whole; the Polyak
    # update of partitioned parameters is tested on CPU in test_strategies.py.)
    # TD3+BC's actor sits out every other backward: the case FSDP's finish_fsdp_backward is for.
    # (DeepSpeed: the actor delay is refused there, see training.sharding.prepare_strategy; FSDP keeps it)
    delay = "algo.policy_freq=1" if "trainer=deepspeed" in strategy else "algo.policy_freq=2"
    common = [*strategy, "algo=td3bc", "algo.tau=1.0", delay]
    results = _train(tmp_path / "td3bc", data_dir, *common, "trainer.max_steps=200")
    assert results["train_steps"] == 200
    algo = _same_return_from_checkpoint(results)
    for online, target in ((algo.critic, algo.target_critic), (algo.actor, algo.target_actor)):
        for a, b in zip(online.parameters(), target.parameters(), strict=True):
            assert torch.equal(a, b)
    resumed = _train(
        tmp_path / "td3bc_resumed",
        data_dir,
        *common,
        "trainer.max_steps=300",
        f"ckpt_path={results['checkpoint']}",
    )
    assert resumed["train_steps"] == 300
