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
from dlnpipe.stages.make_data import per_network, read_many
from dlnpipe.status import CONVERGED, DIVERGED

log = logging.getLogger(__name__)


def trained_networks(arrays: dict, arch: str, depth: int) -> list[Weights]:
    layers = [arrays[f"W{k}"] for k in range(depth)]
    extra = [arrays["p"]] if arch == "residual" else []
    return [Weights([W[i] for W in layers] + [p[i] for p in extra], arch=arch) for i in range(len(arrays["lr"]))]


def run(spec: dict, data_paths, train_path: str | Path, out: str | Path, *, device: str | None = None) -> None:
    cell = spec["cell"]
    exp = ExperimentConfig.model_validate(spec["experiment"])
    arch, depth, width = cell["init"], cell["depth"], cell["width"]
    device = device or spec.get("device", "auto")  # "auto" is resolved by sharpness()
    arrays, _ = load_npz(train_path)
    status, seeds = arrays["status"], arrays["seed"]
    B, k = len(status), exp.sharpness_k
    data = arrays["data"]  # each network's data id
    each = per_network(read_many(data_paths), data, cell.get("data", ""))
    nets = trained_networks(arrays, arch, depth)
    scales = init_scale(exp, arch, width, arrays["scale"])

    topk = np.full((B, k), np.nan)
    resid = np.full((B, k), np.nan)
    exact = np.full(B, np.nan)
    s_init = np.full(B, np.nan)
    sv = np.full((B, depth), np.nan)
    align = np.full((B, max(depth - 1, 0)), np.nan)
    in_align = np.full(B, np.nan)
    # one dataset at a time (the Hessian and the exact formula need its Σ)
    for key in dict.fromkeys(data):
        rows = np.flatnonzero(data == key)
        ds = each[rows[0]]
        keep = rows[status[rows] != DIVERGED]
        if keep.size:
            s = sharpness(ds, [nets[i] for i in keep], method="lanczos", k=k, seeds=seeds[keep], device=device)
            topk[keep], resid[keep] = s.eigenvalues, s.residuals
        conv = rows[status[rows] == CONVERGED]
        if conv.size and arch != "gelu":
            exact[conv] = sharpness(ds, [nets[i] for i in conv], method="exact").values
        init = [init_network(arch, depth=depth, width=width, d=ds.d, scale=scales[i], seed=int(seeds[i]))
                for i in rows]
        s_init[rows] = sharpness(ds, init, method="lanczos", seeds=seeds[rows], device=device).values
        st = structure([nets[i] for i in rows], w_star=ds.w_star)
        sv[rows], align[rows], in_align[rows] = st.sv_ratio, st.alignment, st.input_alignment
    log.info("cell %s: sharpness of %d networks, median %.4g; init median %.4g", cell, int((status != DIVERGED).sum()),
             np.nanmedian(topk[:, 0]) if np.isfinite(topk).any() else np.nan, np.nanmedian(s_init))
    save_npz(out, meta={"spec": spec}, sharpness_topk=topk, sharpness_residual=resid, sharpness_exact=exact,
             sharpness_init=s_init, sv_ratio=sv, alignment=align, input_alignment=in_align)
