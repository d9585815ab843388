"""The central flow of gradient descent (Cohen, Damian, Talwalkar, Kolter, Lee, ICLR 2025;
docs/theory.md#the-central-flow): GD's time-averaged trajectory at the edge of stability, as an ODE.

In flow time τ = η·t (t in steps, as :mod:`dlnpipe.steppers.flow` counts it),

    dw/dτ = −[∇R(w) + ½ ∇_w⟨X, UᵀH(w)U⟩] = −[∇R + ½ Σ_ij X_ij G_ij]      (U held fixed in the derivative),

u_i the Hessian's top eigenvectors (λ_1 ≥ … ≥ λ_k: at least ``central_k``, and every one that is a candidate
plus one, :func:`tracked_directions`) and X ⪰ 0 the smallest correction that keeps the tracked block UᵀHU ⪯ 2/η:
with G_ij = ∇_w(u_iᵀHu_j), d(u_iᵀHu_j)/dτ = −G_ij·∇R − ½ Σ_kl X_kl G_ij·G_kl, and X solves the semidefinite
complementarity problem (:func:`semidefinite_complementarity`)

    X ⪰ 0,   Y = ½ 𝒦(X) + Q ⪰ 0,   ⟨X, Y⟩ = 0,     𝒦(X)_ij = Σ_kl (G_ij·G_kl) X_kl,  Q_ij = G_ij·∇R + r_i δ_ij,

over the candidates (ηλ_i ≥ 2(1 − CANDIDATE)), with r_i = (2 − ηλ_i)/(η² τ_s): each candidate may rise at
most at the rate that brings ηλ_i to 2 with time constant τ_s steps (and is pushed back if a step overshot),
which keeps the ODE's solution on ηλ ≤ 2 without a discontinuity at the switch (the exact central flow is
τ_s → 0). With one candidate, X = σ² = max(0, −2Q/‖G‖²) (Cohen et al.'s σ²); with several, X is diagonal in
the eigenbasis when nothing couples the directions (the diagonal problem, :func:`complementarity`, solved
exactly by enumerating the candidates' subsets, is where the solver starts) and off-diagonal where it must
hold a direction that mixes them. The prediction of GD's time-averaged loss is R(w) + ½⟨X, UᵀHU⟩ =
R + ½ Σ X_ii λ_i.

The ODE is integrated by the flow stepper's error-controlled Dormand–Prince 5(4) (the field replaced); while
every ηλ_i stays below 2(1 − CANDIDATE) the field is −∇R and the central flow is gradient flow, step for step.
The field is discontinuous where a direction becomes a candidate while it rises fast; a start far above the
edge (ηS ≫ 2, where GD diverges within a few steps) can slide along that line, the error control then holding
the step at 1e-7–1e-6 of a GD step: a network whose step stays below STALL of a GD step for
:data:`~dlnpipe.steppers.flow.STALL_STEPS` accepted steps in a row is stopped there, failed, with a warning.
Per sample it records (``extras``): the sharpness λ_1 (``traj_central_sharpness``), the predicted time-averaged
loss (``traj_central_loss``), tr X (``traj_central_trace_x``), the number of directions held at 2/η (X's
rank, ``traj_central_active``) and the balancing gaps (``traj_balance``).
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dlnpipe._checks import check_int, check_positive
from dlnpipe.lazy import torch
from dlnpipe.steppers.base import EXPLODE, Schedule
from dlnpipe.steppers.flow import GradientFlow
from dlnpipe.tensors import balance_gaps, flatten, unflatten

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger("dlnpipe.training")

EVALUATION_COST = 600  # one field evaluation, in gradient evaluations (the workflow's cost model)
CANDIDATE = 0.02  # a tracked eigenvalue is constrained once ηλ ≥ 2(1 − CANDIDATE)
STALL = 1e-4  # a flow step shorter than this fraction of a GD step is one the field's time scale forced
RECORDED = ("traj_central_sharpness", "traj_central_loss", "traj_central_trace_x", "traj_central_active")
BALANCE = "traj_balance"  # and the balancing gaps (B, samples, L − 1) at each sample


def complementarity(K: Tensor, q: Tensor, candidate: Tensor) -> Tensor:
    """x (b, k) solving the LCP x ≥ 0, ½Kx + q ≥ 0, xᵀ(½Kx + q) = 0 over the ``candidate`` entries (b, k) bool (x = 0
    elsewhere, unconstrained), for PSD K (b, k, k): every subset S of the candidates is tried (½K_SS x_S = −q_S),
    and the first that is feasible (by size) is taken; exact to rounding for the few directions tracked."""
    b, k = q.shape
    M = 0.5 * K
    scale = torch.diagonal(M, dim1=1, dim2=2).abs().amax(1).clamp(min=1e-300)  # (b,)
    tol = 1e-12 * scale[:, None] * (1 + q.abs() / scale[:, None])
    x = torch.zeros_like(q)
    found = ~candidate.any(1)  # networks with no candidate: x = 0
    for size in range(k + 1):  # the empty subset first: x = 0 where no candidate needs holding
        for subset in itertools.combinations(range(k), size):
            s = torch.zeros(k, dtype=torch.bool, device=q.device)
            s[list(subset)] = True
            ok = ~found & (candidate[:, s].all(1) if size else torch.ones_like(found))
            if not bool(ok.any()):
                continue
            sm = s.to(q.dtype)
            A = M * sm[:, None] * sm[None, :] + torch.diag(1 - sm) + 1e-14 * scale[:, None, None] * torch.diag(sm)
            xs = torch.linalg.solve(A, (-q * sm)[..., None])[..., 0] * sm
            w = (M @ xs[..., None])[..., 0] + q
            feasible = ((xs >= -tol) | ~s).all(1) & ((w >= -tol) | s | ~candidate).all(1)
            take = ok & feasible
            x = torch.where(take[:, None], xs.clamp(min=0), x)
            found = found | take
    if not bool(found.all()):  # rounding left no subset exactly feasible: the unconstrained field
        log.warning("central flow: %d networks without a feasible correction at this point", int((~found).sum()))
    return x


def semidefinite_complementarity(K4: Tensor, Q: Tensor, candidate: Tensor, *, tol: float = 1e-12,
                                 max_iter: int = 20_000) -> Tensor:
    """X (b, c, c) solving the semidefinite complementarity problem X ⪰ 0, Y = ½𝒦(X) + Q ⪰ 0, ⟨X, Y⟩ = 0 on each
    network's candidate block (``candidate`` (b, c) bool, a prefix; X is zero outside it and Y free there), with
    𝒦(X)_ij = Σ_kl K4_ijkl X_kl for the Gram tensor K4 (b, c, c, c, c) of the G_ij and Q (b, c, c) symmetric.

    These are the optimality conditions of the convex min_{X ⪰ 0} ¼⟨X, 𝒦X⟩ + ⟨Q, X⟩: X starts at the diagonal
    solution (:func:`complementarity` on the diagonal, exact when it already satisfies them, as with one
    candidate) and is refined by accelerated projected gradient (step 1/‖½𝒦‖, projection: clip the block's
    eigenvalues at 0, momentum restarted when it points uphill) until ‖X − Π(X − ∇/L)‖ ≤ tol of the problem's scale."""
    b, c = Q.shape[:2]
    block = (candidate[:, :, None] & candidate[:, None, :]).to(Q.dtype)
    K = K4.reshape(b, c * c, c * c)
    K = 0.5 * (K + K.mT)
    L = (0.5 * torch.linalg.eigvalsh(K)[:, -1]).clamp(min=1e-300)[:, None, None]

    def grad(X: Tensor) -> Tensor:
        return 0.5 * (K @ X.reshape(b, c * c, 1)).reshape(b, c, c) + Q

    def project(Z: Tensor) -> Tensor:
        w, V = torch.linalg.eigh(0.5 * (Z + Z.mT) * block)
        return (V * w.clamp(min=0)[:, None, :]) @ V.mT

    diag = torch.arange(c, device=Q.device)
    x = complementarity(K4[:, diag, diag][:, :, diag, diag], Q[:, diag, diag], candidate)
    X = torch.diag_embed(x)
    scale = Q.abs().amax((1, 2)) + L[:, 0, 0] * X.abs().amax((1, 2)) + 1e-300

    def residual(X: Tensor) -> Tensor:
        return torch.linalg.matrix_norm(X - project(X - grad(X) / L)) * L[:, 0, 0] / scale

    live = residual(X) > tol
    if not bool(live.any()):
        return X
    Z, t = X.clone(), torch.ones(b, 1, 1, dtype=Q.dtype, device=Q.device)
    for _ in range(max_iter):
        new = project(Z - grad(Z) / L)
        # the momentum points uphill: restart it (O'Donoghue & Candès' gradient test; no objective values, whose
        # differences near the solution are rounding)
        restart = ((Z - new) * (new - X)).sum((1, 2), keepdim=True) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        Z = torch.where(restart, new, new + ((t - 1) / t_new) * (new - X))
        t = torch.where(restart, torch.ones_like(t), t_new)
        X = torch.where(live[:, None, None], new, X)
        live = live & (residual(X) > tol)
        if not bool(live.any()):
            return X
    log.warning("central flow: the semidefinite correction of %d networks met its tolerance only to %.1e",
                int(live.sum()), float(residual(X).max()))
    return X


DENSE_BELOW = 128  # up to this many parameters the Hessian is formed whole (one batched backward) and diagonalised


def top_eigenpairs(arch, layers: list[Tensor], c: Tensor, prob, y: Tensor, g: Tensor, v0: Tensor, *, k: int,
                   tol: float) -> tuple[Tensor, Tensor]:
    """The top-k Hessian eigenvalues (b, k), decreasing, and unit eigenvectors (b, k, P) at the batch's point ``y``
    (whose gradient graph is ``g``): small networks by the dense Hessian (every eigenpair, exact to rounding: k is
    then ignored and all P are returned), larger ones by Lanczos from ``v0`` to tolerance ``tol``."""
    b, P = y.shape
    if P <= DENSE_BELOW:
        eye = torch.eye(P, dtype=y.dtype, device=y.device)[:, None, :].expand(P, b, P)
        with torch.enable_grad():
            (H,) = torch.autograd.grad(g, y, grad_outputs=eye, is_grads_batched=True, retain_graph=True)
        H = H.permute(1, 0, 2)
        evals, evecs = torch.linalg.eigh((H + H.mT) / 2)
        return evals.flip(1), evecs.flip(2).mT
    from dlnpipe.hessian import HessianOperator
    from dlnpipe.lanczos import lanczos

    eig = lanczos(HessianOperator(arch, layers, c, prob), v0, k=k, tol=tol, return_vectors=True)
    assert eig.eigenvectors is not None
    return torch.as_tensor(eig.eigenvalues, dtype=y.dtype, device=y.device), eig.eigenvectors.to(y.dtype)


def tracked_directions(arch, layers: list[Tensor], c: Tensor, prob, y: Tensor, g: Tensor, v0: Tensor, eta: Tensor,
                       *, k: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """The tracked eigenpairs (λ (b, k'), U (b, k', P)) and which are candidates (ηλ ≥ 2(1 − CANDIDATE), (b, k')):
    at least ``k`` directions, and as many more as it takes for every network's last tracked eigenvalue to lie
    below the candidate line (or all P), so that every eigenvalue that reaches 2/η is tracked. The dense
    Hessian has them all at once; Lanczos is rerun with twice the directions until that holds."""
    P = y.shape[1]
    k = min(k, P)
    while True:
        lam, U = top_eigenpairs(arch, layers, c, prob, y, g, v0, k=k, tol=tol)
        candidate = eta[:, None] * lam >= 2 * (1 - CANDIDATE)
        if lam.shape[1] > k:  # every eigenpair (dense): keep k, or one past the last candidate
            k = min(P, max(k, int(candidate.sum(1).max()) + 1))
            return lam[:, :k], U[:, :k], candidate[:, :k]
        if k == P or not bool(candidate[:, -1].any()):
            return lam, U, candidate
        k = min(P, 2 * k)


def central_field(arch, layers: list[Tensor], c: Tensor, prob, eta: Tensor, v0: Tensor, *, k: int, tau: float,
                  tol: float = 1e-12) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(the central field −[∇R + ½Σ x_i G_i] (b, P), R − R* (b,), what a sample records) at ``layers``, with
    learning rates ``eta`` (b,) and Lanczos start vectors ``v0`` (b, P); float64."""
    y = flatten(layers).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = arch.loss(unflatten(y, layers), c, prob)
        (g,) = torch.autograd.grad(loss.sum(), y, create_graph=True)
    lam, U, candidate = tracked_directions(arch, layers, c, prob, y, g, v0, eta, k=k, tol=tol)
    grads, excess = arch.gradient(layers, c, prob)  # the flow's own field and R − R*: below the edge, the flow
    field = -flatten(grads)
    held, trace_x, active = torch.zeros_like(excess), torch.zeros_like(excess), torch.zeros_like(excess)
    if bool(candidate.any()):
        m = int(candidate.sum(1).max())  # the candidates are a prefix of the tracked directions
        G = torch.zeros(y.shape[0], m, m, y.shape[1], dtype=y.dtype, device=y.device)  # G_ij = ∇(u_iᵀHu_j)
        with torch.enable_grad():
            hv = [torch.autograd.grad((g * U[:, i]).sum(), y, create_graph=True)[0] for i in range(m)]
            for i in range(m):
                for j in range(i, m):
                    (G[:, i, j],) = torch.autograd.grad((hv[i] * U[:, j]).sum(), y, retain_graph=True)
                    G[:, j, i] = G[:, i, j]
        cand = candidate[:, :m]
        G = G * (cand[:, :, None] & cand[:, None, :])[..., None]
        rate = (2 - eta[:, None] * lam[:, :m]) / (eta[:, None] ** 2 * tau) * cand
        Q = torch.einsum("bijp,bp->bij", G, g.detach()) + torch.diag_embed(rate)
        X = semidefinite_complementarity(torch.einsum("bijp,bklp->bijkl", G, G), Q, cand)
        field = field - 0.5 * torch.einsum("bij,bijp->bp", X, G)
        held = 0.5 * (torch.diagonal(X, dim1=1, dim2=2) * lam[:, :m]).sum(1)  # ½⟨X, UᵀHU⟩, UᵀHU = diag(λ)
        trace_x = torch.diagonal(X, dim1=1, dim2=2).sum(1)
        w = torch.linalg.eigvalsh(X)
        active = (w > 1e-12 * w.abs().amax(1, keepdim=True).clamp(min=1e-300)).sum(1).to(lam.dtype)
    info = {"traj_central_sharpness": lam[:, 0], "traj_central_loss": excess + prob.loss_opt + held,
            "traj_central_trace_x": trace_x, "traj_central_active": active}
    return field, excess, info


class CentralFlow(GradientFlow):
    name = "central"
    options: ClassVar[tuple[str, ...]] = ("flow_rtol", "flow_atol", "flow_max_steps", "explode", "central_k",
                                          "central_tau")
    records_sharpness = False
    compiled = False  # the field needs the Hessian's eigenvectors: torch only
    stall = STALL

    @classmethod
    def threshold(cls, lr, settings):
        """2/η: the central flow is GD's, held at its edge of stability."""
        return 2.0 / np.asarray(lr, dtype=float)

    def __init__(self, *, flow_rtol: float = 1e-8, flow_atol: float = 1e-10, flow_max_steps: int = 100_000,
                 explode: float = EXPLODE, central_k: int = 2, central_tau: float = 5.0):
        super().__init__(flow_rtol=flow_rtol, flow_atol=flow_atol, flow_max_steps=flow_max_steps, explode=explode)
        self.k = check_int("central_k", central_k, minimum=1)
        self.tau = check_positive("central_tau", central_tau)
        self.v0: Tensor | None = None  # Lanczos start vectors (B, P), from each network's seed

    @classmethod
    def evaluations(cls, steps: int, options: dict) -> float:
        """The flow's count of field evaluations, each priced at EVALUATION_COST gradients: a field evaluation is
        a Hessian eigenproblem (a dense Hessian or some thirty Hessian-vector products) and the third-derivative
        passes, mostly autograd's per-call overhead at these sizes (measured on the eos experiment: about 600
        gradient steps' flops each)."""
        return EVALUATION_COST * super().evaluations(steps, options)

    def field(self, state, y: Tensor) -> tuple[Tensor, Tensor]:
        from dlnpipe.curvature import start_vectors

        v0 = self.v0
        if v0 is None:
            v0 = self.v0 = start_vectors(self.seeds, y.shape[1], device=y.device).to(y.dtype)
        live = state.idx
        f, excess, info = central_field(state.arch, unflatten(y, self.like), state.c, state.prob, self.lr[live],
                                        v0[live], k=min(self.k, y.shape[1]), tau=self.tau)
        self.last = info
        return f, excess

    def start(self, state, schedule: Schedule) -> None:
        if state.layers[0].dtype != torch.float64:
            raise ValueError("the central flow integrates in float64 (its field holds Hessian eigenvectors): "
                             "train it with dtype='float64'")
        B, n = state.size, schedule.record_steps.size
        self.seeds, self.last, self.v0 = schedule.seed, {}, None
        self.horizon_mask = schedule.record_steps[None, :] <= schedule.steps[:, None]  # (B, n): samples it owes
        self.converged = np.zeros(B, dtype=bool)  # stopped early, converged: its later samples hold
        # ... and these values, where it stopped (self.final)
        shape = {name: () for name in RECORDED} | {BALANCE: (len(state.layers) - 1,)}  # per sample
        self.recorded = {name: torch.full((B, n, *rest), float("nan"), dtype=torch.float64, device=state.idx.device)
                         for name, rest in shape.items()}
        self.final = {name: np.full((B, *rest), np.nan) for name, rest in shape.items()}
        super().start(state, schedule)

    def _sampled(self, state, due: Tensor, j: Tensor) -> None:
        """With each of the flow's samples, what the field computed at that point (the last evaluation was there:
        the start, or an accepted step's end)."""
        gi = state.idx[due]
        for name in RECORDED:
            self.recorded[name][gi, j[due]] = self.last[name][due].to(torch.float64)
        self.recorded[BALANCE][gi, j[due]] = balance_gaps([W[due] for W in state.layers]).to(torch.float64)

    def _leave(self, state) -> None:
        """As the flow's; a network that converged keeps what the field computed at its last point (its last
        accepted step's end: where it stopped) for its later samples."""
        if state.size:
            r = self.rows
            conv = (r.excess <= r.stop) & torch.isfinite(r.excess)
            gi = state.idx[conv].cpu().numpy()
            self.converged[gi] = True
            for name in RECORDED:
                self.final[name][gi] = self.last[name][conv].to(torch.float64).cpu().numpy()
            self.final[BALANCE][gi] = balance_gaps([W[conv] for W in state.layers]).cpu().numpy()
        super()._leave(state)

    def outputs(self) -> dict[str, np.ndarray]:
        """The recorded samples; a network that converged before its horizon holds its last values after it (as
        the trainer holds its losses)."""
        out = {}
        for name, v in self.recorded.items():
            a = v.cpu().numpy()
            held = (np.isnan(a).T & (self.horizon_mask & self.converged[:, None]).T).T  # (B, n, ...)
            out[name] = np.where(held, self.final[name][:, None], a)
        return out
