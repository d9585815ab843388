"""``small``: the paper's small-scale ("MLP") initialisation of a deep linear network (docs/theory.md#architectures).

f(x) = W_L ⋯ W_1 x with W_1 (m, d), W_2..W_{L−1} (m, m), W_L (1, m), entries i.i.d. N(0, s²) and no
1/√m factor; s is the scale of initialisation. Depth 1 is a single (1, d) layer.
"""

from __future__ import annotations

from dlnpipe.archs.linear import LinearArchitecture


class Small(LinearArchitecture):
    name = "small"
    description = "deep linear network, small init: entries N(0, s²)"


SMALL = Small()
