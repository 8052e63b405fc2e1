"""DecisionTransformerNet: causal masking on the real model, output range, what each prediction reads."""

from __future__ import annotations

import pytest
import torch

from vla_hydra.models.transformer import CausalSelfAttention, DecisionTransformerNet

B, T, STATE_DIM, ACTION_DIM = 3, 6, 4, 2


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(B, T, STATE_DIM, generator=g),
        torch.rand(B, T, ACTION_DIM, generator=g) * 2 - 1,
        torch.randn(B, T, generator=g),
        torch.randint(0, 200, (B, T), generator=g),
    ]


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = DecisionTransformerNet(
        STATE_DIM, ACTION_DIM, max_episode_steps=200, embedding_dim=32, num_layers=2
    )
    return model.eval()  # no dropout: outputs are a function of the inputs


def test_output_shape_and_tanh_range(net):
    out = net(*_inputs())
    assert out.shape == (B, T, ACTION_DIM)
    assert out.abs().max() < 1.0


@pytest.mark.parametrize("which", [0, 1, 2, 3])  # state, action, return-to-go, timestep
def test_changing_step_t_never_changes_earlier_predictions(net, which):
    t = 3
    inputs = _inputs()
    before = net(*inputs)
    changed = [x.clone() for x in inputs]
    changed[which][:, t] = (changed[which][:, t] + 57) if which == 3 else (changed[which][:, t] + 5.0)
    after = net(*changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    # a_t's token comes after s_t's, so the action at step t must not read a_t either
    if which == 1:
        torch.testing.assert_close(after[:, t], before[:, t], rtol=0, atol=1e-6)
    else:  # R_t, s_t and t itself are read by the prediction at step t (so the model is not blind)
        assert (after[:, t] - before[:, t]).abs().max() > 1e-4
    # and everything later sees the change
    assert (after[:, t + 1 :] - before[:, t + 1 :]).abs().amax(dim=(0, 2)).min() > 1e-5


def test_causal_attention_is_lower_triangular():
    torch.manual_seed(0)
    attn = CausalSelfAttention(embedding_dim=8, num_heads=2).eval()
    x = torch.randn(1, 5, 8)
    jac = torch.autograd.functional.jacobian(attn, x)  # (1, 5, 8, 1, 5, 8)
    influence = jac[0, :, :, 0].abs().sum(dim=(1, 3))  # output token i <- input token j
    assert torch.all(influence.triu(diagonal=1) == 0)
    lower = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.all(influence[lower] > 0)


def test_shorter_context_gives_the_same_predictions_as_its_prefix(net):
    # evaluation feeds the first steps of an episode unpadded; they must match the full segment's outputs
    inputs = _inputs()
    full = net(*inputs)
    prefix = net(*[x[:, :2] for x in inputs])
    torch.testing.assert_close(prefix, full[:, :2], rtol=0, atol=1e-6)


def test_timesteps_beyond_the_embedding_reuse_the_last_index(net):
    inputs = _inputs()
    inputs[3] = torch.full((B, T), 199)
    beyond = [x.clone() for x in inputs]
    beyond[3] = torch.full((B, T), 5000)
    torch.testing.assert_close(net(*beyond), net(*inputs))


def test_dropout_is_active_in_training_mode_only(net):
    inputs = _inputs()
    net.train()
    assert not torch.equal(net(*inputs), net(*inputs))
    net.eval()
    assert torch.equal(net(*inputs), net(*inputs))


def test_heads_must_divide_embedding_dim():
    from vla_hydra.core.exceptions import ConfigError

    with pytest.raises(ConfigError, match="model.embedding_dim=10: expected a multiple of model.num_heads=3"):
        DecisionTransformerNet(3, 1, embedding_dim=10, num_heads=3)
