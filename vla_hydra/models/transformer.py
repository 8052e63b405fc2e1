"""A small causal GPT over interleaved (return-to-go, state, action) tokens: the Decision Transformer's
network (Chen et al. 2021; sizes and initialisation as in CORL's DT)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where token i attends to tokens 0..i only (scaled_dot_product_attention)."""

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embedding_dim % num_heads:
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError(
                f"model.embedding_dim={embedding_dim}: expected a multiple of model.num_heads={num_heads}"
            )
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(embedding_dim, 3 * embedding_dim)
        self.proj = nn.Linear(embedding_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        # (B, L, 3, H, D/H) -> three (B, H, L, D/H)
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.attention = CausalSelfAttention(embedding_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, 4 * embedding_dim),
            nn.GELU(),
            nn.Linear(4 * embedding_dim, embedding_dim),
            nn.Dropout(dropout),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep_every: int = 1, keep_offset: int = 0) -> torch.Tensor:
        """`keep_every`/`keep_offset`: return only tokens offset, offset+every, ...; attention still reads
        all of them, but the MLP (2/3 of the block's FLOPs) runs only on the tokens kept."""
        x = x + self.drop(self.attention(self.norm1(x)))
        if keep_every > 1:
            x = x[:, keep_offset::keep_every]
        return x + self.mlp(self.norm2(x))


class DecisionTransformerNet(nn.Module):
    """(returns_to_go, states, actions, timesteps), each (B, T, ...) -> predicted actions (B, T, action_dim)
    in [-1, 1] (tanh).

    The sequence is R_0, s_0, a_0, R_1, s_1, a_1, ...; action t is read from the output at s_t's token,
    which under causal attention sees R_0..R_t, s_0..s_t and a_0..a_{t-1} but never a_t or anything
    later. Inputs are expected already normalised (states) and scaled (returns); timesteps index a learned
    embedding added to all three tokens of a step and are clamped to `max_episode_steps - 1`.
    """

    takes_sequences = True  # algorithms on single observations refuse it (PolicyAlgorithm.build_network)

    def __init__(
        self,
        observation_shape: int | Sequence[int],
        action_dim: int,
        max_episode_steps: int = 1000,
        embedding_dim: int = 128,
        num_layers: int = 3,
        num_heads: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__()
        # `model=` builds every network as model(observation_shape, action_dim); states are flattened
        self.state_dim = math.prod(
            (observation_shape,) if isinstance(observation_shape, int) else observation_shape
        )
        self.action_dim = int(action_dim)
        self.max_episode_steps = int(max_episode_steps)
        self.timestep_embedding = nn.Embedding(self.max_episode_steps, embedding_dim)
        self.return_embedding = nn.Linear(1, embedding_dim)
        self.state_embedding = nn.Linear(self.state_dim, embedding_dim)
        self.action_embedding = nn.Linear(self.action_dim, embedding_dim)
        self.embedding_norm = nn.LayerNorm(embedding_dim)
        self.embedding_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [TransformerBlock(embedding_dim, num_heads, dropout) for _ in range(num_layers)]
        )
        self.output_norm = nn.LayerNorm(embedding_dim)
        self.action_head = nn.Linear(embedding_dim, self.action_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2 initialisation (as CORL's DT): small normal weights, zero biases, identity LayerNorms.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        batch, length = states.shape[:2]
        time = self.timestep_embedding(timesteps.clamp(0, self.max_episode_steps - 1))
        tokens = torch.stack(
            [
                self.return_embedding(returns_to_go.unsqueeze(-1)) + time,
                self.state_embedding(states.reshape(batch, length, self.state_dim)) + time,
                self.action_embedding(actions.reshape(batch, length, self.action_dim)) + time,
            ],
            dim=2,
        ).reshape(batch, 3 * length, -1)
        x = self.embedding_drop(self.embedding_norm(tokens))
        for block in self.blocks[:-1]:
            x = block(x)
        # only the state tokens' outputs are read, so the last block computes its MLP for those alone
        state_tokens = self.blocks[-1](x, keep_every=3, keep_offset=1)
        return torch.tanh(self.action_head(self.output_norm(state_tokens)))
