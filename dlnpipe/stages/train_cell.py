"""Stage train_cell: every network of one cell trained as one batch (dlnpipe.training)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlnpipe import steppers
from dlnpipe.eos import balance_sampler
from dlnpipe.files import per_network, read_datasets, write_train
from dlnpipe.gfs import phi_sampler
from dlnpipe.grid import Cell, init_scale, networks, optimizer_options, stage_config
from dlnpipe.status import Status
from dlnpipe.training import train

log = logging.getLogger(__name__)


def run(spec: dict, data_paths, out: str | Path, *, device: str | None = None) -> None:
    """Train the cell's networks; ``data_paths`` holds its dataset file (or, for a cell with
    ``batch_datasets``, every dataset of the experiment)."""
    cell = Cell(**spec["cell"])
    exp = stage_config(spec, "train")
    net = networks(exp, cell)
    ds = per_network(read_datasets(data_paths), net.data, cell.id)
    device = device or spec.get("device", "auto")
    log.info("cell %s/%s: %d networks, up to %d steps, %s on %s", cell.experiment, cell.id, len(net),
             int(net.steps.max()), exp.dtype, device)
    record = exp.record_sharpness and steppers.get(cell.optimizer).records_sharpness  # flow, central: their own
    samplers = {"traj_gfs_sharpness": phi_sampler(ds), "traj_balance": balance_sampler} if (
        record and exp.record_eos) else None
    res = train(ds, arch=cell.init, depth=cell.depth, width=cell.width, lr=net.lr,
                scale=init_scale(exp, cell.init, cell.width, net.scale), seed=net.seed, steps=net.steps,
                dtype=exp.dtype, device=device, record_every=exp.record_every,
                record_sharpness=record, samplers=samplers, rtol=exp.rtol, atol=exp.atol, optimizer=cell.optimizer,
                **exp.stepper_options(cell.optimizer), **optimizer_options(exp, cell.optimizer, net.optim, ds[0].n))
    counts = np.bincount(res.status, minlength=len(Status))
    log.info("cell %s/%s done in %.1f s: %s", cell.experiment, cell.id, res.seconds,
             ", ".join(f"{n} {s.meaning}" for s, n in zip(Status, counts)))
    write_train(out, res, net.arrays(), meta={"spec": spec, "read": exp.read_keys()})
