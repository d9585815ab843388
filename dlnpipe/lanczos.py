"""Batched symmetric eigensolvers on a matrix-free operator: Lanczos and the paper's power method.

The operator (:class:`Operator`: its size P and a ``matvec``) maps a batch of vectors (B, P) to (B, P)
and acts on each row with that row's own symmetric matrix (a block-diagonal Hessian). Every inner
product is taken per row, so each of the B Krylov spaces is its own (one α and β per network); a single
Krylov space over the stacked batch would only find the largest eigenvalue among all networks.

Lanczos here keeps the whole basis and re-orthogonalises every new vector twice (classical
Gram-Schmidt, twice), in float64, so the Ritz values are trustworthy down to rounding. When a
Krylov space becomes invariant (β ≈ 0: the operator has fewer distinct eigenvalues than the
iteration count), the iteration restarts that row from a random vector orthogonal to its basis,
which leaves the tridiagonal matrix block-diagonal and the Ritz values exact. The restart vectors come from a
generator seeded by the start vectors (unless one is given), never from torch's global one: a result depends
on its inputs only, not on what the process drew before (at a minimizer, where the bottom of the spectrum is a
cluster at 0, restarts are common and λ_min differs in its last bits with the restart vector).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Operator(Protocol):
    """B symmetric P×P matrices, one per row of a batch of vectors: ``matvec`` maps (B, P) to (B, P)."""

    size: int  # P

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class MatrixOperator:
    """Dense batched matrices A (B, P, P) as an :class:`Operator` (tests, examples, small problems)."""

    def __init__(self, A: torch.Tensor):
        self.A, self.size = A, A.shape[-1]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.A, v[:, :, None])[:, :, 0]


class DiagonalOperator:
    """Diagonal matrices d (B, P) as an :class:`Operator`."""

    def __init__(self, d: torch.Tensor):
        self.d, self.size = d, d.shape[-1]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v


class Negated:
    """−A for an operator A: the top of its spectrum is the bottom of A's (λ_min(A) = −λ_max(−A))."""

    def __init__(self, op: Operator):
        self.op, self.size = op, op.size

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return -self.op.matvec(v)


class Preconditioned:
    """P^{-1/2} A P^{-1/2} for an operator A and positive diagonals P (B, size): the spectrum of P⁻¹A."""

    def __init__(self, op: Operator, diagonal: torch.Tensor):
        self.op, self.size, self.scale = op, op.size, diagonal.rsqrt()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matvec(self.scale * v)


@dataclass(frozen=True)
class EigenResult:
    """Top-k algebraic eigenpairs per row. eigenvalues (B, k) in decreasing order; residuals (B, k)
    the certificate ‖Av − λv‖ of each unit Ritz vector, computed with fresh products; iterations the
    number of operator products spent per row (the same for the whole batch); converged (B,) whether
    the row met its stopping test (for Lanczos: every top-k residual estimate below tol × its largest
    |Ritz value|, or a Krylov space of full dimension, where the Ritz values are the eigenvalues) rather
    than running out of iterations."""

    eigenvalues: np.ndarray
    residuals: np.ndarray
    iterations: int
    converged: np.ndarray
    eigenvectors: torch.Tensor | None = None  # (B, k, P)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


class Krylov:
    """Lanczos iterations on a batch of rows: per row an orthonormal basis V (B, j, P) kept whole and
    re-orthogonalised twice (CGS2), and the tridiagonal matrix α (B, j), β (B, j−1). Rows whose Krylov
    space becomes invariant restart from a random vector orthogonal to their basis (β = 0 there)."""

    def __init__(self, op: Operator, v0: torch.Tensor, capacity: int, *, generator=None, initial: int = 64):
        B, P = v0.shape
        if generator is None:  # restart vectors drawn from the start vectors' own bits: the same in every process
            digest = hashlib.blake2b(v0.detach().cpu().numpy().tobytes(), digest_size=8).digest()
            generator = torch.Generator(device=v0.device).manual_seed(int.from_bytes(digest, "little") >> 1)
        self.matvec, self.generator, self.capacity = op.matvec, generator, capacity
        dtype, device = v0.dtype, v0.device
        # The basis grows by doubling: most Hessians converge in a few dozen iterations, far below P.
        self.V = torch.zeros(B, min(capacity, initial), P, dtype=dtype, device=device)
        self.alpha = torch.zeros(B, capacity, dtype=dtype, device=device)
        self.beta = torch.zeros(B, capacity, dtype=dtype, device=device)
        self.q = v0 / torch.linalg.vector_norm(v0, dim=1, keepdim=True)
        self.q_prev = torch.zeros_like(self.q)
        self.b_prev = torch.zeros(B, dtype=dtype, device=device)
        self.j = 0

    def step(self, *, last: bool = False) -> torch.Tensor:
        """One iteration: q_j joins the basis and α_j is taken; unless ``last``, the next vector and β_j
        are formed. Returns the norm of the new residual (B,)."""
        V, j, q = self.V, self.j, self.q
        B, P = q.shape
        if j == V.shape[1]:
            V = self.V = torch.cat([V, torch.zeros(B, min(V.shape[1], self.capacity - j), P, dtype=q.dtype,
                                                   device=q.device)], dim=1)
        V[:, j] = q
        w = self.matvec(q)
        a = _rowdot(q, w)
        self.alpha[:, j] = a
        w = w - a[:, None] * q - self.b_prev[:, None] * self.q_prev
        basis = V[:, : j + 1]
        for _ in range(2):  # CGS2: the second pass removes what rounding left of the first
            w = w - torch.bmm(torch.bmm(w[:, None, :], basis.mT), basis)[:, 0]
        b = torch.linalg.vector_norm(w, dim=1)
        self.j = j + 1
        if last:
            return b
        tiny = torch.finfo(q.dtype).eps
        scale = self.alpha[:, : j + 1].abs().amax(1) + self.beta[:, : j + 1].abs().amax(1)
        broken = b <= 1e3 * tiny * torch.clamp(scale, min=tiny)
        if bool(broken.any()):
            # Invariant subspace: continue from a random vector orthogonal to this row's basis.
            r = torch.randn(B, P, dtype=q.dtype, device=q.device, generator=self.generator)
            for _ in range(2):
                r = r - torch.bmm(torch.bmm(r[:, None, :], basis.mT), basis)[:, 0]
            r = r / torch.linalg.vector_norm(r, dim=1, keepdim=True)
            w = torch.where(broken[:, None], r, w / torch.clamp(b, min=tiny)[:, None])
            b = torch.where(broken, torch.zeros_like(b), b)
        else:
            w = w / b[:, None]
        self.beta[:, j] = b
        self.q_prev, self.q, self.b_prev = q, w, b
        return b

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and eigenvectors of the tridiagonal matrices so far, (B, j), (B, j, j)."""
        return _ritz(self.alpha[:, : self.j], self.beta[:, : self.j - 1])


def lanczos(op: Operator, v0: torch.Tensor, *, k: int = 1, tol: float = 1e-10,
            max_iter: int | None = None, check_every: int = 5,
            generator: torch.Generator | None = None, return_vectors: bool = False) -> EigenResult:
    """Largest ``k`` algebraic eigenvalues of each row's matrix of ``op``, by Lanczos with full re-orthogonalisation.

    v0: (B, P) start vectors (float64 recommended; the iteration runs in v0's dtype).
    tol: stop when every row's top-k Ritz pairs have the Lanczos residual estimate β_j |s_ji| below
    tol × (largest |Ritz value| of that row). max_iter defaults to min(P, 300); with max_iter = P
    the Ritz values are the exact eigenvalues. ``converged`` says, per row, which of the two ended it.
    """
    B, P = v0.shape
    if op.size != P:
        raise ValueError(f"the start vectors have {P} entries, the operator's size is {op.size}")
    if k < 1 or k > P:
        raise ValueError(f"k must be in [1, {P}] (the operator's size), got k={k}")
    max_iter = min(P, 300) if max_iter is None else min(int(max_iter), P)
    max_iter = max(max_iter, k)
    kr = Krylov(op, v0, max_iter, generator=generator, initial=max(2 * k + 30, 64))

    def met(b, theta, S) -> torch.Tensor:
        est = (b[:, None] * S[:, -1, -k:].abs())  # (B, k): the Lanczos residual estimates
        return (est <= tol * theta.abs().amax(1, keepdim=True)).all(1)

    while True:
        b = kr.step(last=kr.j + 1 == max_iter)
        j = kr.j
        if j == max_iter:
            break
        if j >= k and j % check_every == 0 and bool(met(b, *kr.ritz()).all()):
            break
    theta, S = kr.ritz()
    converged = torch.ones(B, dtype=torch.bool) if j == P else met(b, theta, S).cpu()
    matvec = op.matvec
    top = torch.flip(theta[:, -k:], dims=[1])  # (B, k) decreasing
    Y = torch.bmm(torch.flip(S[:, :, -k:], dims=[2]).mT, kr.V[:, :j])  # (B, k, P) unit Ritz vectors
    residuals = torch.stack(
        [torch.linalg.vector_norm(matvec(Y[:, i]) - top[:, i, None] * Y[:, i], dim=1) for i in range(k)],
        dim=1)
    return EigenResult(eigenvalues=top.cpu().numpy(), residuals=residuals.cpu().numpy(),
                       iterations=j + k, converged=converged.numpy(), eigenvectors=Y if return_vectors else None)


def quadrature(op: Operator, v0: torch.Tensor, steps: int, *, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of each row's spectral measure seen from its start vector (stochastic Lanczos
    quadrature): ``steps`` Lanczos iterations from v0/‖v0‖ give nodes θ_j (the Ritz values) and weights
    τ_j = (first component of the j-th eigenvector of T)², summing to 1, with Σ τ_j θ_j^p = vᵀ A^p v
    for p < 2·steps. Returns (nodes, weights), each (B, steps), nodes ascending."""
    B, P = v0.shape
    if not 1 <= steps <= P:
        raise ValueError(f"steps must be in [1, {P}] (the operator's size), got steps={steps}")
    kr = Krylov(op, v0, steps, generator=generator, initial=steps)
    for s in range(steps):
        kr.step(last=s == steps - 1)
    theta, S = kr.ritz()
    return theta, S[:, 0, :] ** 2


def _ritz(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the batched tridiagonal matrices T (B, j, j), ascending."""
    T = torch.diag_embed(alpha)
    if beta.shape[1]:
        T = T + torch.diag_embed(beta, offset=1) + torch.diag_embed(beta, offset=-1)
    return torch.linalg.eigh(T)


def power_iteration(op: Operator, v0: torch.Tensor, *, iterations: int = 20) -> EigenResult:
    """The authors' estimate: ``iterations`` power steps, then the Rayleigh quotient vᵀAv.

    It converges to the eigenvalue of largest *magnitude*, which away from minima can be a large
    negative one; kept for comparison with the paper, not as dlnpipe's estimator. It has no stopping
    test: ``converged`` is False for every row (the residual says how far it got).
    """
    matvec = op.matvec
    v = v0 / torch.linalg.vector_norm(v0, dim=1, keepdim=True)
    for _ in range(iterations):
        w = matvec(v)
        v = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    w = matvec(v)
    lam = _rowdot(v, w)
    res = torch.linalg.vector_norm(w - lam[:, None] * v, dim=1)
    return EigenResult(eigenvalues=lam[:, None].cpu().numpy(), residuals=res[:, None].cpu().numpy(),
                       iterations=iterations + 1, converged=np.zeros(v.shape[0], dtype=bool))
