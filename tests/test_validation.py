"""Bad input raises a ValueError that names the argument and the offending value."""

import numpy as np
import pytest

import dlnpipe


@pytest.mark.parametrize("call,pattern", [
    (lambda ds: dlnpipe.init_network("small", depth=0, width=5, d=5, scale=0.1, seed=0), r"depth.*0"),
    (lambda ds: dlnpipe.train(ds, arch="small", depth=0, width=5, lr=0.1, scale=0.1, seed=0, steps=1),
     r"depth.*0"),
    (lambda ds: dlnpipe.bounds(ds, 0), r"depth.*0"),
    (lambda ds: dlnpipe.make_dataset(20, 4, kappa=0.5), r"kappa.*0\.5"),
    (lambda ds: dlnpipe.make_dataset(20, 4, kappa=float("nan")), r"kappa.*nan"),
    (lambda ds: dlnpipe.init_network("residual", depth=3, width=3, d=5, scale=0.1, seed=0),
     r"width.*3.*d=5"),
    (lambda ds: dlnpipe.train(ds, arch="residual", depth=3, width=4, lr=0.1, scale=0.1, seed=0, steps=1),
     r"width.*4.*d=5"),
    (lambda ds: dlnpipe.init_network("cnn", depth=3, width=5, d=5, scale=0.1, seed=0), r"arch 'cnn'"),
    (lambda ds: dlnpipe.train(ds, arch="mlp", depth=3, width=5, lr=0.1, scale=0.1, seed=0, steps=1),
     r"arch 'mlp'"),
    (lambda ds: dlnpipe.sharpness(ds, dlnpipe.bounds(ds, 2).balanced, method="arnoldi"), r"method 'arnoldi'"),
    (lambda ds: dlnpipe.train(ds, arch="small", depth=2, width=5, lr=0.1, scale=0.1, seed=0, steps=1,
                              optimizer="adamw"), r"optimizer 'adamw'"),
    (lambda ds: dlnpipe.train(ds, arch="small", depth=2, width=5, lr=0.1, scale=0.1, seed=0, steps=1, momentum=0.9),
     r"optimizer 'gd' takes no option 'momentum'"),
    (lambda ds: dlnpipe.train(ds, arch="small", depth=2, width=5, lr=-0.1, scale=0.1, seed=0, steps=1),
     r"lr.*-0\.1"),
    (lambda ds: dlnpipe.train(ds, arch="small", depth=2, width=5, lr=0.1, scale=0.1, seed=0, steps=1,
                              dtype="float16"), r"dtype 'float16'"),
    (lambda ds: dlnpipe.make_dataset(20, 4, spectrum="cubic", kappa=3), r"spectrum 'cubic'"),
    (lambda ds: dlnpipe.make_dataset(0, 4), r"n.*0"),
    (lambda ds: dlnpipe.dataset_from_arrays(np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2)),
     r"X has 1 non-finite.*\(0, 1\)"),
    (lambda ds: dlnpipe.dataset_from_arrays(np.eye(2), np.array([1.0, np.inf])), r"y has 1 non-finite"),
])
def test_bad_input_is_named(paper_data, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(paper_data)
