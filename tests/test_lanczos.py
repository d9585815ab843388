"""Batched Lanczos against numpy's eigvalsh on random symmetric indefinite matrices."""

import numpy as np
import pytest
import torch

from dlnpipe.lanczos import DiagonalOperator, MatrixOperator, Negated, lanczos, power_iteration


def random_symmetric(rng, B, P):
    A = rng.standard_normal((B, P, P))
    return (A + A.transpose(0, 2, 1)) / 2  # GOE: half its eigenvalues negative


@pytest.mark.parametrize("P", [7, 40, 120])
def test_topk_matches_eigvalsh(rng, P):
    A = random_symmetric(rng, 4, P)
    At = torch.tensor(A)
    res = lanczos(MatrixOperator(At), torch.tensor(rng.standard_normal((4, P))), k=5, tol=1e-13)
    ref = np.linalg.eigvalsh(A)[:, ::-1][:, :5]
    assert (np.linalg.eigvalsh(A)[:, 0] < 0).all()  # indefinite: most negative has larger magnitude often
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-10)
    assert (res.residuals < 1e-9 * np.abs(ref[:, :1])).all()
    assert res.converged.all()


def test_batched_rows_are_independent(rng):
    """Each row gets its own Krylov space: a batch with one very large matrix does not mask the others."""
    A = random_symmetric(rng, 3, 30)
    A[1] *= 1000.0
    At = torch.tensor(A)
    op = MatrixOperator(At)
    v0 = torch.tensor(rng.standard_normal((3, 30)))
    batched = lanczos(op, v0, k=2, tol=1e-13).eigenvalues
    for b in range(3):
        single = lanczos(MatrixOperator(At[b:b + 1]), v0[b:b + 1], k=2, tol=1e-13).eigenvalues
        np.testing.assert_allclose(batched[b], single[0], rtol=1e-10)
        np.testing.assert_allclose(batched[b], np.linalg.eigvalsh(A[b])[::-1][:2], rtol=1e-10)


def test_largest_algebraic_not_largest_magnitude(rng):
    """A spectrum dominated by a large negative eigenvalue: Lanczos returns the top one, power does not."""
    Q = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    evals = np.concatenate([[-50.0], np.linspace(-1, 3, 19)])
    op = MatrixOperator(torch.tensor((Q * evals) @ Q.T)[None])
    v0 = torch.tensor(rng.standard_normal((1, 20)))
    assert abs(lanczos(op, v0, k=1, tol=1e-13).eigenvalues[0, 0] - 3.0) < 1e-10
    assert abs(power_iteration(op, v0, iterations=200).eigenvalues[0, 0] + 50.0) < 1e-6


def test_converged_mask_says_which_rows_ran_out_of_iterations(rng):
    """A row given too few iterations for its tolerance is flagged, and only that row: its Ritz value is
    still below the top eigenvalue (a lower bound), its certificate says by how much."""
    P = 200
    evals = np.stack([np.linspace(0, 1, P) ** 8, np.r_[np.zeros(P - 1), 5.0]])  # clustered top; one isolated
    Q = np.linalg.qr(rng.standard_normal((P, P)))[0]
    A = torch.tensor(np.einsum("ij,bj,kj->bik", Q, evals, Q))
    v0 = torch.tensor(rng.standard_normal((2, P)))
    short = lanczos(MatrixOperator(A), v0, k=1, tol=1e-12, max_iter=8)
    assert short.converged.tolist() == [False, True]
    assert short.eigenvalues[0, 0] < 1.0 - 1e-6 and short.residuals[0, 0] > 1e-6
    full = lanczos(MatrixOperator(A), v0, k=1, tol=1e-12)
    assert full.converged.all()
    np.testing.assert_allclose(full.eigenvalues[:, 0], [1.0, 5.0], rtol=1e-10)
    assert not power_iteration(MatrixOperator(A), v0).converged.any()  # no stopping test: never claims it


def test_operator_size_must_match_the_start_vectors(rng):
    with pytest.raises(ValueError, match="operator's size is 5"):
        lanczos(MatrixOperator(torch.eye(5, dtype=torch.float64)[None]), torch.ones(1, 6, dtype=torch.float64))


def test_restarts_do_not_depend_on_the_global_generator():
    """A Krylov space that becomes invariant restarts from a random vector: drawn from the start vectors' own
    seed, so the result is the same bit for bit whatever the process drew before (here a diagonal operator with
    four distinct eigenvalues among eight: every run restarts)."""
    d = torch.tensor([[3.0, 3.0, 1.0, 1.0, -2.0, -2.0, -2.0, 0.5]], dtype=torch.float64).repeat(2, 1)
    v0 = torch.tensor(np.random.default_rng(0).standard_normal((2, 8)))
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(lanczos(Negated(DiagonalOperator(d)), v0, k=2, max_iter=8, return_vectors=True))
    np.testing.assert_array_equal(outs[0].eigenvalues, outs[1].eigenvalues)
    torch.testing.assert_close(outs[0].eigenvectors, outs[1].eigenvectors, rtol=0, atol=0)
    np.testing.assert_allclose(-outs[0].eigenvalues[:, 0], [-2.0, -2.0], rtol=1e-12)  # λ_min of d
