"""Fixtures of the detector tests (arrays from detector_arrays.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import synthetic


@pytest.fixture(scope="module")
def train():
    return synthetic(400, seed=1)



@pytest.fixture(scope="module")
def test():
    return synthetic(120, seed=2)



@pytest.fixture()
def float64_default():
    """pytorch-ood allocates some buffers with the default dtype: compute its reference in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)



@pytest.fixture(scope="module")
def small_sets():
    from ood_core.data import get_dataset

    return get_dataset("mnist").subset(np.arange(24)), get_dataset("uniform").subset(np.arange(24))
