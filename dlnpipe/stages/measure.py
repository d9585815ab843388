"""Stage measure_sharpness: top-k Lanczos sharpness (final and at init), the exact formula at
converged networks, and the structure diagnostics of the trained layers (PAPER.md §3.3, §3.6)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlnpipe import archs
from dlnpipe.config import ExperimentConfig
from dlnpipe.curvature import sharpness
from dlnpipe.diagnostics import structure
from dlnpipe.files import per_network, read_cell, read_datasets, trained_networks, write_measure
from dlnpipe.grid import init_scale
from dlnpipe.networks import init_network
from dlnpipe.status import Status

log = logging.getLogger(__name__)


def run(spec: dict, data_paths, train_path: str | Path, out: str | Path, *, device: str | None = None) -> None:
    cell = spec["cell"]
    exp = ExperimentConfig.model_validate(spec["experiment"])
    arch, depth, width = archs.get(cell["init"]), cell["depth"], cell["width"]
    device = device or spec.get("device", "auto")  # "auto" is resolved by sharpness()
    arrays, _ = read_cell(train_path)
    status, seeds, data = arrays["status"], arrays["seed"], arrays["data"]  # data: each network's data id
    B, k = len(status), exp.sharpness_k
    each = per_network(read_datasets(data_paths), data, cell.get("data", ""))
    nets = trained_networks(arrays, arch.name, depth)
    scales = init_scale(exp, arch.name, width, arrays["scale"])
    m = dict(sharpness_topk=np.full((B, k), np.nan), sharpness_residual=np.full((B, k), np.nan),
             sharpness_exact=np.full(B, np.nan), sharpness_init=np.full(B, np.nan),
             sv_ratio=np.full((B, depth), np.nan), alignment=np.full((B, max(depth - 1, 0)), np.nan),
             input_alignment=np.full(B, np.nan))
    for key in dict.fromkeys(data):  # one dataset at a time (the Hessian and the exact formula need its Σ)
        rows = np.flatnonzero(data == key)
        ds = each[rows[0]]
        keep = rows[status[rows] != Status.DIVERGED]
        if keep.size:
            s = sharpness(ds, [nets[i] for i in keep], method="lanczos", k=k, seeds=seeds[keep], device=device)
            m["sharpness_topk"][keep], m["sharpness_residual"][keep] = s.eigenvalues, s.residuals
        conv = rows[status[rows] == Status.CONVERGED]
        if conv.size and arch.linear:
            m["sharpness_exact"][conv] = sharpness(ds, [nets[i] for i in conv], method="exact").values
        init = [init_network(arch, depth=depth, width=width, d=ds.d, scale=scales[i], seed=int(seeds[i]))
                for i in rows]
        m["sharpness_init"][rows] = sharpness(ds, init, method="lanczos", seeds=seeds[rows], device=device).values
        st = structure([nets[i] for i in rows], w_star=ds.w_star)
        m["sv_ratio"][rows], m["alignment"][rows], m["input_alignment"][rows] = (st.sv_ratio, st.alignment,
                                                                                 st.input_alignment)
    top = m["sharpness_topk"][:, 0]
    log.info("cell %s: sharpness of %d networks, median %.4g; init median %.4g", cell,
             int((status != Status.DIVERGED).sum()), np.nanmedian(top) if np.isfinite(top).any() else np.nan,
             np.nanmedian(m["sharpness_init"]))
    write_measure(out, meta={"spec": spec}, **m)
