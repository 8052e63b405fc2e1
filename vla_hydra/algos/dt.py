"""Decision Transformer (Chen et al. 2021): offline RL as sequence modelling. A causal transformer reads
trajectory segments (return-to-go, state, action) and regresses each action; at evaluation it is
conditioned on a target return, decremented by the rewards received. Defaults follow CORL's DT."""

from __future__ import annotations

import numpy as np
import torch

from vla_hydra.algos.base import PolicyAlgorithm, torch_optimizer
from vla_hydra.algos.schedules import warmup_lr
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.core.logging import get_logger
from vla_hydra.models.transformer import DecisionTransformerNet

log = get_logger(__name__)


def dt_action_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE over (B, T, action_dim): sum of squared errors at real steps / (real steps * action_dim).

    Padded steps (mask 0) contribute nothing; the max(., 1) only guards an all-padding batch.
    """
    squared = (predicted - target).square().sum(-1) * mask
    return squared.sum() / (mask.sum() * predicted.shape[-1]).clamp(min=1.0)


def resolve_target_return(
    target_return: float | None,
    ref_returns: dict[str, float] | None,
    return_range: tuple[float, float] | None,
) -> tuple[float, str]:
    """The evaluation target and where it comes from: `algo.target_return` when set; else (null) the expert
    reference return the normalized score uses (the dataset file's, or the env's published one), else the
    dataset's best episode return, so a dataset of any env is conditioned on a return of its own scale."""
    if target_return is not None:
        return float(target_return), "algo.target_return"
    if ref_returns and ref_returns.get("expert") is not None:
        return float(ref_returns["expert"]), "the expert reference return of the normalized score"
    if return_range is not None:
        return float(return_range[1]), "the dataset's best episode return"
    raise ConfigError(
        "algo.target_return=null: no dataset to take it from (no reference expert return, no episode "
        "returns); pass a number, e.g. algo.target_return=1000"
    )


class DecisionTransformer(PolicyAlgorithm):
    """`algo=dt`. The transformer comes from `model=decision_transformer` (its algo config selects it);
    `algo.context_length` sets both the training segments (the data configs read it) and the evaluation
    context window.

    Evaluation is stateful: `begin_rollout(num_envs)`, then per step `act(obs)` and
    `observe_rollout_step(rewards, done)` (what `rollout_episodes` calls). `act` without a preceding
    `begin_rollout` (or with a different number of envs) starts a new rollout.
    """

    clips_gradients = True
    every_backward_uses_all_parameters = True

    name = "dt"
    takes_sequences = True

    def __init__(
        self,
        spec,
        model,
        context_length: int = 20,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-4,
        warmup_updates: int = 1000,
        grad_clip: float = 0.25,
        target_return: float | None = None,
        return_scale: float = 0.001,
        updates_per_step: int = 10,
        stats=None,
    ):
        super().__init__(spec, updates_per_step, stats)
        self.context_length = int(context_length)
        self.lr, self.betas, self.weight_decay = float(lr), tuple(betas), float(weight_decay)
        self.warmup_updates, self.grad_clip = int(warmup_updates), float(grad_clip)
        self.return_scale = float(return_scale)
        # null: resolved from the data at fit start (resolve_target_return), when ref_returns is known
        self.target_return_setting = None if target_return is None else float(target_return)
        self.target_return = self.target_return_setting
        self.return_range = (
            (stats.episode_return_min, stats.episode_return_max)
            if stats is not None and stats.episode_return_min is not None
            else None
        )
        self.transformer = model(spec.observation_shape, spec.action_dim)
        if not isinstance(self.transformer, DecisionTransformerNet):
            raise ConfigError(
                f"algo=dt: model= built a {type(self.transformer).__name__}; DT needs a sequence model "
                "(model=decision_transformer, the algo's default)"
            )
        # A python int (no host sync per update) that drives the warm-up; saved in checkpoints for resume.
        self.num_updates = 0
        self._rollout: dict[str, torch.Tensor] | None = None

    # -- training --------------------------------------------------------------------------------
    def predict(self, normalized_states, normalized_actions, returns_to_go, timesteps) -> torch.Tensor:
        """Actions in [-1, 1] for every step of (B, T) segments; returns-to-go in env units."""
        return self.transformer(
            normalized_states, normalized_actions, returns_to_go * self.return_scale, timesteps
        )

    def segment_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked action MSE of a batch of (B, T) segments from the TrajectoryBuffer."""
        actions = self.action_scaler.normalize(batch["actions"])
        predicted = self.predict(
            self.obs_normalizer(batch["observations"]), actions, batch["returns_to_go"], batch["timesteps"]
        )
        return dt_action_loss(predicted, actions, batch["mask"])

    def update(self, batch, optimizers):
        loss = self.segment_loss(batch)
        lr = warmup_lr(self.lr, self.num_updates, self.warmup_updates)
        optimizer = torch_optimizer(optimizers)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        self.backprop(loss)
        # returns the pre-clip norm as a tensor; clipping itself needs no host sync
        grad_norm = self.clip_gradients_(self.transformer.parameters(), self.grad_clip)
        self.step_optimizer(optimizers)
        self.num_updates += 1
        return {"dt_loss": loss.detach(), "grad_norm": grad_norm.detach()}

    def configure_optimizers(self):
        # AdamW: CORL's DT optimiser (decoupled weight decay); the lr is set per update by the warm-up.
        return torch.optim.AdamW(
            self.transformer.parameters(),
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
            foreach=True,
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.resolve_target_return()

    def resolve_target_return(self) -> None:
        """Set `target_return` from the setting or the data (see resolve_target_return) and say which."""
        self.target_return, source = resolve_target_return(
            self.target_return_setting, self.ref_returns, self.return_range
        )
        log.info(f"algo=dt: evaluation conditioned on target return {self.target_return:g} ({source})")
        low, high = self.return_range or (self.target_return, self.target_return)
        if self.target_return_setting is not None and not low <= self.target_return <= high:
            log.warning(
                f"algo.target_return={self.target_return:g} lies outside the dataset's episode returns "
                f"[{low:g}, {high:g}]: the policy is conditioned on a return it never saw"
            )

    def checkpoint_metadata(self) -> dict:
        meta = super().checkpoint_metadata()
        if meta.get("config") and self.target_return is not None:
            # a null target was resolved from the data, which load_policy does not read: the checkpoint's
            # config records the number the policy was evaluated with, so vla_hydra.eval conditions alike
            algo_config = {**meta["config"]["algo"], "target_return": self.target_return}
            meta["config"] = {**meta["config"], "algo": algo_config}
        return meta

    def on_save_checkpoint(self, checkpoint) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dt_num_updates"] = self.num_updates

    def on_load_checkpoint(self, checkpoint) -> None:
        self.num_updates = int(checkpoint.get("dt_num_updates", checkpoint.get("global_step", 0)))

    # -- acting: stateful, batched over envs -----------------------------------------------------
    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "DecisionTransformer acts from a context of past steps: use begin_rollout(num_envs), "
            "act(obs) and observe_rollout_step(rewards, done) (vla_hydra.envs.evaluation.rollout_episodes)"
        )

    def begin_rollout(self, num_envs: int) -> None:
        """Empty context per env; each env's return-to-go starts at `target_return`, its timestep at 0."""
        if self.target_return is None:  # acting without a fit (a DT built by hand with a null target)
            self.resolve_target_return()
        obs_dim, act_dim = int(np.prod(self.spec.observation_shape)), self.spec.action_dim
        self._rollout = {
            "states": torch.zeros(num_envs, 0, obs_dim, device=self.device),
            "actions": torch.zeros(num_envs, 0, act_dim, device=self.device),
            "returns_to_go": torch.zeros(num_envs, 0, device=self.device),
            "timesteps": torch.zeros(num_envs, 0, dtype=torch.long, device=self.device),
            "return_to_go": torch.full((num_envs,), self.target_return, device=self.device),
            "timestep": torch.zeros(num_envs, dtype=torch.long, device=self.device),
        }

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Append this step to each env's context, predict from the last `context_length` steps."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        num_envs = obs_t.shape[0]
        if self._rollout is None or self._rollout["states"].shape[0] != num_envs:
            self.begin_rollout(num_envs)
        r, keep = self._rollout, self.context_length

        def push(history: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return torch.cat([history, value.unsqueeze(1)], dim=1)[:, -keep:]

        r["states"] = push(r["states"], self.obs_normalizer(obs_t).reshape(num_envs, -1))
        # the current action is unknown; its token comes after s_t, so causal attention never reads it
        r["actions"] = push(r["actions"], torch.zeros(num_envs, self.spec.action_dim, device=self.device))
        r["returns_to_go"] = push(r["returns_to_go"], r["return_to_go"])
        r["timesteps"] = push(r["timesteps"], r["timestep"])
        # deterministic acting even when called in training mode (e.g. right after fit): no dropout
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            action = self.predict(r["states"], r["actions"], r["returns_to_go"], r["timesteps"])[:, -1]
        finally:
            self.transformer.train(was_training)
        r["actions"][:, -1] = action
        return self.action_scaler.unnormalize(action).cpu().numpy()

    def observe_rollout_step(
        self, rewards: np.ndarray, done: np.ndarray, actions: np.ndarray | None = None
    ) -> None:
        """Returns-to-go -= rewards, timesteps += 1, for envs still running (finished envs stay frozen).
        `actions`: the env-unit actions executed, when not the ones `act` predicted (a behaviour policy's
        with collection noise): the context holds what was done, as the dataset the DT learnt from did."""
        if self._rollout is None:
            return
        r = self._rollout
        if actions is not None:
            executed = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
            r["actions"][:, -1] = self.action_scaler.normalize(executed.reshape(r["actions"][:, -1].shape))
        running = ~torch.as_tensor(np.asarray(done, dtype=bool), device=self.device)
        rewards_t = torch.as_tensor(np.asarray(rewards, dtype=np.float32), device=self.device)
        r["return_to_go"] = torch.where(running, r["return_to_go"] - rewards_t, r["return_to_go"])
        r["timestep"] = torch.where(running, r["timestep"] + 1, r["timestep"])
