"""Tiny networks of every architecture, small enough for dense Hessians (the ground truth of the sharpness,
trace and density tests). The dataset they are drawn for is conftest's ``tiny_data``."""

import dlnpipe

TINY = {"small": dict(depth=3, width=4), "residual": dict(depth=3, width=6), "gelu": dict(depth=3, width=4),
        "relu": dict(depth=3, width=4)}


def tiny_net(arch, ds, seed=0, scale=0.9):
    return dlnpipe.init_network(arch, d=ds.d, scale=scale, seed=seed, p_seed=1, **TINY[arch])
