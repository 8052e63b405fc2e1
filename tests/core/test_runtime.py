"""Device selection: a device this machine lacks, or no device at all, is a one-line ConfigError."""

from __future__ import annotations

import pytest
import torch

from vla_hydra.core.exceptions import ConfigError
from vla_hydra.core.runtime import select_device


def test_cpu_and_auto_select_a_device():
    assert select_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert select_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"^device=cuda: no CUDA GPU on this machine; use device=cpu \(or auto\)$"
    ):
        select_device("cuda")


@pytest.mark.skipif(
    getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    reason="checks the refusal on a machine without MPS",
)
def test_mps_on_a_machine_without_it_is_refused_in_one_line():
    """vla_hydra.eval device=mps off a Mac called the checkpoint unreadable (torch.load's 'Storage device
    not recognized: mps')."""
    with pytest.raises(
        ConfigError, match=r"^device=mps: no Apple MPS device on this machine; use device=cpu \(or auto\)$"
    ):
        select_device("mps")
    with pytest.raises(ConfigError, match=r"^device=meta: not a device vla_hydra runs on \(expected auto, "):
        select_device("meta")


def test_a_name_that_is_no_device_is_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"^device=tpu: not a torch device \(expected auto, cpu, cuda, cuda:N or mps\)$"
    ):
        select_device("tpu")
