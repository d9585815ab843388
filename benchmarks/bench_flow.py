"""Benchmark: gradient flow against gradient descent on the bounds experiment's longest cell, one thread.

The cell: small init, L = 32, m = 16, d = 4, float64, one dataset per network (the 18 datasets of the
bounds experiment: κ ∈ {1, 10, 100} × two spectra × three directions of w*), scales 0.25..1 in units of
1/√m. In one run, side by side, alternating (best of three each):
(1) the compiled flow (dlnpipe/kernels/linear.c: the whole Dormand–Prince solver in C), the bounds'
    settings: T = 20000, rtol 1e-8, atol 1e-10, at most 3000 accepted steps, recorded every 1000;
(2) compiled GD on the same networks (small η: no network leaves early), as many steps;
(3) the torch flow (the same solver, step by step in torch: the fallback), at most 300 accepted steps.
Prints the seconds per *batched* field evaluation of each flow (wall time × B / Σ evaluations: what one
evaluation of the whole batch costs) against the seconds per batched GD step, the ratios (target: compiled
flow ≤ 1.5 × a GD step) and checks that the two flows agree where both stopped on their own.

    python benchmarks/bench_flow.py [--networks 72]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import dlnpipe
from dlnpipe import kernels

DEPTH, WIDTH, D = 32, 16, 4


def datasets() -> list:
    return [dlnpipe.make_dataset(50, D, noise=0.5, seed=7, kappa=k, spectrum=s, wstar=w)
            for k in (1, 10, 100) for s in ("geometric", "linear") for w in ("top", "bottom", "random")]


def run(sets, B: int, *, optimizer: str, compiled: bool, **kw):
    os.environ["DLNPIPE_KERNELS"] = "1" if compiled else "0"
    kernels._load.cache_clear()
    scale = np.resize(np.repeat([0.25, 0.5, 0.75, 1.0], len(sets)), B) / np.sqrt(WIDTH)
    t0 = time.perf_counter()
    res = dlnpipe.train([sets[i % len(sets)] for i in range(B)], arch="small", depth=DEPTH, width=WIDTH, scale=scale,
                        seed=np.arange(B) // (4 * len(sets)), optimizer=optimizer, log_every_s=None, **kw)
    return res, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=72)
    ap.add_argument("--gd-steps", type=int, default=3000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sets, B = datasets(), args.networks
    flow_kw = dict(lr=1.0, steps=20000, record_every=1000, flow_rtol=1e-8, flow_atol=1e-10)
    gd_kw = dict(lr=1e-5, steps=args.gd_steps, record_steps=[0, args.gd_steps], exit_fixed=False)
    run(sets, 8, optimizer="gd", compiled=True, **{**gd_kw, "steps": 10, "record_steps": [0, 10]})  # build outside
    best: dict[str, float] = {}
    out = {}
    for _ in range(3):
        for name, optimizer, compiled, kw in (("flow", "flow", True, {**flow_kw, "flow_max_steps": 3000}),
                                              ("gd", "gd", True, gd_kw),
                                              ("torch flow", "flow", False, {**flow_kw, "flow_max_steps": 300})):
            res, seconds = run(sets, B, optimizer=optimizer, compiled=compiled, **kw)
            per = seconds * B / res.extras["evaluations"].sum()
            if per < best.get(name, np.inf):
                best[name], out[name] = per, res
    print(f"Gradient flow vs GD: small init, L={DEPTH}, m={WIDTH}, d={D}, float64, {B} networks on 18 datasets, one "
          f"thread; {kernels.describe_cpu()}")
    for name, per in best.items():
        evals = out[name].extras["evaluations"]
        print(f"  {name:>10}: {per * 1e3:8.3f} ms per batched {'step' if name == 'gd' else 'field evaluation'} "
              f"({evals.sum():,} network-evaluations, median {int(np.median(evals)):,} per network)")
    print(f"  compiled flow evaluation / GD step: {best['flow'] / best['gd']:.2f}  (target <= 1.5)")
    print(f"  torch flow evaluation / compiled flow evaluation: {best['torch flow'] / best['flow']:.1f}x")
    fast, slow = out["flow"], out["torch flow"]
    both = (fast.extras["evaluations"] == slow.extras["evaluations"]) & (slow.extras["evaluations"] < 6 * 300)
    gaps = [max(float(np.abs(W[i] - R[i]).max() / np.abs(R[i]).max()) for W, R in zip(fast.layers, slow.layers))
            for i in np.flatnonzero(both)]
    if gaps:
        print(f"  agreement where both flows stopped on their own within 300 steps ({len(gaps)} networks): relative "
              f"weight difference median {np.median(gaps):.1e}, max {max(gaps):.1e}")


if __name__ == "__main__":
    main()
