"""Stage measure_sharpness: the Hessian measurements and layer structure of one trained cell
(what is measured: :mod:`dlnpipe.measurements`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlnpipe import archs, steppers
from dlnpipe.files import per_network, read_cell, read_datasets, trained_networks, write_measure
from dlnpipe.grid import init_scale, stage_config
from dlnpipe.measurements import Options, ended, measure, optimizer_measurements
from dlnpipe.networks import init_network
from dlnpipe.status import Status

log = logging.getLogger(__name__)


def run(spec: dict, data_paths, train_path: str | Path, out: str | Path, *, device: str | None = None) -> None:
    cell = spec["cell"]
    exp = stage_config(spec, "measure")
    arch, depth, width = archs.get(cell["init"]), cell["depth"], cell["width"]
    arrays, _ = read_cell(train_path)
    status, seeds = arrays["status"], arrays["seed"]
    each = per_network(read_datasets(data_paths), arrays["data"], cell.get("data", ""))
    nets = trained_networks(arrays, arch.name, depth)
    scales = init_scale(exp, arch.name, width, arrays["scale"])
    init = [init_network(arch, depth=depth, width=width, d=ds.d, scale=s, seed=int(seed))
            for ds, s, seed in zip(each, scales, seeds)]
    opts = Options(k=exp.sharpness_k, trace_method=exp.trace_method, trace_probes=exp.trace_probes,
                   density=exp.density, density_probes=exp.density_probes, density_steps=exp.density_steps,
                   device=device or spec.get("device", "auto"))  # "auto" is resolved by the measurements
    m = measure(nets, init, each, status, seeds, opts)
    averaged = None
    if "avg_W0" in arrays:  # a stochastic run: the average of its last iterates
        avg = {f"W{k}": arrays[f"avg_W{k}"] for k in range(depth)}
        averaged = trained_networks({**arrays, **avg}, arch.name, depth)
    m |= optimizer_measurements(arrays, nets, each, status, seeds, opts, averaged)
    settings = exp.optim_settings(arrays["optim"], each[0].n)
    m["failure"] = ended(m, arrays, each, steppers.get(cell.get("optimizer", steppers.DEFAULT)), settings)
    top = m["sharpness_topk"][:, 0]
    log.info("cell %s: sharpness of %d networks, median %.4g (init %.4g); trace median %.4g (init %.4g)", cell,
             int((status != Status.DIVERGED).sum()), np.nanmedian(top) if np.isfinite(top).any() else np.nan,
             np.nanmedian(m["sharpness_init"]), np.nanmedian(m["hessian_trace"]) if np.isfinite(
                 m["hessian_trace"]).any() else np.nan, np.nanmedian(m["hessian_trace_init"]))
    write_measure(out, meta={"spec": spec, "read": exp.read_keys()}, **m)
