"""Stage train_cell: every network of one cell trained as one batch (dlnpipe.training)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlnpipe.config import ExperimentConfig
from dlnpipe.grid import Cell, init_scale, networks
from dlnpipe.io import save_npz
from dlnpipe.stages.make_data import per_network, read_many
from dlnpipe.training import train

log = logging.getLogger(__name__)


def run(spec: dict, data_paths, out: str | Path, *, device: str | None = None) -> None:
    """Train the cell's networks; ``data_paths`` holds its dataset file (or, for a cell with
    ``batch_datasets``, every dataset of the experiment)."""
    cell = Cell(**spec["cell"])
    exp = ExperimentConfig.model_validate(spec["experiment"])
    sets = read_many(data_paths)
    net = networks(exp, cell)
    ds = per_network(sets, net.data, cell.id)
    device = device or spec.get("device", "auto")
    log.info("cell %s/%s: %d networks, up to %d steps, %s on %s", cell.experiment, cell.id, len(net),
             int(net.steps.max()), exp.dtype, device)
    res = train(ds, arch=cell.init, depth=cell.depth, width=cell.width, lr=net.lr,
                scale=init_scale(exp, cell.init, cell.width, net.scale), seed=net.seed, steps=net.steps,
                dtype=exp.dtype, device=device, record_every=exp.record_every,
                record_sharpness=exp.record_sharpness, rtol=exp.rtol, atol=exp.atol, optimizer=exp.optimizer,
                flow_rtol=exp.flow_rtol, flow_atol=exp.flow_atol, flow_max_steps=exp.flow_max_steps)
    counts = np.bincount(res.status, minlength=3)
    log.info("cell %s/%s done in %.1f s: %d converged, %d failed, %d diverged", cell.experiment, cell.id,
             res.seconds, *counts)
    arrays = {f"W{k}": W for k, W in enumerate(res.layers)}
    if res.p is not None:
        arrays["p"] = res.p
    if res.traj_sharpness is not None:
        arrays["traj_sharpness"] = res.traj_sharpness
    save_npz(out, meta={"spec": spec, "device": res.device, "dtype": res.dtype},
             lr=net.lr, scale=net.scale, seed_index=net.seed_index, seed=net.seed, steps=net.steps, data=net.data,
             status=res.status, loss_train=res.loss_train, loss_test=res.loss_test, distance=res.distance,
             diverged_step=res.diverged_step, record_steps=res.record_steps, traj_loss_train=res.traj_loss_train,
             traj_loss_test=res.traj_loss_test, traj_distance=res.traj_distance, **arrays)
