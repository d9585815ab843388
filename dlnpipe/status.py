"""Status codes of a trained network (stored as CF flags in the cube)."""

CONVERGED, FAILED, DIVERGED = 0, 1, 2
STATUS_MEANINGS = ("converged", "failed", "diverged")
