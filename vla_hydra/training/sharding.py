"""What sharded strategies (trainer=fsdp, trainer=deepspeed) change outside the training step.

FSDP and DeepSpeed ZeRO-3 keep only a shard of each parameter on each rank between forward passes, so
evaluations and best-policy files need every rank's participation; vla_hydra's in-step updates need
FSDP's end-of-backward step run by hand; some algorithm/strategy pairs cannot work and are refused
before training; and Lightning's DeepSpeed strategy writes a checkpoint as a directory of shards. One
home for all of it (docs/clusters.md has what was run and measured).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vla_hydra.core.exceptions import CheckpointError, ConfigError


def weights_sharded(strategy) -> bool:
    """Whether parameters live wrapped or partitioned rather than as plain tensors: FSDP, ZeRO-3."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    return isinstance(strategy, FSDPStrategy) or (
        isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3
    )


def prepare_sharded_forward(trainer) -> None:
    """Before running a policy's forward outside training_step under FSDP (an evaluation, possibly
    before the first training step): initialise the root FSDP module. Otherwise each wrapped layer,
    run first, would make itself a root, which the root's first forward then refuses."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp._runtime_utils import _lazy_init

        _lazy_init(trainer.strategy.model, trainer.strategy.model)


@contextlib.contextmanager
def gathered_weights(trainer, module: torch.nn.Module) -> Iterator[None]:
    """Whole parameters inside the block under DeepSpeed ZeRO-3, where `state_dict()` would otherwise
    return empty placeholders; every rank must enter (a collective). FSDP's own state-dict hooks
    gather (also collectively), and unsharded strategies need nothing."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield
    else:
        yield


def finish_fsdp_backward(root: torch.nn.Module, replicated: list[torch.nn.Parameter]) -> None:
    """FSDP's end-of-backward step, run after each backward pass of an in-step update.

    FSDP queues this step (gradients of sharded units finalised, unit states back to idle) from a hook
    on the root module's outputs. vla_hydra's algorithms call backward inside training_step, which
    Lightning runs inside the root's forward, so that hook never fires: without this the next update
    of a network that sat out a backward (TD3+BC's delayed actor) steps on stale gradients, and the
    next forward finds its units still in the backward state. With it, FULL_SHARD over 2 ranks
    reproduces a plain single-process TD3+BC run. `replicated`: the parameters FSDP was told to
    ignore (prepare_fsdp), whose gradients are averaged across ranks here. Private torch API (torch 2.x FSDP1), guarded by
    tests/training/test_sharding.py, tests/cluster/test_strategies.py (CPU) and
    tests/cluster/test_gpu_strategies.py."""
    from torch.distributed.fsdp._runtime_utils import _post_backward_final_callback

    _post_backward_final_callback(root, root)
    for state in root._all_fsdp_states:
        handle = state._handle
        if handle is not None and not handle.uses_sharded_strategy:
            # NO_SHARD (FSDP's choice on one device): a unit whose forward ran without a backward through
            # its weights (SAC's actor loss reads the critic on detached copies) is left exposing its
            # weights as plain tensors, listed by neither parameters() nor the state dict (Polyak averaging
            # and checkpoints then fail); what its post-backward hook would have done restores them
            handle._use_sharded_views()
    # the parameters FSDP ignores (prepare_fsdp): averaged here, as DDP would (gloo has no AVG)
    grads = [p.grad for p in replicated if p.grad is not None]
    if grads and torch.distributed.get_world_size() > 1:
        for grad in grads:
            torch.distributed.all_reduce(grad)
        torch._foreach_div_(grads, torch.distributed.get_world_size())


def module_classes(names: list[str]) -> set[type]:
    """Classes from dotted names: FSDP's auto-wrap policy in conf/trainer/fsdp.yaml."""
    from hydra.utils import get_class

    return {get_class(name) for name in names}


def prepare_strategy(trainer, module: torch.nn.Module) -> None:
    """Before training: refuse in one line what a sharded strategy cannot do for this algorithm, and
    set up what FSDP needs (`prepare_fsdp`).

    DeepSpeed ZeRO keeps gradients in its own partitioned buffers, so an algorithm that clips gradient
    norms inside its update (dt, ppo, grpo, gail) would clip nothing; and it hands a network that sat
    out a backward a zero gradient, which Adam still steps on (a layer left out of one step moved by
    6.7e-3 at lr 1e-2 under ZeRO-2, where plain PyTorch skips it), so a delayed actor would not be
    delayed."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    if type(trainer.strategy) is DDPStrategy and module.every_backward_uses_all_parameters:
        # conf/trainer/ddp.yaml asks DDP to look for parameters a backward left out (actor-critic
        # updates); for a single loss over every network that search only costs time. Set before fit
        # wraps the module (Lightning passes these kwargs to DistributedDataParallel then).
        trainer.strategy._ddp_kwargs["find_unused_parameters"] = False
    if isinstance(trainer.strategy, DeepSpeedStrategy):
        name = module.short_name()
        if getattr(module, "clips_gradients", False):
            raise ConfigError(
                f"trainer=deepspeed: algo={name} clips gradient norms inside its update, which ZeRO's "
                "partitioned gradients do not allow; use trainer=fsdp or trainer=ddp"
            )
        delay = module.update_delay_setting() if hasattr(module, "update_delay_setting") else None
        if delay:
            raise ConfigError(
                f"trainer=deepspeed: {delay} leaves networks out of some optimizer steps, and ZeRO gives "
                f"them zero gradients that Adam still steps on; set {delay.split('=')[0]}=1 or use "
                "trainer=ddp or trainer=fsdp"
            )
    prepare_fsdp(trainer, module)


def prepare_fsdp(trainer, module: torch.nn.Module) -> None:
    """Under FSDP, the parameters outside the wrapped layer classes: FSDP is told to ignore them, so
    they stay whole on every rank, and `finish_fsdp_backward` averages their gradients across ranks
    (DDP's treatment). They are kept as `module.replicated_parameters`.

    Why not shard them: vla_hydra's algorithms run their backward passes inside `training_step`, which
    Lightning's FSDP strategy executes inside the root module's forward, and FSDP cannot handle
    gradients of parameters held by the root there ("Expects BACKWARD_PRE or BACKWARD_POST state").
    They are also used outside their module's forward (a Gaussian policy's log_std, SAC's log_alpha),
    where FSDP would hand out a shard. They are small: a vector or a scalar per network."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, FSDPStrategy):
        return
    try:  # what finish_fsdp_backward and prepare_sharded_forward call, checked before training
        from torch.distributed.fsdp._runtime_utils import _lazy_init, _post_backward_final_callback  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"trainer=fsdp: this torch ({torch.__version__}) lacks the FSDP internals vla_hydra's in-step "
            f"updates need ({err}); use trainer=ddp or trainer=deepspeed"
        ) from err
    policy = strategy.kwargs.get("auto_wrap_policy")
    classes = tuple(getattr(policy, "_module_classes", ()))
    wrapped = {id(p) for m in module.modules() if classes and isinstance(m, classes) for p in m.parameters()}
    replicated = [p for p in module.parameters() if id(p) not in wrapped]
    for layer in module.modules():
        if hasattr(layer, "copy_detached_params"):  # see EnsembleQNetwork
            layer.copy_detached_params = True
    if replicated:
        strategy.kwargs["ignored_states"] = replicated
    module.replicated_parameters = replicated


def load_deepspeed_checkpoint(path: Path) -> dict[str, Any]:
    """A DeepSpeed checkpoint directory as the one-file checkpoint dict Lightning writes elsewhere
    (fp32 weights gathered from the ZeRO shards under "state_dict", plus the run's own sections).
    Runs on a CPU; needs the deepspeed package, as the run that wrote it did."""
    try:
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    except ImportError as err:  # deepspeed missing
        raise CheckpointError(
            f"ckpt_path={path}: a DeepSpeed checkpoint directory; reading it needs the deepspeed "
            f'package (pip install -e ".[deepspeed]")'
        ) from err
    # it also writes the consolidated file (and says so on stdout); the returned dict is what we need
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        try:
            return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(tmp) / "whole.ckpt"))
        except Exception as err:  # noqa: BLE001 - a broken shard set, whatever DeepSpeed raises
            raise CheckpointError(
                f"ckpt_path={path}: unreadable DeepSpeed checkpoint ({type(err).__name__}: {err})"
            ) from err
