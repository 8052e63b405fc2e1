"""DAgger, Dataset Aggregation (Ross, Gordon & Bagnell 2011): imitation with an expert that can be queried.

Each iteration (one Lightning step) runs the current policy in `env.num_envs` envs for
`steps_per_iteration` steps, executing the expert's action instead with probability beta_i (per step
and env), labels every visited state with the expert's action, adds those pairs to the aggregate
dataset D (never forgotten) and trains the policy by regression on D for `updates_per_iteration`
minibatch updates (BC's MSE loss; cross-entropy for discrete actions).

beta_i = beta0 * beta_decay**i. With beta0 = 1 the first iteration is the BC warm start: the expert
drives, the policy is trained on pure expert demonstrations. Every env step queries the expert once,
so `algo.total_timesteps` is also the number of expert labels (the budget of the IL comparison).

The expert acts in env units: a scripted controller (`algo.expert`, a Hydra `_target_`, default the
Pendulum swing-up) or any vla_hydra checkpoint (`algo.expert_ckpt=<path>`, which wins when given),
checked before anything is built and loaded when training starts, through vla_hydra.eval.load_policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vla_hydra.algos.bc import bc_mse_loss
from vla_hydra.algos.online import OnlineAlgorithm
from vla_hydra.core.exceptions import ConfigError
from vla_hydra.data.buffer import ReplayBuffer
from vla_hydra.envs.factory import EnvFactory, EnvSpec

_DATASET_KEY = "dagger_dataset"


def expert_mixing_probability(iteration: int, beta0: float, beta_decay: float) -> float:
    """beta_i = beta0 * beta_decay**i: the probability that a step of iteration i executes the expert's action."""
    return float(beta0) * float(beta_decay) ** int(iteration)


def mix_actions(
    learner_actions: np.ndarray, expert_actions: np.ndarray, use_expert: np.ndarray
) -> np.ndarray:
    """Per env: the expert's action where use_expert, else the learner's (actions (N,) or (N, action_dim))."""
    mask = use_expert.reshape(-1, *([1] * (learner_actions.ndim - 1)))
    return np.where(mask, expert_actions, learner_actions).astype(learner_actions.dtype)


def discrete_imitation_loss(log_probs_of_expert_actions: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the expert's class: -mean log pi(a_expert | s)."""
    return -log_probs_of_expert_actions.mean()


def load_expert_checkpoint(expert_ckpt: str, spec: EnvSpec, device: str):
    """The policy of `algo.expert_ckpt`, refused in one line unless it labels single states of spec's env."""
    from vla_hydra.envs.factory import env_choice_hint
    from vla_hydra.eval import load_policy

    expert, _, _ = load_policy(expert_ckpt, device=device, option="algo.expert_ckpt")
    if getattr(expert, "takes_sequences", False):
        # its action depends on its own episode's context and returns-to-go: labels for the single
        # states the learner visits would come from one endless context
        raise ConfigError(
            f"algo.expert_ckpt={expert_ckpt}: a checkpoint of algo={expert.short_name()}, which acts "
            "from a context of its own episode, so it cannot label single states; use a checkpoint of a "
            "single-observation policy (bc, td3bc, iql, cql, sac, ppo_continuous, ...)"
        )
    if (expert.spec.env_id, expert.spec.action_dim) != (spec.env_id, spec.action_dim):
        raise ConfigError(
            f"algo.expert_ckpt={expert_ckpt}: trained on {expert.spec.env_id} "
            f"(action dim {expert.spec.action_dim}), but env is {spec.env_id} "
            f"(action dim {spec.action_dim}); run with {env_choice_hint(expert.spec.env_id)}"
        )
    trained_shape, shape = tuple(expert.spec.observation_shape), tuple(spec.observation_shape)
    if trained_shape != shape:
        # e.g. trained with a frame-stacking env.wrappers: it failed on the first labels, blaming the expert
        raise ConfigError(
            f"algo.expert_ckpt={expert_ckpt}: acts on observations of shape {trained_shape}, but this run's "
            f"{spec.env_id} gives {shape}; run with the env settings (env.wrappers, env.kwargs) of the run "
            "that wrote it"
        )
    return expert


class DAgger(OnlineAlgorithm):
    """Args (beyond OnlineAlgorithm's):
    expert: callable raw observations (N, ...) -> env-unit actions (N, ...), e.g. a scripted controller.
    expert_ckpt: a vla_hydra checkpoint whose policy is the expert (overrides `expert`).
    steps_per_iteration: steps per env per iteration (the last one is shortened to the budget).
    beta0, beta_decay: the expert-mixing schedule beta_i = beta0 * beta_decay**i.
    updates_per_iteration, batch_size, lr, weight_decay: the regression on D after each collection.
    """

    name = "dagger"
    supports_discrete = True

    def __init__(
        self,
        spec: EnvSpec,
        model,
        env: EnvFactory,
        expert: Callable[[np.ndarray], np.ndarray] | None = None,
        expert_ckpt: str | None = None,
        total_timesteps: int = 2000,
        steps_per_iteration: int = 200,
        beta0: float = 1.0,
        beta_decay: float = 0.5,
        updates_per_iteration: int = 1000,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        normalize_observations: bool = True,
        seed: int = 0,
        max_updates: int = -1,
        stats=None,
    ):
        super().__init__(spec, env, total_timesteps, normalize_observations, seed, max_updates, stats=stats)
        if expert is None and not expert_ckpt:
            raise ConfigError(
                "algo=dagger: needs an expert: algo.expert=<_target_ config> or algo.expert_ckpt=<path>"
            )
        self.expert, self.expert_ckpt = expert, expert_ckpt
        self.steps_per_iteration = int(steps_per_iteration)
        self.beta0, self.beta_decay = float(beta0), float(beta_decay)
        self.updates_per_iteration, self.batch_size = int(updates_per_iteration), int(batch_size)
        self.lr, self.weight_decay = lr, weight_decay
        if spec.discrete:  # discrete actions need a policy with class probabilities
            self.actor = self.build_network(
                model,
                spec.observation_shape,
                spec.action_dim,
                discrete=True,
                needs=("log_prob",),
                use=f"model=stochastic_policy (env {spec.env_id} has discrete actions)",
            )
        else:
            self.actor = model(spec.observation_shape, spec.action_dim)
        self.dataset = self._new_dataset("cpu")
        self._expert_act: Callable[[np.ndarray], np.ndarray] | None = None

    def _new_dataset(self, device, holding: int = 0) -> ReplayBuffer:
        """DAgger's aggregate D: (raw observation, expert label) pairs. A ring that never wraps: every
        env step adds one pair, so the env-step budget (+ one vector step of slack) bounds its size; a
        resumed run's also holds the `holding` pairs its checkpoint restores (a continuation whose budget
        is below them trains no further, and must not drop labels from the checkpoint it saves again)."""
        label_shape = () if self.spec.discrete else (self.spec.action_dim,)
        fields = {"observations": tuple(self.spec.observation_shape), "labels": label_shape}
        return ReplayBuffer(max(self.total_timesteps, holding) + self.num_envs, fields, device)

    def normalized_action(self, normalized_obs: torch.Tensor) -> torch.Tensor:
        return self.actor(normalized_obs)

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.actor.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
        )

    # -- the expert ----------------------------------------------------------------------------
    @classmethod
    def check_settings(cls, spec: EnvSpec, algo_cfg: Any) -> None:
        super().check_settings(spec, algo_cfg)
        if algo_cfg.get("expert_ckpt"):  # a missing or unfit expert, before any dataset or logger is made
            load_expert_checkpoint(algo_cfg.expert_ckpt, spec, "cpu")

    def _load_expert(self) -> Callable[[np.ndarray], np.ndarray]:
        """Loaded when training starts (not in __init__), so rebuilding a trained DAgger policy for
        inference never needs the expert."""
        if not self.expert_ckpt:
            return self.expert
        expert = load_expert_checkpoint(self.expert_ckpt, self.spec, str(self.device))
        return expert.act  # a bound method: the expert's weights stay out of this module's state_dict

    def expert_labels(self, raw_obs: np.ndarray) -> np.ndarray:
        """The expert's env-unit actions for a batch of raw observations."""
        try:
            actions = np.asarray(self._expert_act(raw_obs))
        except (IndexError, ValueError, TypeError, RuntimeError) as err:  # e.g. a controller for other obs
            raise ConfigError(
                f"algo=dagger: the expert fails on {self.spec.env_id}'s observations of shape "
                f"{tuple(np.shape(raw_obs))[1:]} ({err}); is it an expert for this env?"
            ) from err
        expected = (len(raw_obs),) if self.spec.discrete else (len(raw_obs), self.spec.action_dim)
        if actions.shape != expected:
            raise ConfigError(
                f"algo=dagger: the expert returned actions of shape {actions.shape} for {self.spec.env_id}, "
                f"expected {expected}; is it an expert for this env?"
            )
        return actions

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._expert_act = self._load_expert()
        self.expert_labels(self.obs)  # an expert for another env fails here, before any evaluation
        if self.dataset.device != self.device:  # keeps what a resumed checkpoint restored
            restored = self.dataset.state_dict()
            self.dataset = self._new_dataset(self.device, len(self.dataset))
            self.dataset.load_state_dict(restored)

    # -- one iteration -------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Completed iterations, from the env-step count (so a resumed run continues the schedule)."""
        return int(self.env_steps) // (self.steps_per_iteration * self.env_steps_per_vector_step)

    @torch.no_grad()
    def collect(self, steps: int, beta: float) -> None:
        """Roll out the beta-mixture of expert and policy; add every visited state with its expert label."""
        observations, labels = [], []
        for _ in range(steps):
            raw_obs = self.obs
            expert_actions = self.expert_labels(raw_obs)
            obs_t = self.obs_tensor(raw_obs, update_stats=True)
            learner_actions = self.env_actions(self.normalized_action(obs_t))
            use_expert = (torch.rand(self.num_envs) < beta).numpy()
            self.step_envs(
                mix_actions(learner_actions, expert_actions.astype(learner_actions.dtype), use_expert)
            )
            observations.append(torch.as_tensor(np.asarray(raw_obs, dtype=np.float32), device=self.device))
            labels.append(self._label_tensor(expert_actions))
        self.dataset.add({"observations": torch.cat(observations), "labels": torch.cat(labels)})

    def _label_tensor(self, expert_actions: np.ndarray) -> torch.Tensor:
        actions = torch.as_tensor(np.asarray(expert_actions, dtype=np.float32), device=self.device)
        return actions if self.spec.discrete else self.action_scaler.normalize(actions)

    def imitation_loss(self, raw_obs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normalized_obs = self.obs_normalizer(raw_obs)
        if self.spec.discrete:
            return discrete_imitation_loss(self.actor.log_prob(normalized_obs, labels.long()))
        return bc_mse_loss(self.actor(normalized_obs), labels)

    def train_iteration(self, optimizers) -> dict[str, torch.Tensor]:
        optimizer = optimizers
        beta = expert_mixing_probability(self.iteration, self.beta0, self.beta_decay)
        # vector steps left in the budget (ceil)
        remaining = -(-(self.total_timesteps - int(self.env_steps)) // self.env_steps_per_vector_step)
        self.collect(min(self.steps_per_iteration, remaining), beta)
        loss = torch.zeros((), device=self.device)
        for _ in range(self.updates_per_iteration):
            batch = self.dataset.sample((self.batch_size,))
            loss = self.imitation_loss(batch["observations"], batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            self.backprop(loss)
            self.step_optimizer(optimizer)
        return {
            "imitation_loss": loss.detach(),
            "beta": torch.tensor(beta),
            "dataset_size": torch.tensor(float(len(self.dataset))),
        }

    # -- resume: the aggregate dataset travels in the checkpoint (not in the state_dict that inference loads)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[_DATASET_KEY] = self.dataset.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if _DATASET_KEY in checkpoint:
            restored = checkpoint[_DATASET_KEY]
            self.dataset = self._new_dataset(self.dataset.device, int(restored["size"]))
            self.dataset.load_state_dict(restored)
