"""The optimizers beyond GD (dlnpipe.steppers: heavy_ball, adam, sgd, label noise) against independent
implementations in float64: torch.optim on a loss written here from the data, GD itself where an
optimizer reduces to it, each network trained alone, and the bad settings a user can write."""

import numpy as np
import pytest
import torch
from tolerances import assert_floor_close, assert_weights_close, loss_scale

import dlnpipe
from dlnpipe import archs
from dlnpipe.steppers import sampling
from dlnpipe.steppers.first_order import tail_length

SHAPES = {"small": dict(depth=4, width=5), "residual": dict(depth=4, width=5), "gelu": dict(depth=4, width=5)}
ACTIVATION = {"gelu": torch.nn.functional.gelu}


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 5, noise=0.5, seed=3)


def data_loss(arch, Ws, p, X, y):
    """(1/n)‖y − f(X)‖², f written out here (not dlnpipe's losses)."""
    h = X if p is None else torch.nn.functional.pad(X, (0, p.numel() - X.shape[1]))
    for W in Ws[:-1]:
        h = ACTIVATION.get(arch, lambda z: z)(h @ W.T)
    f = h @ Ws[-1].T
    f = f[:, 0] if p is None else f @ p
    return ((y - f) ** 2).mean()


def torch_reference(data, arch, net, make_optimizer, steps):
    """One network trained by a torch.optim optimizer on :func:`data_loss`."""
    X, y = torch.tensor(data.X), torch.tensor(data.y)
    Ws = [torch.tensor(W, requires_grad=True) for W in net.layers]
    p = None if net.p is None else torch.tensor(net.p)
    opt = make_optimizer(Ws)
    for _ in range(steps):
        opt.zero_grad()
        data_loss(arch, Ws, p, X, y).backward()
        opt.step()
    return [W.detach().numpy() for W in Ws]


def trained(data, arch, *, lr, scale, seed, steps=200, **options):
    return dlnpipe.train(data, arch=arch, **SHAPES[arch], lr=lr, scale=scale, seed=seed, steps=steps,
                         dtype="float64", record_every=50, log_every_s=None, **options)


def nets_of(arch, data, scale, seed):
    return [dlnpipe.init_network(arch, d=data.d, scale=s, seed=i, **SHAPES[arch]) for s, i in zip(scale, seed)]


SCALES = {"small": [0.6, 0.7], "residual": [0.5, 1.0], "gelu": [0.6, 0.7]}


@pytest.mark.parametrize("arch", list(SHAPES))
def test_heavy_ball_equals_torch_sgd_momentum(data, arch):
    lr, beta, scale, seed = [0.01, 0.004], [0.5, 0.9], SCALES[arch], [1, 2]
    res = trained(data, arch, lr=lr, scale=scale, seed=seed, optimizer="heavy_ball", momentum=beta)
    assert (res.status != dlnpipe.DIVERGED).all()
    for i, net in enumerate(nets_of(arch, data, scale, seed)):
        ref = torch_reference(data, arch, net, lambda Ws, i=i: torch.optim.SGD(Ws, lr=lr[i], momentum=beta[i]), 200)
        assert np.abs(ref[0] - net.layers[0]).max() > 1e-3  # it moved
        for W, R in zip(res.layers, ref):
            assert_weights_close(W[i], R)


@pytest.mark.parametrize("arch", list(SHAPES))
def test_adam_equals_torch_adam(data, arch):
    lr, betas, scale, seed = [0.002, 0.001], [(0.9, 0.999), (0.8, 0.99)], SCALES[arch], [1, 2]
    res = trained(data, arch, lr=lr, scale=scale, seed=seed, optimizer="adam", betas=betas, eps=[1e-8, 1e-6])
    for i, net in enumerate(nets_of(arch, data, scale, seed)):
        ref = torch_reference(data, arch, net, lambda Ws, i=i: torch.optim.Adam(Ws, lr=lr[i], betas=betas[i],
                                                                            eps=[1e-8, 1e-6][i]), 200)
        assert np.abs(ref[0] - net.layers[0]).max() > 1e-3
        for W, R in zip(res.layers, ref):
            assert_weights_close(W[i], R)
    assert res.extras["precond"].shape == (2, sum(W[0].size for W in res.layers))
    assert (res.extras["precond"] > 0).all()


@pytest.mark.parametrize("arch", ["small", "residual", "gelu"])
@pytest.mark.parametrize("optimizer,options", [("heavy_ball", {"momentum": 0.0}), ("sgd", {"batch_size": 30}),
                                               ("gd", {"label_noise": 0.0}), ("sgd", {})])
def test_reductions_to_gd(data, arch, optimizer, options):
    """Heavy ball with β = 0, SGD with b = n, label noise with σ = 0: gradient descent, to 1e-12."""
    kw = dict(lr=[0.01, 0.005], scale=SCALES[arch], seed=[1, 2])
    gd = trained(data, arch, **kw)
    other = trained(data, arch, optimizer=optimizer, **kw, **options)
    for W, R in zip(other.layers, gd.layers):
        assert_weights_close(W, R, rel=1e-12)
    assert_floor_close(other.traj_loss_train, gd.traj_loss_train, scale=loss_scale(data), rel=1e-12)
    np.testing.assert_array_equal(other.status, gd.status)


def test_mixed_settings_batch_equals_each_alone(data):
    """Per-network batch sizes, noise levels, momenta and betas in one batch: each network as if alone."""
    for optimizer, options in [("sgd", {"batch_size": [5, 30, 10, 7], "label_noise": [0.0, 0.3, 0.5, 0.0]}),
                               ("heavy_ball", {"momentum": [0.0, 0.5, 0.9, 0.7]}),
                               ("adam", {"betas": [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99), (0.9, 0.9)]})]:
        kw = dict(lr=[0.01, 0.004, 0.006, 0.003], scale=[0.6, 0.7, 0.5, 0.65], seed=[1, 2, 3, 4])
        batch = trained(data, "small", optimizer=optimizer, **kw, **options)
        for i in range(4):
            alone = trained(data, "small", optimizer=optimizer, **{k: v[i] for k, v in {**kw, **options}.items()})
            for W, R in zip(batch.layers, alone.layers):
                assert_weights_close(W[i], R[0])
            for name, value in alone.extras.items():
                assert_weights_close(batch.extras[name][i], value[0])


def test_sgd_mini_batches_are_epochs_of_the_networks_own_permutations(data):
    """One SGD step = a GD step on the samples of the network's permutation for that step."""
    res = trained(data, "small", lr=0.01, scale=0.6, seed=7, steps=1, optimizer="sgd", batch_size=8)
    rank = sampling.permutation_ranks(torch.tensor([7]), torch.tensor([0]), data.n)[0].numpy()
    assert sorted(rank) == list(range(data.n))
    chosen = rank < 8
    sub = dlnpipe.dataset_from_arrays(data.X[chosen], data.y[chosen], rescale=False)
    ref = dlnpipe.train(sub, arch="small", **SHAPES["small"], lr=0.01, scale=0.6, seed=7, steps=1, dtype="float64",
                        log_every_s=None)
    for W, R in zip(res.layers, ref.layers):
        assert_weights_close(W, R)
    # later epochs draw other permutations, and different seeds differ
    assert not np.array_equal(rank, sampling.permutation_ranks(torch.tensor([7]), torch.tensor([1]), data.n)[0])
    assert not np.array_equal(rank, sampling.permutation_ranks(torch.tensor([8]), torch.tensor([0]), data.n)[0])


def test_hash_is_splitmix64():
    """The int64 tensor arithmetic equals the uint64 algorithm (numpy wraps uint64 like C)."""
    x = np.array([0, 1, 2 ** 62, 12345678901234, 2 ** 63 - 1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    ours = sampling.mix(torch.tensor(x.view(np.int64))).numpy().view(np.uint64)
    np.testing.assert_array_equal(ours, z)
    draws = sampling.normal(torch.arange(200), torch.zeros(200, dtype=torch.int64), 500, torch.float64)
    assert abs(float(draws.mean())) < 0.01 and abs(float(draws.std()) - 1) < 0.01


def test_label_noise_and_tail_average(data):
    """Label noise keeps GD moving around the minimizer; the average of the last iterates sits closer."""
    res = trained(data, "small", lr=0.05, scale=0.6, seed=[1, 2], steps=3000, optimizer="gd", label_noise=1.0)
    clean = trained(data, "small", lr=0.05, scale=0.6, seed=[1, 2], steps=3000)
    assert (clean.status == dlnpipe.CONVERGED).all()
    excess = res.loss_train - data.loss_opt
    excess_avg = res.extras["loss_train_avg"] - data.loss_opt
    assert (excess > 1e-5 * data.yty).all()  # still moving: not at the minimizer
    assert (excess_avg < excess).all()
    assert tail_length(3000) == 300 and tail_length(5) == 1
    avg = res.extras["avg_W0"]
    assert avg.shape == res.layers[0].shape and np.isfinite(avg).all()


def test_sgd_converges_when_it_interpolates():
    """n < d: every mini-batch loss is zero at the interpolating minimizers, and SGD gets there."""
    ds = dlnpipe.make_dataset(8, 12, noise=1.0, seed=2)
    res = dlnpipe.train(ds, arch="small", depth=3, width=12, lr=0.02, scale=0.3, seed=[1, 2], steps=20000,
                        dtype="float64", optimizer="sgd", batch_size=2, log_every_s=None)
    assert (res.status == dlnpipe.CONVERGED).all(), res.loss_train


def test_preconditioned_sharpness_against_dense(data):
    """λ_max(P⁻¹H) by Lanczos on P^{-1/2} H P^{-1/2} equals the dense eigenvalue of P^{-1/2} H P^{-1/2}."""
    from dlnpipe.hessian import dense_hessians

    res = trained(data, "small", lr=0.002, scale=0.6, seed=[1, 2], optimizer="adam")
    P = res.extras["precond"]
    s = dlnpipe.sharpness(data, res, k=1, precond=P)
    layers = [torch.tensor(W) for W in res.layers]
    c = torch.ones(2, 1, 1, dtype=torch.float64)
    prob = archs.get("small").problem([data], in_dim=data.d, dtype="float64", device="cpu")
    H = dense_hessians(archs.get("small"), layers, c, prob)
    D = torch.tensor(P).rsqrt()
    top = torch.linalg.eigvalsh(D[:, :, None] * H * D[:, None, :])[:, -1].numpy()
    np.testing.assert_allclose(s.values, top, rtol=1e-8)
    plain = dlnpipe.sharpness(data, res, k=1).values
    assert not np.allclose(plain, s.values, rtol=1e-2)


@pytest.mark.parametrize("options,message", [
    ({"optimizer": "heavy_ball", "momentum": 1.0}, "momentum must be in [0, 1), got 1"),
    ({"optimizer": "heavy_ball", "momentum": -0.1}, "momentum must be in [0, 1), got -0.1"),
    ({"optimizer": "adam", "betas": (0.9, 1.0)}, "betas must be in [0, 1), got 1"),
    ({"optimizer": "adam", "eps": 0.0}, "eps must be > 0, got 0"),
    ({"optimizer": "sgd", "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"optimizer": "sgd", "batch_size": 31}, "batch_size must be <= n (30), got 31"),
    ({"optimizer": "sgd", "label_noise": -1.0}, "label_noise must be >= 0, got -1"),
    ({"optimizer": "adam", "momentum": 0.9}, "optimizer 'adam' takes no option 'momentum'"),
    ({"optimizer": "heavy_ball", "batch_size": 3}, "optimizer 'heavy_ball' takes no option 'batch_size'"),
    ({"optimizer": "heavy_ball", "momentum": [0.1, 0.2, 0.3]}, "momentum must be a scalar or have one entry"),
])
def test_bad_settings(data, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        trained(data, "small", lr=0.01, scale=0.5, seed=[1, 2], steps=5, **options)
