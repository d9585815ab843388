"""Stage compare_bounds: one experiment's networks against the theory, as tables (the analysis:
:mod:`dlnpipe.analysis`): ``<exp>.csv`` per grid point, ``<exp>_constant.csv`` the empirical constant
C(κ), and ``<exp>.md`` with the claims, the constant and the per-grid-point table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlnpipe.analysis import claims, constant, table
from dlnpipe.cube import open_group

CONSTANT_TEXT = (
    "`C`: largest S/S_min over depth, width, init scale and seeds (at `at_depth`, `at_width`, `at_scale`). "
    "`C_small_init`: largest over depth and width of the ratio at the smallest init scale where at least half "
    "the seeds converged (the theorem's small-init regime). `four_lam_over_a` = 4Λ/a, the small-init bound on "
    "S/S_min. `depth_spread`, `width_spread`: largest over smallest of the per-depth (per-width) small-init "
    "maxima (1 = flat).")


def run(cube_path: str | Path, experiment: str, csv: str | Path, md: str | Path,
        constant_csv: str | Path | None = None) -> pd.DataFrame:
    ds = open_group(cube_path, experiment)
    tab = table(ds)
    cl = claims(tab, ds)
    const = constant(ds)
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    tab.to_csv(csv, index=False, float_format="%.6g")
    if constant_csv is not None:
        const.to_csv(constant_csv, index=False, float_format="%.6g")
    with open(md, "w") as f:
        f.write(f"# Bounds check: {experiment}\n\n{ds.attrs.get('description', '')}\n\n"
                "## Claims (docs/theory.md#the-claims-the-tables-check)\n\n")
        f.write(cl.to_markdown(index=False) + "\n\n")
        if not const.empty:
            f.write(f"## Empirical constant C(κ) (converged linear networks)\n\n{CONSTANT_TEXT}\n\n")
            f.write(const.to_markdown(index=False, floatfmt=".4g") + "\n\n")
        f.write("## Per grid point\n\n")
        f.write(tab.to_markdown(index=False, floatfmt=".4g") + "\n")
    return cl
