"""Stage measure_sharpness: top-k Lanczos sharpness (final and at init), the exact formula at
converged networks, and the structure diagnostics of the trained layers (PAPER.md §3.3, §3.6)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlnpipe.config import ExperimentConfig
from dlnpipe.curvature import sharpness
from dlnpipe.diagnostics import structure
from dlnpipe.grid import init_scale
from dlnpipe.io import load_npz, save_npz
from dlnpipe.networks import Weights, init_network
from dlnpipe.stages.make_data import read
from dlnpipe.status import CONVERGED, DIVERGED

log = logging.getLogger(__name__)


def trained_networks(arrays: dict, arch: str, depth: int) -> list[Weights]:
    layers = [arrays[f"W{k}"] for k in range(depth)]
    extra = [arrays["p"]] if arch == "residual" else []
    return [Weights([W[i] for W in layers] + [p[i] for p in extra], arch=arch) for i in range(len(arrays["lr"]))]


def run(spec: dict, data_path: str | Path, train_path: str | Path, out: str | Path, *,
        device: str | None = None) -> None:
    cell = spec["cell"]
    exp = ExperimentConfig.model_validate(spec["experiment"])
    arch, depth, width = cell["init"], cell["depth"], cell["width"]
    device = device or spec.get("device", "auto")  # "auto" is resolved by sharpness()
    ds = read(data_path)
    arrays, _ = load_npz(train_path)
    status, seeds = arrays["status"], arrays["seed"]
    B, k = len(status), exp.sharpness_k
    nets = trained_networks(arrays, arch, depth)

    topk = np.full((B, k), np.nan)
    resid = np.full((B, k), np.nan)
    keep = np.flatnonzero(status != DIVERGED)
    if keep.size:
        s = sharpness(ds, [nets[i] for i in keep], method="lanczos", k=k, seeds=seeds[keep], device=device)
        topk[keep], resid[keep] = s.eigenvalues, s.residuals
    exact = np.full(B, np.nan)
    conv = np.flatnonzero(status == CONVERGED)
    if conv.size and arch != "gelu":
        exact[conv] = sharpness(ds, [nets[i] for i in conv], method="exact").values
    init = [init_network(arch, depth=depth, width=width, d=ds.d, scale=s, seed=int(sd))
            for s, sd in zip(init_scale(exp, arch, width, arrays["scale"]), seeds)]
    s_init = sharpness(ds, init, method="lanczos", seeds=seeds, device=device).values
    st = structure(nets, w_star=ds.w_star)
    log.info("cell %s: sharpness of %d networks, median %.4g; init median %.4g", cell, keep.size,
             np.nanmedian(topk[:, 0]) if keep.size else np.nan, np.nanmedian(s_init))
    save_npz(out, meta={"spec": spec}, sharpness_topk=topk, sharpness_residual=resid, sharpness_exact=exact,
             sharpness_init=s_init, sv_ratio=st.sv_ratio, alignment=st.alignment,
             input_alignment=st.input_alignment)
