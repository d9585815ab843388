"""Random draws that belong to one network, made on the device for a whole batch at once.

Mini-batches and label noise must not depend on which networks share a batch (a network trained
alone equals the same network trained with others), so nothing here uses a stateful generator:
every draw is a counter-based hash (SplitMix64's finaliser) of (network seed, stream, step or
epoch, sample index), computed in int64 tensor arithmetic, which wraps like the uint64 original.
"""

from __future__ import annotations

from dlnpipe.lazy import torch

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # the constants of SplitMix64, as signed int64
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
PERMUTATION, NOISE_U1, NOISE_U2 = 1, 2, 3  # streams


def _shift(x, k: int):
    """Logical right shift of int64 tensors (``>>`` is arithmetic on negative values)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix(x):
    """SplitMix64 of each int64 entry (bit-for-bit the uint64 algorithm, read as int64)."""
    x = x + _GOLDEN
    x = (x ^ _shift(x, 30)) * _M1
    x = (x ^ _shift(x, 27)) * _M2
    return x ^ _shift(x, 31)


def hashes(seed, stream: int, counter, n: int):
    """(B, n) int64 hashes of (seed_b, stream, counter_b, i) for i < n; seed and counter (B,) int64."""
    head = mix(mix(seed ^ stream) + counter)
    return mix(head[:, None] + torch.arange(n, device=seed.device))


def uniform(h, dtype):
    """Uniform [0, 1) values from hashes: their top 53 bits."""
    return _shift(h, 11).to(torch.float64).mul_(2.0 ** -53).to(dtype)


def permutation_ranks(seed, epoch, n: int):
    """rank[b, i]: the position of sample i in network b's permutation of epoch ``epoch[b]`` (B, n)."""
    order = torch.argsort(hashes(seed, PERMUTATION, epoch, n), dim=1)
    return torch.argsort(order, dim=1)


def normal(seed, step, n: int, dtype):
    """(B, n) standard normal draws for step ``step[b]`` of each network (Box–Muller)."""
    u1 = uniform(hashes(seed, NOISE_U1, step, n), torch.float64)
    u2 = uniform(hashes(seed, NOISE_U2, step, n), torch.float64)
    return (torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)).to(dtype)
