"""The float32 GELU of the compiled step (activated.c), fitted here: ``python -m dlnpipe.kernels.fit_gelu``
prints the fits and their float32 errors, ``--write`` puts the coefficients into activated.c, ``--check``
fails unless activated.c holds exactly what this script fits (a test runs it).

Three polynomials, each a weighted least-squares fit in float64 on Chebyshev nodes, rounded to float32:

* for |z| ≤ 2, with s = z²: Φ(z) = 0.5 + z·A(s) (A of degree 7) and σ'(z) = Φ(z) + zφ(z) = 0.5 + z·D(s) (D of
  degree 9), fitted on s ∈ [0, 4] with weight z (the error of σ and σ' scales with z·ΔA and z·ΔD);
* for |z| > 2, with t = |z| and u = 1/t: the Mills ratio, Φ(−t) = φ(t)·B(u)/t (B of degree 7), fitted on
  u ∈ [1/T, 1/2], T = 12.65 (beyond, the kernel's exp is clamped at e^−80 and φ underflows float32 anyway),
  relative to B.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("activated.c")
NODES = 400
T_MAX = float(np.sqrt(160.0))  # exp(-t²/2) ≥ e^-80: the kernel's clamp
# name in activated.c -> (its variable, degree)
POLYNOMIALS = {"pa": ("s", 7), "pd": ("s", 9), "pb": ("u", 7)}


def _chebyshev(lo: float, hi: float, n: int = NODES) -> np.ndarray:
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)


def fits() -> dict[str, np.ndarray]:
    """The float32 coefficients of each polynomial, lowest degree first."""
    from scipy.special import erfcx, ndtr

    s = _chebyshev(0.0, 4.0)
    z = np.sqrt(s)
    phi = np.exp(-s / 2) / np.sqrt(2 * np.pi)
    A = (ndtr(z) - 0.5) / z
    u = _chebyshev(1 / T_MAX, 0.5)
    B = np.sqrt(np.pi / 2) / u * erfcx(1 / (u * np.sqrt(2)))  # t·Φ(−t)/φ(t), without under- or overflow
    out = {"pa": np.polynomial.polynomial.polyfit(s, A, 7, w=z),
           "pd": np.polynomial.polynomial.polyfit(s, A + phi, 9, w=z),
           "pb": np.polynomial.polynomial.polyfit(u, B, 7, w=1 / B)}
    return {name: c.astype(np.float32) for name, c in out.items()}


def _horner32(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    acc = np.full_like(x, c[-1], dtype=np.float32)
    for coef in c[-2::-1]:
        acc = acc * x + coef
    return acc


def errors(c: dict[str, np.ndarray]) -> dict[str, float]:
    """The largest errors of σ (relative to max(1, |z|)) and σ' on a dense grid of z, the polynomials evaluated
    in float32 as the kernel does (without its fused multiply-adds)."""
    from scipy.special import ndtr

    z = np.linspace(-12, 12, 480_001).astype(np.float32)
    inner = np.abs(z) <= 2
    s, t = z * z, np.abs(z)
    a = np.where(inner, z * (np.float32(0.5) + z * _horner32(c["pa"], s)), 0)
    da = np.where(inner, np.float32(0.5) + z * _horner32(c["pd"], s), 0)
    tt = np.where(inner, np.float32(3), t)
    pdf = (np.exp(-0.5 * tt.astype(np.float64) ** 2) / np.sqrt(2 * np.pi)).astype(np.float32)
    tail = pdf * (np.float32(1) / tt) * _horner32(c["pb"], np.float32(1) / tt)
    cdf = np.where(z < 0, tail, np.float32(1) - tail)
    a = np.where(inner, a, z * cdf)
    da = np.where(inner, da, cdf + z * pdf)
    z64 = z.astype(np.float64)
    exact_cdf = ndtr(z64)
    exact_pdf = np.exp(-z64**2 / 2) / np.sqrt(2 * np.pi)
    return {"sigma": float(np.max(np.abs(a - z64 * exact_cdf) / np.maximum(1, np.abs(z64)))),
            "sigma_prime": float(np.max(np.abs(da - (exact_cdf + z64 * exact_pdf))))}


def _block(name: str, var: str, c: np.ndarray, indent: str) -> str:
    lines = [f"{indent}float {name} = {c[-1]:.9e}f;"]
    lines += [f"{indent}{name} = {name} * {var} + {coef:.9e}f;" for coef in c[-2::-1]]
    return "\n".join(lines)


def rewritten(text: str, c: dict[str, np.ndarray]) -> str:
    """activated.c with each polynomial's Horner statements replaced by the fitted coefficients."""
    for name, (var, degree) in POLYNOMIALS.items():
        pattern = re.compile(rf"^( *)float {name} = [^;\n]*;\n(?:\1{name} = {name} \* {var} \+ [^;\n]*;\n){{{degree}}}",
                             re.MULTILINE)
        found = list(pattern.finditer(text))
        if len(found) != 1:
            raise SystemExit(f"activated.c: expected one Horner block for {name} of degree {degree}, "
                             f"found {len(found)}")
        m = found[0]
        text = text[: m.start()] + _block(name, var, c[name], m.group(1)) + "\n" + text[m.end():]
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the coefficients into activated.c")
    ap.add_argument("--check", action="store_true", help="fail unless activated.c holds these coefficients")
    args = ap.parse_args(argv)
    c = fits()
    text = SOURCE.read_text()
    new = rewritten(text, c)
    for name, err in errors(c).items():
        print(f"max error of {name} in float32: {err:.3g} ({err / np.finfo(np.float32).eps:.2f} ulp of 1)")
    if args.check and new != text:
        print("activated.c does not hold the fitted coefficients: run python -m dlnpipe.kernels.fit_gelu --write")
        return 1
    if args.write and new != text:
        SOURCE.write_text(new)
        print(f"wrote {SOURCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
