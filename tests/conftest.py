import numpy as np
import pytest
import torch

torch.set_default_dtype(torch.float64)


@pytest.fixture(scope="session")
def paper_data():
    """The paper's fig1 design: n=50, d=5, noise 1, Gaussian X (κ ≈ 2.8 for this seed)."""
    import dlnpipe

    return dlnpipe.make_dataset(50, 5, noise=1.0, seed=0)


@pytest.fixture(scope="session")
def tiny_data():
    """12 samples in d = 3, for the tiny networks of tests/tiny.py."""
    import dlnpipe

    return dlnpipe.make_dataset(12, 3, noise=0.5, seed=5)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The quick config run once through Snakemake's CLI with 2 cores (parallel jobs), shared by tests."""
    from workflow_utils import QUICK, snakemake, workdir

    wd = workdir(tmp_path_factory.mktemp("quick"))
    snakemake(wd, "--configfile", str(QUICK), "--cores", "2")
    return wd


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly (with the reason) where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
