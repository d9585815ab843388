"""Benchmark: the paper's fig1 procedure, naive (as the authors did) against dlnpipe, side by side.

(1) naive: one network at a time, loss on the data, autograd gradients, sharpness by 20 power
    iterations (double-backward HVPs) every 5 steps;
(2) dlnpipe: every network of the grid in one batch, hand-written gradient from the moments of the
    data, one batched Lanczos at the end.

Both train the same networks (same init, η, steps) in float64 and the script checks they end at the
same weights. Prints the speed ratio, network-steps per second, the cost of one HVP relative to one
gradient, and the cost of a step as n grows (dlnpipe's does not depend on n).

    python benchmarks/bench_fig1.py                      # 4 seeds per (η, s): 200 networks, 1% of the steps
    python benchmarks/bench_fig1.py --seeds 0 --step-fraction 0.01   # the whole grid (1800 networks)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import dlnpipe
from dlnpipe import archs
from dlnpipe.hessian import HessianOperator
from dlnpipe.problem import Problem
from dlnpipe.tensors import stack_weights

SMALL = archs.get("small")

# fig1 (docs/theory.md#the-papers-experiments): η -> (steps, seeds); scales linspace(0.25, 0.6, 10);
# L = 10, m = d = 5, n = 50.
FIG1 = {0.005: (40_000, 20), 0.02: (10_000, 20), 0.07: (4_000, 20), 0.1: (4_000, 20), 0.2: (2_000, 80)}
SCALES = np.linspace(0.25, 0.6, 10)
DEPTH, WIDTH = 10, 5


def grid(step_fraction: float, max_seeds: int | None):
    lr, scale, seed, steps = [], [], [], []
    for eta, (n_steps, n_seeds) in FIG1.items():
        for s in SCALES:
            for _ in range(min(n_seeds, max_seeds or n_seeds)):
                lr.append(eta)
                scale.append(s)
                seed.append(len(seed))
                steps.append(max(1, int(round(n_steps * step_fraction))))
    return np.array(lr), np.array(scale), np.array(seed), np.array(steps)


def naive_train(ds, net, lr: float, steps: int, *, power_every=5, power_iters=20, explode=1e6):
    """One network, the straightforward way. Returns final layers and the sharpness trajectory."""
    X, y = torch.tensor(ds.X), torch.tensor(ds.y)
    Ws = [torch.tensor(W, requires_grad=True) for W in net.layers]

    def data_loss():
        out = X
        for W in Ws:
            out = out @ W.T
        return ((y - out[:, 0]) ** 2).mean()

    def power_sharpness(gen):
        value = data_loss()
        grads = torch.autograd.grad(value, Ws, create_graph=True)
        v = [torch.randn(W.shape, generator=gen, dtype=W.dtype) for W in Ws]
        lam = torch.tensor(0.0)
        for _ in range(power_iters):
            norm = torch.sqrt(sum((u**2).sum() for u in v))
            v = [u / norm for u in v]
            hv = torch.autograd.grad(grads, Ws, grad_outputs=v, retain_graph=True)
            lam = sum((a * b).sum() for a, b in zip(v, hv))
            v = [h.detach() for h in hv]
        return float(lam)

    gen = torch.Generator().manual_seed(0)
    sharp, cap = [], None
    for t in range(steps + 1):
        if t % power_every == 0 or t == steps:
            sharp.append(power_sharpness(gen))
        value = data_loss()
        current = float(value.detach())
        cap = explode * max(current, ds.yty) if cap is None else cap
        if not current <= cap or t == steps:
            break
        grads = torch.autograd.grad(value, Ws)
        with torch.no_grad():
            for W, g in zip(Ws, grads):
                W -= lr * g
    return [W.detach().numpy() for W in Ws], sharp


def per_call(fn, repeat=20):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def hvp_vs_grad(ds, B=200):
    nets = [dlnpipe.init_network("small", depth=DEPTH, width=WIDTH, d=5, scale=0.4, seed=i) for i in range(B)]
    layers, c = stack_weights(nets, dtype="float64", device="cpu")
    prob = Problem.from_dataset(ds, in_dim=5, dtype="float64", device="cpu")
    params = [W.clone().requires_grad_(True) for W in layers]
    t_grad = per_call(lambda: torch.autograd.grad(SMALL.loss(params, c, prob).sum(), params))
    t_hand = per_call(lambda: SMALL.forward(layers, c, prob))
    op = HessianOperator(SMALL, layers, c, prob)
    v = torch.randn(B, op.size, dtype=torch.float64)
    t_hvp = per_call(lambda: op.matvec(v))
    t_hvp_full = per_call(lambda: HessianOperator(SMALL, layers, c, prob).matvec(v))
    return t_grad, t_hand, t_hvp, t_hvp_full


def step_cost_vs_n(B=200, steps=500):
    """Seconds per step of dlnpipe (best of 3) for growing n: linear nets only touch Σ and Xᵀy."""
    out = {}
    for n in (50, 5000, 50000):
        ds = dlnpipe.make_dataset(n, 5, seed=1)
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            dlnpipe.train(ds, arch="small", depth=DEPTH, width=WIDTH, lr=0.005, scale=0.4, seed=np.arange(B),
                          steps=steps, log_every_s=None)
            best = min(best, (time.perf_counter() - t0) / steps)
        out[n] = best
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-fraction", type=float, default=0.01, help="fraction of the paper's step counts")
    ap.add_argument("--seeds", type=int, default=4,
                    help="at most this many seeds per (η, s); 0 for the paper's 20/80")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = dlnpipe.make_dataset(50, 5, noise=1.0, seed=0)
    lr, scale, seed, steps = grid(args.step_fraction, args.seeds)
    B, net_steps = len(lr), int(steps.sum())
    print(f"fig1 grid: {B} networks, {net_steps} network-steps (step fraction {args.step_fraction}), "
          f"torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    res = dlnpipe.train(ds, arch="small", depth=DEPTH, width=WIDTH, lr=lr, scale=scale, seed=seed, steps=steps,
                        dtype="float64", log_every_s=None)
    t_train = time.perf_counter() - t0
    sharp = dlnpipe.sharpness(ds, res, method="lanczos")
    t_fast = time.perf_counter() - t0
    print(f"dlnpipe : {t_fast:8.2f} s  (train {t_train:.2f} s, Lanczos {t_fast - t_train:.2f} s, "
          f"{sharp.hvps} HVPs)  {net_steps / t_train:,.0f} network-steps/s")

    t0 = time.perf_counter()
    diffs, naive_sharp = [], np.full(B, np.nan)
    for i in range(B):
        net = dlnpipe.init_network("small", depth=DEPTH, width=WIDTH, d=5, scale=scale[i], seed=int(seed[i]))
        final, traj = naive_train(ds, net, float(lr[i]), int(steps[i]))
        naive_sharp[i] = traj[-1]
        if res.status[i] != dlnpipe.DIVERGED:
            diffs.append(max(float(np.abs(Wn - Wf[i]).max() / np.abs(Wf[i]).max())
                             for Wn, Wf in zip(final, res.layers)))
    t_naive = time.perf_counter() - t0
    print(f"naive   : {t_naive:8.2f} s  {net_steps / t_naive:,.0f} network-steps/s")
    print(f"speed-up: {t_naive / t_fast:.0f}x  (target >= 100x)")
    ok = res.status != dlnpipe.DIVERGED
    rel = np.abs(naive_sharp[ok] - sharp.values[ok]) / np.abs(sharp.values[ok])
    diffs = np.array(diffs)
    print(f"same outputs, final weights (relative max-abs difference, {ok.sum()}/{B} non-diverged networks): "
          f"median {np.median(diffs):.1e}, {np.mean(diffs < 1e-8):.0%} below 1e-8, max {diffs.max():.1e} "
          f"(rounding amplified by unstable runs at large η)")
    print(f"final sharpness, naive 20-step power vs Lanczos: median relative difference {np.median(rel):.1e}, "
          f"{np.mean(rel < 1e-6):.0%} below 1e-6 (power returns |λ|max and may not have converged)")

    t_grad, t_hand, t_hvp, t_hvp_full = hvp_vs_grad(ds)
    print(f"HVP / gradient (autograd, batch of 200): {t_hvp / t_grad:.2f} (HVP reusing the first-order graph), "
          f"{t_hvp_full / t_grad:.2f} (HVP from scratch); hand-written gradient is "
          f"{t_grad / t_hand:.1f}x cheaper than autograd's")
    cost = step_cost_vs_n()
    print("dlnpipe step time vs n (200 networks): " + ", ".join(f"n={n}: {t * 1e3:.3f} ms" for n, t in cost.items()))


if __name__ == "__main__":
    main()
