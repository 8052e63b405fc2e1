"""Actors and critics: log-densities against hand-computed numbers and torch.distributions, the
batched twin critic against standalone critics, the target-network update math."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from vla_hydra.models.actors import (
    GaussianActor,
    TanhGaussianActor,
    normal_log_prob,
    tanh_log_det_jacobian,
)
from vla_hydra.models.critics import EnsembleQNetwork, QNetwork, ValueNetwork, soft_update


def test_normal_log_prob_hand_computed():
    # dim 1: x=0.5, mean 0, std 1: -0.5*0.25 - 0 - 0.5*log(2 pi) = -0.125 - 0.918939 = -1.043939
    # dim 2: x=1, mean 0.5, std 2: z = 0.25, -0.5*0.0625 - log 2 - 0.918939 = -1.643336
    x = torch.tensor([[0.5, 1.0]])
    mean = torch.tensor([[0.0, 0.5]])
    log_std = torch.tensor([[0.0, math.log(2.0)]])
    assert normal_log_prob(x, mean, log_std).item() == pytest.approx(-1.043939 - 1.643336, abs=1e-5)


def test_tanh_log_det_jacobian_hand_computed_and_finite_far_out():
    # u=0: log(1 - 0) = 0; u=0.5: tanh 0.462117, 1 - 0.213552 = 0.786448, log = -0.240229 (summed)
    assert tanh_log_det_jacobian(torch.tensor([0.0, 0.5])).item() == pytest.approx(-0.240229, abs=1e-5)
    # u=20: 1 - tanh^2 underflows in float32, the softplus form gives 2 (log 2 - 20) = -38.613706
    assert tanh_log_det_jacobian(torch.tensor([20.0])).item() == pytest.approx(-38.613706, abs=1e-4)


def _tanh_actor(action_dim=2, seed=0):
    torch.manual_seed(seed)
    actor = TanhGaussianActor((3,), action_dim, hidden_dims=(32, 32))
    # the near-zero CORL init makes every state's distribution alike; spread them for the checks
    torch.nn.init.normal_(actor.net[-1].weight, std=0.5)
    return actor


def test_tanh_gaussian_log_prob_matches_change_of_variables_and_torch_distributions():
    actor = _tanh_actor()
    obs = torch.randn(64, 3)
    actions = torch.rand(64, 2) * 1.9 - 0.95
    with torch.no_grad():
        log_prob = actor.log_prob(obs, actions)
        mean, log_std = actor.mean_log_std(obs)
        # numerical change of variables: p_a(a) = p_u(atanh a) / |d tanh/du| = p_u(u) / (1 - a^2)
        u = torch.atanh(actions)
        by_hand = (Normal(mean, log_std.exp()).log_prob(u) - torch.log1p(-actions.square())).sum(-1)
        dist = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform())
        reference = dist.log_prob(actions).sum(-1)
    assert log_prob.shape == (64,)
    torch.testing.assert_close(log_prob, by_hand, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_prob, reference, rtol=1e-4, atol=1e-4)


def test_tanh_gaussian_log_prob_is_finite_at_the_action_bounds():
    actor = _tanh_actor()
    obs = torch.randn(4, 3)
    at_bounds = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    log_prob = actor.log_prob(obs, at_bounds)
    assert torch.isfinite(log_prob).all()
    # +-1 is scored as +-(1 - 1e-6) (atanh 7.25), not mapped to infinity
    inside = at_bounds.clamp(-(1 - 1e-6), 1 - 1e-6)
    torch.testing.assert_close(log_prob, actor.log_prob(obs, inside))


def test_tanh_gaussian_sample_shapes_bounds_and_log_prob_consistent():
    actor = _tanh_actor()
    obs = torch.randn(16, 3)
    torch.manual_seed(1)
    action, log_prob = actor.sample(obs)
    assert action.shape == (16, 2) and log_prob.shape == (16,)
    assert action.abs().max() < 1.0
    # the returned log-density is that of the returned action
    torch.testing.assert_close(log_prob, actor.log_prob(obs, action), rtol=1e-3, atol=1e-3)
    # n samples per observation: one network pass, samples differ, densities match too
    many, many_log_prob = actor.sample(obs, num_samples=5)
    assert many.shape == (16, 5, 2) and many_log_prob.shape == (16, 5)
    assert (many[:, 0] != many[:, 1]).all()
    repeated_obs = obs.unsqueeze(1).expand(-1, 5, -1)
    torch.testing.assert_close(many_log_prob, actor.log_prob(repeated_obs, many), rtol=1e-3, atol=1e-3)


def test_tanh_gaussian_sample_is_reparameterised_and_forward_is_tanh_of_mean():
    actor = _tanh_actor()
    obs = torch.randn(8, 3)
    action, log_prob = actor.sample(obs)
    (action.sum() + log_prob.sum()).backward()
    assert actor.net[0].weight.grad is not None and actor.net[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(actor(obs), torch.tanh(actor.mean_log_std(obs)[0]))


def test_tanh_gaussian_default_init_follows_corl():
    torch.manual_seed(0)
    actor = TanhGaussianActor((3,), 1)
    assert [m.out_features for m in actor.net if isinstance(m, torch.nn.Linear)] == [256, 256, 256, 2]
    with torch.no_grad():
        mean, log_std = actor.mean_log_std(torch.randn(32, 3))
    # near-zero last layer: mean ~ 0 and log std ~ the -1 offset for every state
    assert mean.abs().max() < 0.1 and (log_std + 1.0).abs().max() < 0.1


def test_gaussian_actor_log_prob_is_normal_around_tanh_mean():
    torch.manual_seed(0)
    actor = GaussianActor((3,), 2, hidden_dims=(32,))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([0.0, math.log(2.0)]))
    obs = torch.randn(10, 3)
    actions = torch.rand(10, 2) * 2 - 1
    with torch.no_grad():
        mean = torch.tanh(actor.net(obs))
        expected = Normal(mean, torch.tensor([1.0, 2.0])).log_prob(actions).sum(-1)
        torch.testing.assert_close(actor.log_prob(obs, actions), expected)
        torch.testing.assert_close(actor(obs), mean)
        # log std is clamped to [-20, 2]
        actor.log_std.fill_(5.0)
        clamped = Normal(mean, math.exp(2.0)).log_prob(actions).sum(-1)
        torch.testing.assert_close(actor.log_prob(obs, actions), clamped)


def test_soft_update_hand_computed():
    source, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(3.0)
        for p in target.parameters():
            p.fill_(1.0)
    soft_update(target, source, 0.25)
    # (1 - 0.25) * 1 + 0.25 * 3 = 1.5
    assert all(torch.all(p == 1.5) for p in target.parameters())
    assert all(torch.all(p == 3.0) for p in source.parameters())  # the source is untouched
    soft_update(target, source, 1.0)
    assert all(torch.all(p == 3.0) for p in target.parameters())


@pytest.mark.parametrize("batched", [False, True])
def test_ensemble_q_equals_its_critics_run_one_by_one(batched):
    torch.manual_seed(0)
    ensemble = EnsembleQNetwork((3,), 2, hidden_dims=(16, 16), num_critics=2)
    ensemble.batched_matmul = batched  # True: the bmm path CUDA uses, checked here on the CPU
    critics = [ensemble.critic(i) for i in range(2)]
    assert all(isinstance(c, QNetwork) for c in critics)
    obs, actions = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    many = torch.rand(5, 4, 2) * 2 - 1  # 4 candidate actions per observation
    with torch.no_grad():
        q = ensemble(obs, actions)
        q_many = ensemble(obs, many)
        assert q.shape == (2, 5) and q_many.shape == (2, 5, 4)
        for i, critic in enumerate(critics):
            torch.testing.assert_close(q[i], critic(obs, actions))
            torch.testing.assert_close(q_many[i], critic(obs.unsqueeze(1).expand(-1, 4, -1), many))
        torch.testing.assert_close(ensemble(obs, actions, critic=1), q[1])  # one critic only
        torch.testing.assert_close(ensemble(obs, many, critic=0), q_many[0])
    assert not torch.allclose(q[0], q[1])  # independently initialised


def test_ensemble_q_detach_params_passes_gradient_to_actions_only():
    torch.manual_seed(0)
    ensemble = EnsembleQNetwork((3,), 1, hidden_dims=(16,))
    obs = torch.randn(4, 3)
    actions = torch.zeros(4, 1, requires_grad=True)
    ensemble(obs, actions, detach_params=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in ensemble.parameters())
    ensemble(obs, actions).sum().backward()
    assert all(p.grad is not None for p in ensemble.parameters())


def test_ensemble_q_orthogonal_init():
    torch.manual_seed(0)
    ensemble = EnsembleQNetwork((3,), 1, hidden_dims=(8, 8), orthogonal_init=True)
    hidden = ensemble.weights[1]  # (2, 8, 8): orthogonal with gain sqrt(2) -> W^T W = 2 I
    for i in range(2):
        torch.testing.assert_close(hidden[i].T @ hidden[i], 2.0 * torch.eye(8), atol=1e-5, rtol=0)
    assert ensemble.weights[-1].abs().max() < 0.02 and torch.all(ensemble.biases[0] == 0)


def test_value_network_shape():
    value = ValueNetwork((3,), hidden_dims=(8,))
    assert value(torch.randn(7, 3)).shape == (7,)


def test_discrete_stochastic_policy_samples_its_softmax_and_returns_matching_log_probs():
    from vla_hydra.models.policies import StochasticPolicy

    torch.manual_seed(0)
    policy = StochasticPolicy((2,), 3, discrete=True)
    with torch.no_grad():
        policy.net[-1].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))  # distinct class probabilities
    obs = torch.zeros(200_000, 2)
    with torch.no_grad():
        action, log_prob = policy.sample(obs)
        probs = torch.softmax(policy._head(obs[:1]), -1)[0]
        frequencies = torch.bincount(action, minlength=3).double() / len(action)
    assert action.dtype == torch.long and action.shape == (200_000,)
    # Gumbel-max sampling: frequencies match the softmax (e^1 : e^0 : e^-1 ~ 0.665 : 0.245 : 0.090)
    torch.testing.assert_close(frequencies, probs.double(), atol=0.005, rtol=0)
    torch.testing.assert_close(log_prob, policy.log_prob(obs, action))


@pytest.mark.parametrize("build", ["mlp", "critics"])
def test_an_unknown_activation_is_a_one_line_config_error(build):
    from vla_hydra.core.exceptions import ConfigError
    from vla_hydra.models.mlp import mlp

    with pytest.raises(ConfigError, match=r"^activation=foo: expected one of gelu, relu, silu, tanh$"):
        mlp(3, 1, [8], activation="foo") if build == "mlp" else EnsembleQNetwork(
            (3,), 1, [8], activation="foo"
        )


def test_critics_without_a_hidden_layer_are_a_one_line_config_error():
    from vla_hydra.core.exceptions import ConfigError

    # forward needs a first hidden layer: algo.critic_hidden_dims=[] was a RuntimeError at the first update
    with pytest.raises(ConfigError, match=r"^algo.critic_hidden_dims=\[\]: expected at least one hidden"):
        EnsembleQNetwork((3,), 1, [])
