"""The library in a dozen lines: data with an exact condition number, a batch of networks trained at once,
their sharpness and trace against the theory's bounds."""

import numpy as np

import dlnpipe

ds = dlnpipe.make_dataset(50, 5, kappa=10, spectrum="geometric", wstar="random", seed=0)
b = dlnpipe.bounds(ds, depth=4)
res = dlnpipe.train(ds, arch="small", depth=4, width=5, lr=0.02, scale=np.linspace(0.2, 0.5, 8), seed=range(8),
                    steps=5000, log_every_s=None)
s = dlnpipe.sharpness(ds, res, k=2).values
tr = dlnpipe.hessian_trace(ds, res, method="exact").value
print(f"S_min = {b.s_min:.3f}, 8LΛ = {b.s_upper:.3f}, η_c = {b.eta_c:.3f}, T_min = {b.trace_min:.3f}")
for scale, status, si, ti in zip(res.scale, res.status, s, tr):
    print(f"s = {scale:.3f}  {dlnpipe.Status(status).meaning:9s}  S/S_min = {si / b.s_min:.3f}  "
          f"tr H/T_min = {ti / b.trace_min:.3f}")
