"""The quick study's numbers against a reference: a refactor that changes no maths changes no result,
on any x86-64 CPU.

``tests/data/quick_reference.npz`` holds, for every experiment of the quick config, each network's
status and, for converged networks, its final sharpness (Lanczos), losses and distance, and the
sharpness trajectories; and, per network, how far its results move when the data are perturbed.

Why one reference holds on every CPU: **each network's sensitivity to rounding is measured when the
reference is written, and each network is held to what its sensitivity allows.** CPUs differ in
rounding (the data's QR through the machine's LAPACK, numpy's vectorised power, the kernels' and
BLAS's summation order: relative differences of 1e-16 to 1e-13), never in the maths, since every grid
value and seed is the same bit for bit on every CPU (dlnpipe.config.exp10). Rounding matters only
where a trajectory amplifies it (near a saddle, at the edge of stability). So the writer runs the
quick study again on data perturbed by a relative PERTURB = 1e-12 (a thousand times any CPU's
rounding of them; per-step gradients move by as much, far above any kernel's rounding), with three
independent draws, and records each network's largest relative move of its sharpness and
trajectory (``<group>/move``; inf where its status changed). Then, of every network:

* **insensitive** (move ≤ SENSITIVE = 1e-9: it amplifies a perturbation less than 1e3-fold, so another
  CPU moves it by less than 1e-10): its status (the reference's converged networks converge, no other
  network does), sharpness and trajectory to relative 1e-6, 10^4 times what another CPU can do, while a
  change of the maths, a wrong mask or a network trained on the wrong dataset moves them by 1e-3 or
  more; its test loss and distance to absolute 1e-8 of yᵀy/n and ‖w*‖² (they sit at the rounding floor,
  where a relative tolerance would test the CPU: tests/tolerances.py);
* **sensitive** (in the quick study: the 4 Adam networks of ``optim``, at Adam's adaptive edge of
  stability, whose sharpness moves by ~1% under a 1e-12 perturbation): what their minimizer manifold
  fixes, that is converged where the reference converged and S ≥ S_min (claim c1, every minimizer);
  and their sharpness, trajectory, test loss and distance (free along the manifold when n < d) within
  SPREAD = 10 times the largest difference the perturbed studies showed (``<group>/spread/<var>``);
* every network whose status the perturbations kept: training loss = R* to absolute 1e-8 of yᵀy/n.

Regenerate (after a change that *should* move the numbers, said in the commit), about four quick
studies' time: ``DLNPIPE_WRITE_REFERENCE=1 pytest tests/test_reference.py``.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from tolerances import assert_floor_close
from workflow_utils import QUICK, open_tree, snakemake, workdir

from dlnpipe.io import load_npz, save_npz
from dlnpipe.status import Status

pytestmark = pytest.mark.slow
REFERENCE = Path(__file__).parent / "data/quick_reference.npz"
GROUPS = ["bounds", "optim", "relu", "resid", "small", "traj", "under"]
CONVERGED_ONLY = ("sharpness", "loss_train", "loss_test", "distance")
PERTURB = 1e-12  # relative perturbation of every data array when the reference is written
SENSITIVE = 1e-9  # a network whose sharpness or trajectory moves more than this under PERTURB is sensitive
SPREAD = 10.0  # a sensitive network's sharpness may differ from the reference by SPREAD × its move
RTOL = 1e-6  # an insensitive network's sharpness and trajectory
SPREAD_VARS = ("sharpness", "traj_sharpness", "loss_test", "distance")  # what a sensitive network may move


def _arrays(tree) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(tree.children):
        ds = tree[name].to_dataset()
        out[f"{name}/status"] = ds.status.values
        for var in CONVERGED_ONLY:
            out[f"{name}/{var}"] = ds[var].where(ds.status == Status.CONVERGED).values
        if "traj_sharpness" in ds:
            out[f"{name}/traj_sharpness"] = ds.traj_sharpness.values
        out[f"{name}/s_min"] = ds.s_min.broadcast_like(ds.sharpness).transpose(*ds.sharpness.dims).values
        out[f"{name}/loss_opt"] = np.atleast_1d(ds.loss_opt.max().values)
    return out


def _perturbed_study(wd: Path, seed: int) -> dict[str, np.ndarray]:
    """The quick study with every dataset's X, y, X_test, y_test multiplied by 1 + PERTURB·ξ (ξ ~ N(0, 1))."""
    workdir(wd)
    cfg = wd / "perturbed.yaml"  # no MLflow: the perturbed studies are thrown away
    cfg.write_text(QUICK.read_text() + "\nmlflow: {enabled: false}\n")
    snakemake(wd, "--configfile", str(cfg), "--cores", "2", "--until", "make_dataset")
    rng = np.random.default_rng(seed)
    for path in sorted((wd / "results/quick/data").rglob("*.npz")):
        arrays, meta = load_npz(path)
        save_npz(path, meta=meta, **{k: v * (1 + PERTURB * rng.standard_normal(v.shape)) for k, v in arrays.items()})
    snakemake(wd, "--configfile", str(cfg), "--cores", "2")
    return _arrays(open_tree(wd / "results/quick/cube.zarr"))


def _move(now: dict, perturbed: dict, g: str) -> np.ndarray:
    """Per network of group ``g``: the largest relative move of its sharpness or trajectory, inf where its
    status changed or a value appeared or vanished."""
    status = now[f"{g}/status"]
    move = np.where(status != perturbed[f"{g}/status"], np.inf, 0.0)
    for var in ("sharpness", "traj_sharpness"):
        if f"{g}/{var}" not in now:
            continue
        a, b = now[f"{g}/{var}"], perturbed[f"{g}/{var}"]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(np.isfinite(a) & np.isfinite(b), np.abs(a - b) / np.abs(a), 0.0)
        rel[np.isfinite(a) != np.isfinite(b)] = np.inf
        move = np.maximum(move, rel.reshape(*status.shape, -1).max(-1))
    return move


def _write_reference(now: dict, tmp: Path) -> None:
    """The reference, with each network's move (relative, for the classification) and, per value, the
    largest absolute difference the perturbed studies showed (``<group>/spread/<var>``)."""
    moves = {g: np.zeros(now[f"{g}/status"].shape) for g in GROUPS}
    spread = {k: np.zeros(now[k].shape) for k in now if k.split("/")[1] in SPREAD_VARS}
    for seed in (1, 2, 3):
        perturbed = _perturbed_study(tmp / f"perturbed{seed}", seed)
        moves = {g: np.maximum(m, _move(now, perturbed, g)) for g, m in moves.items()}
        spread = {k: np.fmax(v, np.abs(now[k] - perturbed[k])) for k, v in spread.items()}
    for g, m in moves.items():
        print(f"{g}: {int((m > SENSITIVE).sum())} of {m.size} networks sensitive; largest move {m.max():.3g}")
    np.savez_compressed(REFERENCE, **now, **{f"{g}/move": m for g, m in moves.items()},
                        **{k.replace("/", "/spread/", 1): v for k, v in spread.items()})


def _per_step(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A per-network mask broadcast over the trailing (step) axis of ``values``."""
    return np.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)), values.shape)


def _check_group(g: str, now: dict, ref: dict) -> None:
    move = ref[f"{g}/move"]  # per network, measured by _write_reference
    held = np.isfinite(move)  # the status did not change under the perturbations
    tight = move <= SENSITIVE
    conv = ref[f"{g}/status"] == Status.CONVERGED
    loose = ~tight & held & conv  # sensitive, converged: held to what the minimizer manifold fixes
    np.testing.assert_array_equal(now[f"{g}/status"][conv & held], Status.CONVERGED, err_msg=g)
    assert not (now[f"{g}/status"][~conv & (ref[f"{g}/status"] >= 0) & tight] == Status.CONVERGED).any(), g
    scale = 1.0 + float(ref[f"{g}/loss_opt"][0])  # ≈ yᵀy/n = a + R*, with a ≈ 1 since ‖w*‖ = 1
    floor = dict(scale=scale, rel=1e-8)
    assert_floor_close(now[f"{g}/loss_train"][held], ref[f"{g}/loss_train"][held], err_msg=g, **floor)  # R*
    assert (now[f"{g}/sharpness"][loose] >= ref[f"{g}/s_min"][loose] * (1 - RTOL)).all(), g  # c1: every minimizer
    for var in SPREAD_VARS:
        if f"{g}/{var}" not in ref:
            continue
        a, b = now[f"{g}/{var}"], ref[f"{g}/{var}"]
        fixed, free = _per_step(tight, a), _per_step(loose, a)
        if var in ("loss_test", "distance"):  # at the rounding floor
            assert_floor_close(a[fixed], b[fixed], err_msg=f"{g}/{var}", **floor)
        else:
            np.testing.assert_allclose(a[fixed], b[fixed], rtol=RTOL, err_msg=f"{g}/{var}")
        bound = SPREAD * ref[f"{g}/spread/{var}"][free] + 1e-8 * scale
        assert (np.abs(a[free] - b[free]) <= bound).all(), (f"{g}/{var}", a[free], b[free], bound)


def test_quick_cube_matches_reference(quick_run, tmp_path):
    now = _arrays(open_tree(quick_run / "results/quick/cube.zarr"))
    assert sorted({k.split("/")[0] for k in now}) == GROUPS
    if os.environ.get("DLNPIPE_WRITE_REFERENCE"):
        _write_reference(now, tmp_path)
    ref = dict(np.load(REFERENCE))
    assert sum(int((ref[f"{g}/status"] == Status.CONVERGED).sum()) for g in GROUPS) > 100
    for g in GROUPS:
        _check_group(g, now, ref)
