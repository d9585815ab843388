"""The central flow of GD (dlnpipe.steppers.central) against gradient flow, closed forms and finite differences."""

import numpy as np
import pytest
import torch

import dlnpipe
from dlnpipe.curvature import start_vectors
from dlnpipe.steppers import central
from dlnpipe.steppers.central import (
    CANDIDATE,
    central_field,
    complementarity,
    semidefinite_complementarity,
    tracked_directions,
)
from dlnpipe.tensors import flatten, stack_weights, unflatten


def test_complementarity_solves_the_lcp():
    """Random PSD K (rank-deficient too) and q: x ≥ 0, w = ½Kx + q ≥ 0 on the candidates, xᵀw = 0; x = 0 off the
    candidates; one candidate: x = max(0, −2q/K)."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((200, 3, 5))
    G[:50, 2] = G[:50, 0] + G[:50, 1]  # dependent directions: K singular
    K = torch.tensor(G @ G.transpose(0, 2, 1))
    q = torch.tensor(rng.standard_normal((200, 3)) * 3)
    cand = torch.tensor(rng.random((200, 3)) < 0.8)
    x = complementarity(K, q, cand)
    w = 0.5 * (K @ x[..., None])[..., 0] + q
    scale = K.diagonal(dim1=1, dim2=2).amax(1, keepdim=True)
    assert (x >= 0).all() and (x[~cand] == 0).all()
    assert (w[cand] >= -1e-9 * (scale + q.abs()).expand_as(w)[cand]).all()
    assert ((x * w).abs() <= 1e-9 * (1 + x.abs()) * (scale + q.abs())).all()
    one = complementarity(K[:, :1, :1], q[:, :1], torch.ones(200, 1, dtype=torch.bool))
    expected = np.maximum(0, -2 * q[:, 0].numpy() / K[:, 0, 0].numpy())
    np.testing.assert_allclose(one[:, 0].numpy(), expected, rtol=1e-12, atol=1e-15)


def _sdlcp(b, c, P, seed, coupled=True):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((b, c, c, P))
    G = G + G.transpose(0, 2, 1, 3)  # G_ij = G_ji
    if not coupled:
        G = G * np.eye(c)[None, :, :, None]
    Q = rng.standard_normal((b, c, c)) * 3
    Q = Q + Q.transpose(0, 2, 1) if coupled else Q * np.eye(c)
    size = rng.integers(1, c + 1, b)
    cand = np.arange(c)[None, :] < size[:, None]
    block = (cand[:, :, None] & cand[:, None, :])
    G, Q = G * block[..., None], Q * block
    K4 = np.einsum("bijp,bklp->bijkl", G, G)
    return torch.tensor(K4), torch.tensor(Q), torch.tensor(cand), block


def test_semidefinite_complementarity_meets_its_conditions():
    """Random instances (c = 3 candidates or fewer, 𝒦 a Gram operator of symmetric G_ij): X ⪰ 0, zero outside the
    candidate block, Y = ½𝒦(X) + Q ⪰ 0 on it and ⟨X, Y⟩ = 0 (to 1e-9 of the scale); for many of them the diagonal
    solution breaks Y ⪰ 0, so X is genuinely off-diagonal there; with nothing coupling the directions it is the
    diagonal LCP's solution (1e-12)."""
    K4, Q, cand, block = _sdlcp(300, 3, 9, seed=0)
    X = semidefinite_complementarity(K4, Q, cand)
    b, c = Q.shape[:2]
    Y = 0.5 * (K4.reshape(b, c * c, c * c) @ X.reshape(b, c * c, 1)).reshape(b, c, c) + Q
    scale = (Q.abs().amax((1, 2)) + X.abs().amax((1, 2)))[:, None]
    np.testing.assert_allclose(X, X.mT, atol=1e-12)
    assert (X.numpy()[~block] == 0).all()
    assert (torch.linalg.eigvalsh(X) >= -1e-9 * scale).all()
    for k in range(b):
        n = int(cand[k].sum())
        assert torch.linalg.eigvalsh(Y[k, :n, :n]).min() >= -1e-9 * scale[k, 0], k
        assert abs(float((X[k, :n, :n] * Y[k, :n, :n]).sum())) <= 1e-9 * float(scale[k, 0]) ** 2, k
    diag = torch.arange(c)
    x = complementarity(K4[:, diag, diag][:, :, diag, diag], Q[:, diag, diag], cand)
    Yd = 0.5 * (K4.reshape(b, c * c, c * c) @ torch.diag_embed(x).reshape(b, c * c, 1)).reshape(b, c, c) + Q
    broken = [k for k in range(b) if torch.linalg.eigvalsh(Yd[k][cand[k]][:, cand[k]]).min() < -1e-6]
    assert len(broken) > 20, "the instances exercise the off-diagonal refinement"
    off = X - torch.diag_embed(torch.diagonal(X, dim1=1, dim2=2))
    assert float(off[broken].abs().amax()) > 1e-3
    K4, Q, cand, _ = _sdlcp(100, 3, 9, seed=1, coupled=False)
    x = complementarity(K4[:, diag, diag][:, :, diag, diag], Q[:, diag, diag], cand)
    np.testing.assert_allclose(semidefinite_complementarity(K4, Q, cand), torch.diag_embed(x), atol=1e-12)



@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 4, noise=0.5, seed=1, kappa=10.0)


def batch(data, nets):
    layers, c = stack_weights(nets, dtype="float64", device="cpu")
    arch = nets[0].architecture
    prob = arch.problem([data], in_dim=layers[0].shape[2], dtype=torch.float64, device="cpu")
    return arch, layers, c, prob


def test_one_unstable_direction_is_the_closed_form_and_holds_the_sharpness(data):
    """At a point where ηS = 2 exactly (η = 2/S) and gradient flow would sharpen: the field is
    −(∇R + ½σ²∇S) with σ² = −2∇S·∇R/‖∇S‖², ∇S checked by central differences of the Lanczos sharpness; moving
    along the field leaves S unchanged to second order while gradient flow raises it to first order."""
    mid = dlnpipe.train(data, arch="small", depth=3, width=5, lr=0.25, scale=0.5, seed=2, steps=4, optimizer="flow",
                        record_steps=[0])  # gradient flow to time 1: the sharpness still rises
    point = mid.networks()[0]
    arch, layers, c, prob = batch(data, [point])

    def S(w):
        net = dlnpipe.Weights([t[0].numpy() for t in unflatten(w[None], layers)], arch="small", seed=0)
        return float(dlnpipe.sharpness(data, net, tol=1e-13).values[0])

    y = flatten(layers)[0]
    s0 = S(y)
    eta = torch.tensor([2 / s0], dtype=torch.float64)
    v0 = start_vectors([0], y.numel(), device="cpu")
    f, _, info = central_field(arch, layers, c, prob, eta, v0, k=2, tau=5.0, tol=1e-13)
    gR = flatten(arch.gradient(layers, c, prob)[0])[0]
    sigma2 = float(info["traj_central_trace_x"][0])
    assert sigma2 > 0 and info["traj_central_active"][0] == 1, "this point sharpens under gradient flow: held"
    gS = 2 * (-f[0] - gR) / sigma2  # the correction is ½σ²∇S

    def dS(u, eps=1e-6):  # central difference of the Lanczos sharpness along the unit vector u
        return (S(y + eps * u) - S(y - eps * u)) / (2 * eps)

    e = torch.randn(y.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for u in (e / e.norm(), gR / gR.norm()):
        assert float(gS @ u) == pytest.approx(dS(u), rel=1e-4, abs=1e-6 * float(gS.norm()))
    np.testing.assert_allclose(sigma2, -2 * float(gS @ gR) / float(gS @ gS), rtol=1e-8)
    h = 1e-4
    assert abs(S(y + h * f[0]) - s0) < 1e-2 * abs(S(y - h * gR) - s0)


def test_below_the_edge_the_central_flow_is_gradient_flow(data):
    """With η small enough that ηS stays below 2(1 − CANDIDATE), the central flow run for T steps is the
    gradient flow run to time ηT: weights equal to 1e-8 relative, the same field evaluations (the same steps),
    no direction ever held and the predicted loss R itself."""
    kw = dict(arch="small", depth=3, width=5, scale=[0.5, 0.8], seed=[0, 1], dtype="float64", lr=0.01, steps=200,
              record_every=50, flow_rtol=1e-6, flow_atol=1e-8)
    central = dlnpipe.train(data, optimizer="central", **kw)
    flow = dlnpipe.train(data, optimizer="flow", **kw)
    assert np.nanmax(kw["lr"] * central.extras["traj_central_sharpness"]) < 2 * (1 - CANDIDATE)
    for a, b in zip(central.layers, flow.layers):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8 * np.abs(b).max())
    np.testing.assert_array_equal(central.extras["evaluations"], flow.extras["evaluations"])
    assert np.nanmax(central.extras["traj_central_active"]) == 0
    np.testing.assert_allclose(central.extras["traj_central_loss"], central.traj_loss_train, rtol=1e-12)
    np.testing.assert_array_equal(central.status, flow.status)


def test_at_the_edge_the_flow_is_held_at_two_over_eta_and_its_solver_converges(data):
    """η with φ_0 > 2/η: the central flow's sharpness rises to 2/η and stays there (never above it by more than
    the solver's tolerance), one direction is held, the predicted loss is R + ½σ²S ≥ R; halving the tolerance
    by 100 moves the end point by far less than the distance travelled (an ODE solution, not a
    discretisation)."""
    net = [dlnpipe.init_network("small", depth=3, width=5, d=4, scale=0.4, seed=2)]
    phi0 = dlnpipe.gfs_sharpness(data, net)[0]
    eta = 2 / (0.9 * phi0)
    kw = dict(arch="small", depth=3, width=5, scale=0.4, seed=2, dtype="float64", lr=eta, steps=80, record_every=8,
              optimizer="central")
    coarse = dlnpipe.train(data, flow_rtol=1e-6, flow_atol=1e-8, **kw)
    fine = dlnpipe.train(data, flow_rtol=1e-8, flow_atol=1e-10, **kw)
    S = fine.extras["traj_central_sharpness"][0]
    assert S[0] * eta < 2 and eta * np.nanmax(S) <= 2 * (1 + 1e-6)
    assert eta * S[-1] == pytest.approx(2, rel=1e-3), "the flow ends on the edge"
    assert fine.extras["traj_central_active"][0, -1] == 1
    assert (fine.extras["traj_central_loss"][0] >= fine.traj_loss_train[0] - 1e-12).all()
    travelled = max(np.abs(a - b).max() for a, b in zip(fine.layers, net[0].layers))
    moved = max(np.abs(a - b).max() for a, b in zip(fine.layers, coarse.layers))
    assert moved < 1e-4 * travelled, (moved, travelled)


@pytest.mark.parametrize("dense", [True, False])
def test_every_eigenvalue_at_the_edge_is_tracked(data, monkeypatch, dense):
    """Asked for one direction at a point where η puts the top two eigenvalues on the candidate line, the tracked
    set grows to hold both and one more below the line (dense Hessian and Lanczos alike), the eigenvalues those of
    the dense Hessian (1e-9)."""
    net = dlnpipe.init_network("small", depth=3, width=10, d=4, scale=0.6, seed=3)  # 150 parameters
    arch, layers, c, prob = batch(data, [net])
    exact = dlnpipe.sharpness(data, net, method="dense", k=3).eigenvalues[0]
    assert exact[1] < exact[0] * (1 - 1e-3)
    eta = torch.tensor([2 * (1 - CANDIDATE / 2) / exact[1]], dtype=torch.float64)
    if not dense:
        monkeypatch.setattr(central, "DENSE_BELOW", 0)
    y = flatten(layers).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(arch.loss(unflatten(y, layers), c, prob).sum(), y, create_graph=True)
    v0 = start_vectors([0], y.shape[1], device="cpu")
    lam, U, cand = tracked_directions(arch, layers, c, prob, y, g, v0, eta, k=1, tol=1e-12)
    assert cand[0, :2].all() and not cand[0, -1], cand
    assert lam.shape[1] >= 3 and U.shape[:2] == lam.shape
    np.testing.assert_allclose(lam[0, :3].numpy(), exact[:3], rtol=1e-9)


def test_the_central_flow_runs_in_float64_only(data):
    with pytest.raises(ValueError, match="float64"):
        dlnpipe.train(data, arch="small", depth=2, width=3, lr=0.1, scale=0.5, seed=0, steps=5, optimizer="central",
                      dtype="float32")


def test_two_candidates_are_held_by_a_semidefinite_correction(data):
    """At init (s = 0.4, seed 4) with η putting the top two eigenvalues on the candidate line: along the central
    field, D = −d(UᵀHU)/dτ + diag(r) (U the two eigenvectors, held fixed; central differences of dense Hessians)
    is PSD with a zero eigenvalue for the one direction held (1e-6 of its scale) — a direction that mixes both
    eigenvectors (D's off-diagonal entries are not small), which a correction diagonal in the eigenbasis cannot
    hold."""
    from dlnpipe.hessian import dense_hessians

    net = dlnpipe.init_network("small", depth=3, width=5, d=4, scale=0.4, seed=4)
    arch, layers, c, prob = batch(data, [net])
    w, V = torch.linalg.eigh(dense_hessians(arch, layers, c, prob)[0])
    U, lam = V[:, [-1, -2]], w[[-1, -2]]
    tau = 1e8
    eta = torch.tensor([2 * (1 - CANDIDATE / 4) / float(lam[1])], dtype=torch.float64)
    f, _, info = central_field(arch, layers, c, prob, eta, start_vectors([0], U.shape[0], device="cpu"), k=2,
                               tau=tau)
    assert info["traj_central_active"][0] == 1 and info["traj_central_trace_x"][0] > 0

    def block(h):
        return U.T @ dense_hessians(arch, unflatten(flatten(layers) + h * f, layers), c, prob)[0] @ U

    h = 1e-6
    D = -(block(h) - block(-h)) / (2 * h) + torch.diag((2 - eta * lam) / (eta**2 * tau))
    ev = torch.linalg.eigvalsh(D)
    assert abs(float(ev[0])) <= 1e-6 * float(ev[1]) and float(D[0, 1]) ** 2 > 1e-2 * float(D[0, 0] * D[1, 1])


def test_a_flow_whose_step_collapses_is_stopped_there_failed(data, monkeypatch, caplog):
    """A field that chatters (−sign(y − 0.05): every coordinate driven onto a line it cannot cross smoothly, as the
    central field can slide along the candidate line from far above the edge) holds the error-controlled step at
    rounding size: the network is stopped after STALL_STEPS such accepted steps, failed, with a warning naming the
    GD step where it stuck; without the guard it would spend every one of its flow_max_steps there."""
    from dlnpipe.steppers.flow import STALL_STEPS, GradientFlow

    def chattering(arch, layers, c, prob, eta, v0, *, k, tau):
        _, excess = arch.gradient(layers, c, prob)
        zero = torch.zeros_like(excess)
        return -torch.sign(flatten(layers) - 0.05), excess, {name: zero for name in central.RECORDED}

    monkeypatch.setattr(central, "central_field", chattering)
    kw = dict(arch="small", depth=3, width=5, scale=[0.5, 0.8], seed=[0, 1], dtype="float64", lr=0.05, steps=400,
              record_every=100, optimizer="central", flow_max_steps=3000, log_every_s=None)
    with caplog.at_level("WARNING", logger="dlnpipe.training"):
        res = dlnpipe.train(data, **kw)
    assert (res.status == dlnpipe.Status.FAILED).all()
    messages = [r.getMessage() for r in caplog.records]
    assert any("stayed below" in m and f"{STALL_STEPS} accepted steps" in m for m in messages)
    monkeypatch.setattr(central.CentralFlow, "stall", None)
    unguarded = dlnpipe.train(data, **kw)
    assert (unguarded.status == dlnpipe.Status.FAILED).all()
    # every accepted step costs 6 evaluations: the guard stopped each network within a few hundred steps of the
    # collapse, the unguarded flow ran all 3000 (and never reached its horizon of 400 GD steps)
    assert (unguarded.extras["evaluations"] >= 6 * 3000).all()
    assert (res.extras["evaluations"] < 6 * (STALL_STEPS + 400)).all()
    assert GradientFlow.stall is None  # gradient flow keeps no such guard: its field is smooth
