"""What every policy-learning LightningModule shares: normalisation, acting, the K-updates-per-step
loop, and a checkpoint that carries everything inference needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from vla_hydra.core.exceptions import ConfigError
from vla_hydra.core.runtime import decorrelate_rngs
from vla_hydra.data.stats import DatasetStats
from vla_hydra.envs.factory import EnvSpec
from vla_hydra.models.normalization import ActionScaler, ObservationNormalizer
from vla_hydra.training.sharding import finish_fsdp_backward

CHECKPOINT_KEY = "vla_hydra"


def torch_optimizer(optimizer):
    """The torch optimizer inside Lightning's LightningOptimizer (else `optimizer` itself). The wrapper
    forwards every attribute read (param_groups, defaults, state) through a Python __getattr__, ~4 per
    zero_grad; its step stays the one to call (`PolicyAlgorithm.step_optimizer`): it advances
    Lightning's global_step."""
    return optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def host_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics (tensors, python numbers) -> python floats, as Lightning's `self.log`
    writes them: numbers and non-float tensors as the default float dtype (float32), float32 and
    float64 tensors as they are. The tensors cost one host sync together."""
    tensors = {k: v.detach().reshape(()) for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    numbers = [k for k in metrics if k not in tensors]
    scalars: dict[str, float] = {}
    if tensors:
        kept, device = (torch.float32, torch.float64), next(iter(tensors.values())).device
        # stacking promotes float32 to float64 where both occur (exactly)
        stacked = torch.stack(
            [(t if t.dtype in kept else t.to(torch.get_default_dtype())).to(device) for t in tensors.values()]
        )
        scalars.update(zip(tensors, stacked.tolist(), strict=True))
    if numbers:
        as_default = torch.tensor([float(metrics[k]) for k in numbers], dtype=torch.get_default_dtype())
        scalars.update(zip(numbers, as_default.tolist(), strict=True))
    return {k: scalars[k] for k in metrics}


def split_block(block: Any, count: int) -> list[Any]:
    """The first `count` minibatches of a block (every leaf shaped (K, B, ...), nested dicts allowed): views
    `block[k]`, made by one unbind per leaf instead of one indexing per leaf and update."""
    if isinstance(block, Mapping):
        parts = {key: split_block(value, count) for key, value in block.items()}
        return [{key: part[k] for key, part in parts.items()} for k in range(count)]
    return block.unbind(0)[:count]


class PolicyAlgorithm(L.LightningModule):
    """Subclasses build their networks in __init__ and implement `update` and `normalized_action`.

    Constructor contract (train.py and eval.load_policy call it so): `Algo(spec=EnvSpec, model=<partial
    from model=>, stats=DatasetStats | None, **algo config)`; stats is None when rebuilding from a
    checkpoint (the buffers then come from the state dict).

    Optimisation is manual so that one Lightning step runs `updates_per_step` gradient updates on the
    block of minibatches the datamodule yields: Lightning's per-step cost (hooks, logging, loop) is
    paid once per block instead of once per update. `trainer.global_step` counts gradient updates.
    """

    # whether `update` clips gradient norms (clip_gradients_): refused under DeepSpeed ZeRO, whose
    # partitioned gradients the clipping would not see
    clips_gradients = False
    # whether every backward pass reaches every trainable parameter (one loss over all networks): DDP
    # can then skip its search for unused parameters (an extra autograd traversal per step, and a torch
    # warning on every rank when it finds none); actor-critic updates leave networks out of some passes
    every_backward_uses_all_parameters = False
    # short name in results/reports; defaults to the lower-cased class name
    name: str | None = None
    # whether the algorithm handles Discrete action spaces (class-index actions)
    supports_discrete: bool = False
    # whether it trains on trajectory segments (data.segment_length = algo.context_length) with a sequence
    # model (a network class that sets takes_sequences = True), rather than on single transitions
    takes_sequences: bool = False
    # the dataset fields `update` reads: the offline datamodule gathers only these into its minibatch
    # blocks (as a plain loop indexes only what it uses); None: every field
    batch_keys: tuple[str, ...] | None = None

    def __init__(
        self,
        spec: EnvSpec,
        updates_per_step: int = 1,
        stats: DatasetStats | None = None,
        compile_losses: bool = False,
    ):
        super().__init__()
        self.check_action_space(spec)
        self.automatic_optimization = False
        self.compile_losses = compile_losses
        self._compiled_losses = None
        self.spec = spec
        self.updates_per_step = int(updates_per_step)
        # False routes every backward through Lightning (its on_before/after_backward callback hooks).
        self.direct_backward = True
        self._direct_backward = False
        self._fsdp = False  # set in on_fit_start: Lightning FSDP strategy (see finish_fsdp_backward)
        # under FSDP, the parameters kept whole on every rank (training.sharding.prepare_fsdp)
        self.replicated_parameters: list[torch.nn.Parameter] = []
        stats = stats or DatasetStats()
        self.obs_normalizer = ObservationNormalizer(spec.observation_shape, stats.obs_mean, stats.obs_std)
        self.action_scaler = ActionScaler(spec.action_low, spec.action_high)
        # Set by train.py, saved into checkpoints: the composed config, the normalized-score references,
        # the `algo=` choice (ppo and ppo_continuous are one class; dt is DecisionTransformer) and the
        # dataset's name, which label the results of a re-evaluation (experiment=eval, vla_hydra.eval).
        self.run_config: dict[str, Any] | None = None
        self.ref_returns: dict[str, float] | None = None
        self.algo_choice: str | None = None
        self.dataset_name: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ checks every assignment against the parameters, buffers and submodules;
        # an existing plain attribute given a value that is neither a tensor nor a module skips that
        # (Lightning sets _current_fx_name twice per hook call, online algorithms their envs' latest
        # observations and episode sums at every env step)
        if name in self.__dict__ and not isinstance(value, (torch.Tensor, torch.nn.Module)):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def short_name(cls) -> str:
        """The algorithm's name in messages and checkpoints: `name`, else the class name in lower case."""
        return cls.name or cls.__name__.lower()

    @property
    def run_label(self) -> str:
        """What results and reports call this run's algorithm: the algo= choice it was trained as
        (ppo_continuous), else its short name."""
        return self.algo_choice or self.short_name()

    @classmethod
    def check_settings(cls, spec: EnvSpec, algo_cfg: Any) -> None:
        """The checks that need only the env and the `algo=` config: train.py runs them before any dataset
        is collected or read (subclasses add theirs)."""
        cls.check_action_space(spec)

    @classmethod
    def check_action_space(cls, spec: EnvSpec) -> None:
        """Discrete actions only for algorithms that handle them; train.py asks before any dataset is
        collected or read."""
        if spec.discrete and not cls.supports_discrete:
            raise ConfigError(
                f"algo={cls.short_name()}: env {spec.env_id} has a discrete action "
                "space; this algorithm needs continuous (Box) actions"
            )

    def build_network(self, model, *args, needs: tuple[str, ...] = (), use: str = "", **kwargs):
        """`model(*args, **kwargs)` from the `model=` partial, refused in one line when that network cannot
        be built that way or lacks a method this algorithm calls (`needs`); `use` names a model= that fits."""
        algo = self.short_name()
        try:
            network = model(*args, **kwargs)
        except TypeError as err:
            import inspect

            try:
                inspect.signature(model).bind(*args, **kwargs)
            except TypeError:  # e.g. model=mlp given discrete=...: a network made for other algorithms
                raise ConfigError(
                    f"algo={algo}: model= cannot build this algorithm's network ({err}); use {use}"
                ) from err
            # the call fits the signature: a model.* value the network cannot take (model.width=abc)
            target = getattr(model, "func", model)
            raise ConfigError(
                f"model: {target.__module__}.{target.__qualname__} cannot be built with its model.* values ({err})"
            ) from err
        if getattr(network, "takes_sequences", False) and not self.takes_sequences:
            raise ConfigError(
                f"algo={algo}: model= built a {type(network).__name__}, a sequence model for algo=dt; "
                f"algo={algo} acts on single observations: use {use}"
            )
        missing = [method for method in needs if not callable(getattr(network, method, None))]
        if missing:
            methods = ", ".join(f"{method}()" for method in missing)
            raise ConfigError(
                f"algo={algo}: model= built a {type(network).__name__}, which has no {methods}; use {use}"
            )
        return network

    # -- what subclasses provide ---------------------------------------------------------------
    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action in [-1, 1] for normalised observations (class indices for discrete
        actions)."""
        raise NotImplementedError

    def update(self, batch: dict[str, torch.Tensor], optimizers) -> dict[str, torch.Tensor]:
        """One gradient update on one minibatch; returns detached scalar losses (no host sync)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Env-unit actions for raw env observations (batched); the evaluation and inference interface."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        return self.env_actions(self.normalized_action(self.obs_normalizer(obs_t)))

    def env_actions(self, normalized_actions: torch.Tensor) -> np.ndarray:
        """Policy outputs -> what env.step takes: class indices, or actions rescaled from [-1, 1]."""
        if self.spec.discrete:
            return normalized_actions.long().cpu().numpy()
        return self.action_scaler.unnormalize(normalized_actions).cpu().numpy()

    def on_fit_start(self) -> None:
        from lightning.pytorch.plugins.precision import Precision
        from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

        strategy = self.trainer.strategy
        # Plain fp32 on one device: Lightning's backward adds only callback hooks, which cost ~5% of a
        # small-MLP update. Anything else (DDP, AMP, DeepSpeed) must go through manual_backward.
        self._direct_backward = (
            self.direct_backward
            and type(strategy) is SingleDeviceStrategy
            and type(strategy.precision_plugin) is Precision
        )
        self._fsdp = isinstance(strategy, FSDPStrategy)
        if self.trainer.world_size > 1:
            # after the networks were built alike on every rank: from here each rank draws its own noise
            decorrelate_rngs(self.trainer.global_rank)
        if self._fsdp and self.replicated_parameters:
            # FSDP moves only the parameters it manages to the device
            device = next(b.device for b in self.buffers())
            for param in self.replicated_parameters:
                param.data = param.data.to(device)

    def losses(self, batch: dict[str, torch.Tensor], *args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to backpropagate, detached figures to log) for one minibatch: the forward half of an
        update, which algorithms that support `compile_losses` implement (BC, TD3+BC, IQL)."""
        raise NotImplementedError

    def loss_fn(self):
        """`self.losses`, or with `compile_losses` its torch.compile'd version (built once; the first
        call compiles: ~10-20 s on a 2-core CPU; benchmarks/README.md has the measured speed-ups).
        Optimizer steps stay eager: compiled Adam needs capturable state, which CPUs do not support."""
        if not self.compile_losses:
            return self.losses
        if self._compiled_losses is None:
            self._compiled_losses = torch.compile(self.losses)
        return self._compiled_losses

    def backprop(self, loss: torch.Tensor) -> None:
        """Backward pass for `update`: direct when that is equivalent, else Lightning's manual_backward."""
        if self._direct_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
            if self._fsdp:
                finish_fsdp_backward(self.trainer.strategy.model, self.replicated_parameters)

    def update_delay_setting(self) -> str | None:
        """The setting, if any, that leaves some networks out of some optimizer steps (a delayed actor):
        under DeepSpeed ZeRO those get zero gradients that Adam still steps on, so it is refused there."""
        return None

    def clip_gradients_(self, params, max_norm: float) -> torch.Tensor:
        """Clip the gradient norm of `params` after `backprop`; returns the pre-clip norm (no host
        sync). Under FSDP each rank holds a shard of each gradient, so the norm is FSDP's collective
        one over the whole model (every clipping algorithm here clips all the parameters it trains)."""
        if self._fsdp:
            return self.trainer.strategy.model.clip_grad_norm_(max_norm)
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def step_optimizer(self, optimizer) -> None:
        """optimizer.step() for `update`: on plain fp32 single-device training, the wrapped torch
        optimizer steps directly and only Lightning's step counter advances (global_step counts
        updates); its strategy/precision path adds ~0.2 ms of hooks per update, ~5% of a small-MLP
        PPO iteration. Anything else goes through Lightning's optimizer.step()."""
        if self._direct_backward and hasattr(optimizer, "_on_before_step"):
            optimizer._on_before_step()
            optimizer.optimizer.step()
            optimizer._on_after_step()
        else:
            optimizer.step()

    def updates_into_block(self) -> int:
        """How many of the current minibatch block's updates are trained already: 0, except when continuing a
        run whose trainer.max_steps cut its last block short; the continuation trains that block's rest first
        (the sampler draws it again), so it takes the batches and step boundaries of an uninterrupted run."""
        return self.trainer.global_step % self.updates_per_step if self._trainer is not None else 0

    def training_step(self, block: dict[str, torch.Tensor], batch_idx: int) -> None:
        optimizers = self.optimizers()
        done = self.updates_into_block()
        updates = self.updates_per_step - done
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        if max_steps >= 0:  # the last block stops at trainer.max_steps, which counts updates exactly
            updates = max(1, min(updates, max_steps - self.trainer.global_step))
        figures = [self.update(batch, optimizers) for batch in split_block(block, done + updates)[done:]]
        if self.logging_this_step():  # summed only on the steps that write them (1 in log_every_n_steps)
            totals: dict[str, torch.Tensor] = {}
            for losses in figures:
                for name, value in losses.items():
                    totals[name] = totals[name] + value if name in totals else value
            self.log_train_metrics({f"train/{name}": v / updates for name, v in totals.items()})

    def note_training_end(self, max_steps: int, global_step: int) -> None:
        """After the fit, what a user should know about where it ended (online algorithms: their env-step
        budget); offline training ends at trainer.max_steps exactly."""

    def log_train_metrics(self, metrics: dict[str, Any]) -> None:
        """Training metrics, written at global_step: the gradient-update count that evaluations and
        checkpoints use (Lightning's own batch count is algo.updates_per_step times smaller, so losses
        and evaluation returns would not share an x-axis).

        Written to the loggers directly, as Lightning writes a step's `self.log` values (the same
        floats, `host_scalars`; then each logger's save), and put in the progress bar's metrics and
        `trainer.callback_metrics`. Through `self.log` each value cost ~0.4 ms of bookkeeping on a
        2-core CPU (and its result collection is re-read at every later step): ~4% of a PPO iteration
        on the steps that log."""
        trainer = self.trainer
        step = trainer.global_step
        scalars = host_scalars(metrics)
        trainer.progress_bar_metrics.update(scalars)
        # as Lightning keeps logged values: tensors, with the "step" key self.log gave it
        as_tensors = {name: torch.tensor(value) for name, value in scalars.items()}
        as_tensors["step"] = torch.tensor(float(step))
        trainer.callback_metrics.update(as_tensors)
        trainer.logged_metrics.update(as_tensors)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()

    def logging_this_step(self) -> bool:
        """Whether Lightning writes logs after this step (every trainer.log_every_n_steps, and the last
        step): training steps compute and write their metrics only then."""
        return self.trainer._logger_connector.should_update_logs

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What inference needs besides the weights (vla_hydra.eval.load_policy reads it)."""
        return {
            "format_version": 1,
            "algo": self.short_name(),
            "algo_choice": self.algo_choice,
            "dataset_name": self.dataset_name,
            "env_spec": self.spec.to_dict(),
            "obs_mean": self.obs_normalizer.mean.cpu().tolist(),
            "obs_std": self.obs_normalizer.std.cpu().tolist(),
            "ref_returns": self.ref_returns,
            "config": self.run_config,
        }

    def inference_checkpoint(self, global_step: int) -> dict[str, Any]:
        """A checkpoint for load_policy/eval/collect only: weights and metadata, no optimizer, loop or
        RNG state (a fraction of a resumable checkpoint's size)."""
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            CHECKPOINT_KEY: self.checkpoint_metadata(),
            "global_step": int(global_step),
        }

    def save_inference_checkpoint(self, path, global_step: int, checkpoint: dict | None = None) -> None:
        """Write `inference_checkpoint` (or one already built) to `path` atomically (best-policy files,
        eval export=)."""
        from vla_hydra.core.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save(checkpoint if checkpoint is not None else self.inference_checkpoint(global_step), tmp)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_metadata()
        # RNG states and the sampler position travel in the same checkpoint through the ResumeState
        # callback (vla_hydra/cluster/resume.py), so a resumed run continues the same random streams
