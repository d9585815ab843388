"""Fig 1b from the cube with xarray and matplotlib alone: the sharpness after training against the init
scale, one line per learning rate (mean over converged seeds, 95% interval), with 2/η (dashed) and
S_min (dotted). No dlnpipe import: the cube carries everything it needs.

    python examples/redraw_fig1b.py [results/default/cube.zarr] [--experiment fig1] [--out fig1b.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("cube", nargs="?", default="results/default/cube.zarr")
ap.add_argument("--experiment", default="fig1")
ap.add_argument("--out", default="fig1b.png")
args = ap.parse_args()

ds = xr.open_datatree(args.cube, engine="zarr", consolidated=False)[args.experiment].to_dataset()
ds = ds.squeeze([d for d in ("init", "depth", "width", "kappa", "spectrum", "wstar", "optim") if ds.sizes[d] == 1])
converged = ds.sharpness.where(ds.status == 0)  # flag_values 0, 1, 2: converged, failed, diverged
mean, count = converged.mean("seed"), converged.count("seed")
half = 1.96 * converged.std("seed") / np.sqrt(count.where(count > 1))
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for i, lr in enumerate(ds.lr.values):
    color = plt.cm.viridis(i / max(ds.sizes["lr"] - 1, 1))
    m, h = mean.sel(lr=lr), half.sel(lr=lr)
    ax.plot(ds.scale, m, "o-", color=color, label=f"η = {lr:g}")
    ax.fill_between(ds.scale, m - h, m + h, color=color, alpha=0.2)
    ax.axhline(2 / lr, ls="--", color=color, lw=1)
ax.axhline(float(ds.s_min.squeeze()), ls=":", color="k", label="S_min")
ax.set(yscale="log", xlabel="initialisation scale s", ylabel="sharpness after training",
       title=f"{args.experiment}: Fig 1b from the cube")
ax.legend(fontsize=7, frameon=False)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print(f"wrote {args.out}: {int(count.sum())} converged networks")
