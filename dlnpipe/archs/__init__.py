"""The architectures, by name: the one registry the API, the config and the workflow ask.

Adding an architecture: a module in this package with its class (see :mod:`dlnpipe.archs.base`;
a nonlinear small-init network only names its activation, e.g. :mod:`dlnpipe.archs.relu`) and one
entry below. The config's ``inits`` accept every name listed here.
"""

from __future__ import annotations

from dlnpipe._checks import check_choice
from dlnpipe.archs.base import Architecture, Evaluation
from dlnpipe.archs.gelu import GELU
from dlnpipe.archs.relu import RELU
from dlnpipe.archs.residual import RESIDUAL
from dlnpipe.archs.small import SMALL

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (SMALL, RESIDUAL, GELU, RELU)}
NAMES = tuple(ARCHITECTURES)
DEFAULT = SMALL.name  # the paper's small-init deep linear network

__all__ = ["ARCHITECTURES", "Architecture", "DEFAULT", "Evaluation", "NAMES", "get", "names"]


def get(arch: str | Architecture) -> Architecture:
    """The architecture called ``arch`` (an Architecture is returned as it is)."""
    if isinstance(arch, Architecture):
        return arch
    return ARCHITECTURES[check_choice("arch", arch, NAMES)]


def names(**flags) -> list[str]:
    """Names of the architectures whose attributes equal ``flags``, e.g. ``names(linear=True)``."""
    return [a.name for a in ARCHITECTURES.values() if all(getattr(a, k) == v for k, v in flags.items())]
