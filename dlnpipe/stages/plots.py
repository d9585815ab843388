"""Stage plot: one figure of one experiment, PNG and PDF (the figures: :mod:`dlnpipe.figures`)."""

from __future__ import annotations

from pathlib import Path

from dlnpipe import figures
from dlnpipe.cube import open_group


def run(cube_path: str | Path, experiment: str, figure: str, png: str | Path, pdf: str | Path) -> None:
    ds = open_group(cube_path, experiment)
    fig = figures.draw(ds, figure)
    import matplotlib.pyplot as plt  # after draw(), which chose the backend

    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
