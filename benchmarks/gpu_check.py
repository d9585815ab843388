"""GPU readiness check: correctness against CPU float64, then throughput, in one table (< 5 min on a GPU).

1. Correctness: a small cell (small and residual init, 24 networks, 400 steps, float64) trained on
   the CPU and on the device; the final weights and the top-3 Lanczos Hessian eigenvalues must agree
   within 1e-10 (the device run must also stay on the device: no per-step host round trips).
2. Throughput at depth 16, widths 16 → 1024 (smaller on CPU): network-steps per second of batched
   gradient descent and network-HVPs per second of batched Lanczos, with the batch the device's
   memory budget allows (capped), in the chosen dtype.

    python benchmarks/gpu_check.py                 # auto: CUDA when torch sees one
    python benchmarks/gpu_check.py --device cpu    # the CPU path (smaller sizes; run in CI)

Exit status 1 when the correctness check fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import dlnpipe
from dlnpipe import archs
from dlnpipe.devices import memory_budget, resolve_device

TOL = 1e-10


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def correctness(dev: torch.device) -> bool:
    data = dlnpipe.make_dataset(40, 6, noise=0.5, seed=3, kappa=10.0)
    ok = True
    print(f"correctness: CPU float64 vs {dev} float64 (tolerance {TOL:g})")
    print(f"  {'init':<9} {'nets':>4} {'max |ΔW|':>10} {'max |Δλ|/|λ|':>13} {'status':>7}")
    for arch, scale in (("small", 0.5), ("residual", 0.3)):
        kw = dict(arch=arch, depth=4, width=8, lr=np.linspace(0.01, 0.05, 24), scale=scale,
                  seed=np.arange(24), steps=400, dtype="float64", record_every=100)
        ref = dlnpipe.train(data, device="cpu", **kw)
        out = dlnpipe.train(data, device=dev, **kw)
        dw = max(float(np.abs(a - b).max()) for a, b in zip(ref.layers, out.layers))
        s_ref = dlnpipe.sharpness(data, ref, k=3, device="cpu").eigenvalues
        s_dev = dlnpipe.sharpness(data, out, k=3, device=dev).eigenvalues
        dl = float(np.nanmax(np.abs(s_ref - s_dev) / np.abs(s_ref)))
        same = bool((ref.status == out.status).all()) and out.device.startswith(dev.type)
        good = dw <= TOL and dl <= TOL and same
        ok &= good
        print(f"  {arch:<9} {len(ref):>4} {dw:>10.2e} {dl:>13.2e} {'PASS' if good else 'FAIL':>7}")
    return ok


def throughput(dev: torch.device, widths: list[int], depth: int, steps: int, lanczos_iter: int, dtype: str,
               max_nets: int) -> None:
    d = min(16, widths[0])
    data = dlnpipe.make_dataset(256, d, noise=0.5, seed=0, kappa=10.0)
    budget = memory_budget(dev)
    print(f"\nthroughput on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), "
          f"depth {depth}, d = {d}, {dtype}; memory budget {budget / 2**30:.1f} GiB")
    head = (f"  {'width':>6} {'params/net':>11} {'nets':>5} {'train s':>8} {'net-steps/s':>12} "
            f"{'lanczos nets':>12} {'lanczos s':>9} {'net-HVPs/s':>11}")
    print(head)
    tdtype = getattr(torch, dtype)
    for m in widths:
        params = depth * m * m
        fit = int(budget // archs.get("small").bytes_per_network(depth=depth, width=m, d=d, n=data.n,
                                                                  itemsize=tdtype.itemsize))
        B = max(1, min(max_nets, fit))
        # small init at scale 1/√m (product of norm ~1) and a tiny step: nothing diverges or stops early
        kw = dict(arch="small", depth=depth, width=m, lr=1e-4, scale=m**-0.5, seed=np.arange(B), dtype=dtype,
                  device=dev, record_steps=[0], exit_fixed=False, log_every_s=None)
        dlnpipe.train(data, steps=2, **kw)  # warm-up (kernels, allocator)
        sync(dev)
        t0 = time.perf_counter()
        res = dlnpipe.train(data, steps=steps, **kw)
        sync(dev)
        t_train = time.perf_counter() - t0
        assert (res.diverged_step < 0).all()
        # Lanczos: a fixed number of iterations (tol 0), float64, the batch the budget allows
        nl = max(1, min(B, int(budget // (8 * params * (lanczos_iter + 20)))))
        sub = [res.network(i) for i in range(nl)]
        t0 = time.perf_counter()
        out = dlnpipe.sharpness(data, sub, tol=0.0, max_iter=lanczos_iter, device=dev)
        sync(dev)
        t_lanczos = time.perf_counter() - t0
        print(f"  {m:>6} {params:>11,d} {B:>5} {t_train:>8.2f} {B * steps / t_train:>12.4g} "
              f"{nl:>12} {t_lanczos:>9.2f} {nl * out.hvps / t_lanczos:>11.4g}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument("--widths", type=int, nargs="+", help="default: 16 .. 1024 on CUDA, 16 .. 128 on CPU")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--steps", type=int, help="timed training steps (default 200 on CUDA, 20 on CPU)")
    ap.add_argument("--lanczos-iter", type=int, default=20)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--max-nets", type=int, help="cap on the batch (default 1024 on CUDA, 64 on CPU)")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    widths = args.widths or ([16, 32, 64, 128, 256, 512, 1024] if cuda else [16, 32, 64, 128])
    steps = args.steps or (200 if cuda else 20)
    max_nets = args.max_nets or (1024 if cuda else 64)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"dlnpipe gpu_check: torch {torch.__version__}, device {dev}"
          + ("" if cuda else " (no CUDA: CPU path with smaller sizes)"))
    t0 = time.perf_counter()
    ok = correctness(dev)
    throughput(dev, widths, args.depth, steps, args.lanczos_iter, args.dtype, max_nets)
    print(f"\ncorrectness {'PASS' if ok else 'FAIL'}; total {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
