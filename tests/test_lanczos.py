"""Batched Lanczos against numpy's eigvalsh on random symmetric indefinite matrices."""

import numpy as np
import pytest
import torch

from dlnpipe.lanczos import lanczos, power_iteration


def random_symmetric(rng, B, P):
    A = rng.standard_normal((B, P, P))
    return (A + A.transpose(0, 2, 1)) / 2  # GOE: half its eigenvalues negative


@pytest.mark.parametrize("P", [7, 40, 120])
def test_topk_matches_eigvalsh(rng, P):
    A = random_symmetric(rng, 4, P)
    At = torch.tensor(A)
    res = lanczos(lambda v: torch.bmm(At, v[:, :, None])[:, :, 0], torch.tensor(rng.standard_normal((4, P))),
                  k=5, tol=1e-13)
    ref = np.linalg.eigvalsh(A)[:, ::-1][:, :5]
    assert (np.linalg.eigvalsh(A)[:, 0] < 0).all()  # indefinite: most negative has larger magnitude often
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-10)
    assert (res.residuals < 1e-9 * np.abs(ref[:, :1])).all()


def test_batched_rows_are_independent(rng):
    """Each row gets its own Krylov space: a batch with one very large matrix does not mask the others."""
    A = random_symmetric(rng, 3, 30)
    A[1] *= 1000.0
    At = torch.tensor(A)
    op = lambda v: torch.bmm(At, v[:, :, None])[:, :, 0]  # noqa: E731
    v0 = torch.tensor(rng.standard_normal((3, 30)))
    batched = lanczos(op, v0, k=2, tol=1e-13).eigenvalues
    for b in range(3):
        single = lanczos(lambda v, b=b: (At[b] @ v[0])[None], v0[b:b + 1], k=2, tol=1e-13).eigenvalues
        np.testing.assert_allclose(batched[b], single[0], rtol=1e-10)
        np.testing.assert_allclose(batched[b], np.linalg.eigvalsh(A[b])[::-1][:2], rtol=1e-10)


def test_largest_algebraic_not_largest_magnitude(rng):
    """A spectrum dominated by a large negative eigenvalue: Lanczos returns the top one, power does not."""
    Q = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    evals = np.concatenate([[-50.0], np.linspace(-1, 3, 19)])
    A = torch.tensor((Q * evals) @ Q.T)[None]
    op = lambda v: torch.bmm(A, v[:, :, None])[:, :, 0]  # noqa: E731
    v0 = torch.tensor(rng.standard_normal((1, 20)))
    assert abs(lanczos(op, v0, k=1, tol=1e-13).eigenvalues[0, 0] - 3.0) < 1e-10
    assert abs(power_iteration(op, v0, iterations=200).eigenvalues[0, 0] + 50.0) < 1e-6
