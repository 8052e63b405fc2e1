"""run_cli: an entry point's task that fails on the user's config ends with one `error:` line, exit code 1."""

from __future__ import annotations

import pytest


def test_a_model_config_without_partial_says_to_add_it(capsys):
    """A user's model yaml without `_partial_: true` was told to add observation_shape and action_dim with
    `+model.<name>=`, which the algorithm passes from the env."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vla_hydra.cli.entry import run_cli

    cfg = OmegaConf.create(
        {"model": {"_target_": "vla_hydra.models.mlp.DeterministicActor", "hidden_dims": [8]}}
    )
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda c: instantiate(c.model), cfg)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: model: vla_hydra.models.mlp.DeterministicActor needs 'observation_shape' and 'action_dim', "
        "which the algorithm passes from the env; add `_partial_: true` to the model config (as "
        "conf/model/*.yaml have)"
    )
