import numpy as np
import pytest
import torch

torch.set_default_dtype(torch.float64)


@pytest.fixture(scope="session")
def paper_data():
    """The paper's fig1 design: n=50, d=5, noise 1, Gaussian X (κ ≈ 2.8 for this seed)."""
    import dlnpipe

    return dlnpipe.make_dataset(50, 5, noise=1.0, seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
