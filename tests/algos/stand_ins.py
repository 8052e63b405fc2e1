"""Hand-computable stand-ins for the networks of actor-critic algorithms, for tests that check an
update's wiring (which states, which critics, which terminals) against values worked out by hand."""

from __future__ import annotations

import torch


class StateCritics(torch.nn.Module):
    """Q_k(s, a) = w s[1] + k + offset for k = 0, 1, whatever the action: (2, B), or (2, B, n) for (B, n, A)
    candidate actions, like EnsembleQNetwork."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, obs, action, detach_params=False, critic=None):
        base = self.w * obs[:, 1]
        if action.dim() == 3:  # (B, n, A) candidates
            base = base.unsqueeze(-1).expand(-1, action.shape[1])
        return torch.stack([base, base + 1.0]) + self.offset
