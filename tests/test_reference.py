"""The quick study's numbers against a reference: a refactor that changes no maths changes no result.

``tests/data/quick_reference.npz`` holds, for every experiment of the quick config, each network's
status and, for converged networks, its final sharpness (Lanczos), losses and distance, and the
sharpness trajectories, as the quick study produced them before the training core was reshaped
into architectures and steppers. The comparison is portable (tests/tolerances.py): statuses must
match where the reference converged (those networks sit far below the convergence threshold),
sharpness and trajectories relative 1e-6 (O(1) values; float64 runs agree to ~1e-10 across CPUs),
losses and distances absolute 1e-8 of yᵀy/n and ‖w*‖² (they sit at the rounding floor).

Regenerate (after a change that *should* move the numbers, said in the commit):
``DLNPIPE_WRITE_REFERENCE=1 pytest tests/test_reference.py``.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from tolerances import assert_floor_close
from workflow_utils import open_tree

from dlnpipe.status import Status

pytestmark = pytest.mark.slow
REFERENCE = Path(__file__).parent / "data/quick_reference.npz"
CONVERGED_ONLY = ("sharpness", "loss_train", "loss_test", "distance")


def _arrays(tree) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(tree.children):
        ds = tree[name].to_dataset()
        if ds.sizes.get("optim") == 1:  # the reference predates the optim axis (one optimizer: GD or flow)
            ds = ds.squeeze("optim", drop=True)
        out[f"{name}/status"] = ds.status.values
        for var in CONVERGED_ONLY:
            out[f"{name}/{var}"] = ds[var].where(ds.status == Status.CONVERGED).values
        if "traj_sharpness" in ds:
            out[f"{name}/traj_sharpness"] = ds.traj_sharpness.values
        out[f"{name}/loss_opt"] = np.atleast_1d(ds.loss_opt.max().values)
    return out


def test_quick_cube_matches_reference(quick_run):
    now = _arrays(open_tree(quick_run / "results/cube.zarr"))
    if os.environ.get("DLNPIPE_WRITE_REFERENCE"):
        np.savez_compressed(REFERENCE, **{k: v for k, v in now.items() if k.split("/")[0] not in ("relu", "optim")})
    ref = dict(np.load(REFERENCE))
    groups = sorted({k.split("/")[0] for k in ref})
    assert groups == ["bounds", "resid", "small", "traj", "under"]
    assert sum(int((ref[f"{g}/status"] == Status.CONVERGED).sum()) for g in groups) > 100
    for g in groups:
        conv = ref[f"{g}/status"] == Status.CONVERGED
        np.testing.assert_array_equal(now[f"{g}/status"][conv], Status.CONVERGED, err_msg=g)
        others = ~conv & (ref[f"{g}/status"] >= 0)
        assert not (now[f"{g}/status"][others] == Status.CONVERGED).any(), g
        np.testing.assert_allclose(now[f"{g}/sharpness"], ref[f"{g}/sharpness"], rtol=1e-6, err_msg=g)
        scale = 1.0 + float(ref[f"{g}/loss_opt"][0])  # ≈ yᵀy/n = a + R*, with a ≈ 1 since ‖w*‖ = 1
        for var in ("loss_train", "loss_test", "distance"):
            assert_floor_close(now[f"{g}/{var}"], ref[f"{g}/{var}"], scale=scale, rel=1e-8, err_msg=f"{g}/{var}")
        if f"{g}/traj_sharpness" in ref:
            np.testing.assert_allclose(now[f"{g}/traj_sharpness"], ref[f"{g}/traj_sharpness"], rtol=1e-6)
