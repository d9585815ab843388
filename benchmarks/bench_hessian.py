"""Benchmark: the Hessian's trace (Hutchinson) and spectral density (stochastic Lanczos quadrature) for the
fig1 cell, dlnpipe against the general tools' way, side by side in one run.

(1) dlnpipe: all networks of the fig1 grid (L = 10, m = d = 5, 1600 networks) in one batch: the
    block-diagonal Hessian of the batch's loss (on the moments of the data), one double-backward product
    for every network and probe at once, per-network Krylov spaces;
(2) the general tools' way (PyHessian-like): one network at a time, the loss written on the data, one
    autograd Hessian-vector product per probe vector, Lanczos for each probe on its own.
Both use the same probes (dlnpipe.spectrum.rademacher), so the estimates must agree; the naive procedure
runs on a subset of the networks and its time is scaled to the whole cell. Prints seconds, the ratios and
the agreement.

    python benchmarks/bench_hessian.py [--probes 32] [--density-probes 4] [--steps 40] [--naive-networks 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import dlnpipe
from dlnpipe.spectrum import hessian_trace, rademacher, spectral_density

FIG1 = {0.005: 20, 0.02: 20, 0.07: 20, 0.1: 20, 0.2: 80}  # η -> seeds; scales linspace(0.25, 0.6, 10)
DEPTH, WIDTH = 10, 5


def fig1_networks(d: int) -> tuple[list, np.ndarray]:
    nets, seeds = [], []
    for _, n_seeds in FIG1.items():
        for s in np.linspace(0.25, 0.6, 10):
            for _ in range(n_seeds):
                seeds.append(len(seeds))
                nets.append(dlnpipe.init_network("small", depth=DEPTH, width=WIDTH, d=d, scale=s, seed=seeds[-1]))
    return nets, np.array(seeds)


def naive_hvp(ds, net):
    """The general tools' Hessian-vector product of one network: autograd on the data loss."""
    X, y = torch.tensor(ds.X), torch.tensor(ds.y)
    Ws = [torch.tensor(W, requires_grad=True) for W in net.layers]
    h = X
    for W in Ws:
        h = h @ W.T
    loss = ((y - h[:, 0]) ** 2).mean()
    grads = torch.autograd.grad(loss, Ws, create_graph=True)
    shapes = [W.shape for W in Ws]

    def hvp(v: np.ndarray) -> np.ndarray:
        vs, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            vs.append(torch.tensor(v[start:start + size]).reshape(shape))
            start += size
        hv = torch.autograd.grad(grads, Ws, grad_outputs=vs, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    return hvp


def naive_lanczos(hvp, v: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos with full re-orthogonalisation from one probe: (nodes, weights)."""
    V, alpha, beta = [v / np.linalg.norm(v)], [], []
    for j in range(steps):
        w = hvp(V[-1])
        alpha.append(V[-1] @ w)
        w = w - alpha[-1] * V[-1] - (beta[-1] * V[-2] if j else 0)
        B = np.array(V)
        for _ in range(2):
            w = w - B.T @ (B @ w)
        if j + 1 < steps:
            beta.append(np.linalg.norm(w))
            V.append(w / beta[-1])
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, S = np.linalg.eigh(T)
    return theta, S[0] ** 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=32, help="Hutchinson probes per network")
    ap.add_argument("--density-probes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="Lanczos steps per density probe")
    ap.add_argument("--naive-networks", type=int, default=16, help="networks the naive procedure measures")
    args = ap.parse_args(argv)
    ds = dlnpipe.make_dataset(50, 5, noise=1.0, seed=66)
    nets, seeds = fig1_networks(ds.d)
    B, P = len(nets), sum(W.size for W in nets[0].layers)
    print(f"fig1 cell: {B} networks, {P} parameters each; trace: {args.probes} Hutchinson probes; density: "
          f"{args.density_probes} probes x {args.steps} Lanczos steps; torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    tr = hessian_trace(ds, nets, method="hutchinson", probes=args.probes, seeds=seeds)
    t_trace = time.perf_counter() - t0
    t0 = time.perf_counter()
    sd = spectral_density(ds, nets, probes=args.density_probes, steps=args.steps, seeds=seeds)
    t_density = time.perf_counter() - t0

    sub = np.linspace(0, B - 1, args.naive_networks).round().astype(int)
    z = rademacher(seeds[sub], args.probes, P, stream=2_000_003)
    v = rademacher(seeds[sub], args.density_probes, P, stream=3_000_017)
    t0 = time.perf_counter()
    naive_trace = np.array([np.mean([zi @ hvp(zi) for zi in z[j]]) for j, hvp in
                            enumerate(naive_hvp(ds, nets[i]) for i in sub)])
    t_naive_trace = (time.perf_counter() - t0) * B / len(sub)
    t0 = time.perf_counter()
    naive_top = []
    for j, i in enumerate(sub):
        hvp = naive_hvp(ds, nets[i])
        naive_top.append(max(naive_lanczos(hvp, v[j, p], args.steps)[0].max() for p in range(args.density_probes)))
    t_naive_density = (time.perf_counter() - t0) * B / len(sub)

    print(f"  trace   : dlnpipe {t_trace:7.2f} s, naive {t_naive_trace:8.1f} s (scaled from {len(sub)} networks): "
          f"{t_naive_trace / t_trace:.0f}x")
    print(f"  density : dlnpipe {t_density:7.2f} s, naive {t_naive_density:8.1f} s (scaled): "
          f"{t_naive_density / t_density:.0f}x")
    rel = np.abs(tr.value[sub] - naive_trace) / np.abs(naive_trace)
    top = np.nanmax(sd.nodes[sub], axis=(1, 2))
    print(f"  agreement, same probes: trace max relative difference {rel.max():.1e}; largest density node "
          f"max relative difference {np.max(np.abs(top - naive_top) / np.abs(naive_top)):.1e}")


if __name__ == "__main__":
    main()
