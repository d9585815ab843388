"""Batched gradient descent: equals one-at-a-time training, isolates divergence, reproduces fig1's regime."""

import numpy as np
import pytest
import torch
from tolerances import assert_floor_close, assert_weights_close, distance_scale, loss_scale

import dlnpipe
from dlnpipe.training import excess

LR = [0.01, 0.03, 0.05, 0.02]
SCALE = [0.3, 0.5, 0.4, 0.35]
STEPS = [300, 200, 300, 150]


@pytest.mark.parametrize("arch,width", [("small", 5), ("small", 7), ("residual", 6), ("gelu", 4), ("relu", 4)])
def test_batch_equals_one_at_a_time(paper_data, arch, width):
    kw = dict(arch=arch, depth=4, width=width, record_every=10)
    batch = dlnpipe.train(paper_data, lr=LR, scale=SCALE, seed=[0, 1, 2, 3], steps=STEPS, **kw)
    for i in range(4):
        one = dlnpipe.train(paper_data, lr=LR[i], scale=SCALE[i], seed=i, steps=STEPS[i],
                            record_steps=batch.record_steps, **kw)
        for Wb, Wo in zip(batch.layers, one.layers):
            assert_weights_close(Wb[i], Wo[0])
        for key in ("traj_loss_train", "traj_loss_test"):
            assert_floor_close(getattr(batch, key)[i], getattr(one, key)[0], scale=loss_scale(paper_data))
        assert_floor_close(batch.traj_distance[i], one.traj_distance[0], scale=distance_scale(paper_data))
        assert batch.status[i] == one.status[0]
    assert (batch.status != dlnpipe.DIVERGED).all()
    # trajectories stop at each network's own step count
    t = batch.record_steps
    assert np.isnan(batch.traj_loss_train[3, t > 150]).all() and np.isfinite(batch.traj_loss_train[3, t <= 150]).all()


def test_divergence_is_isolated(paper_data):
    kw = dict(arch="small", depth=6, width=5, record_every=5, steps=400)
    calm = dlnpipe.train(paper_data, lr=[0.01, 0.02], scale=[0.4, 0.5], seed=[1, 2], **kw)
    mixed = dlnpipe.train(paper_data, lr=[0.01, 5.0, 0.02], scale=[0.4, 1.5, 0.5], seed=[1, 99, 2], **kw)
    assert mixed.status[1] == dlnpipe.DIVERGED and mixed.diverged_step[1] > 0
    assert (mixed.status[[0, 2]] != dlnpipe.DIVERGED).all() and (mixed.diverged_step[[0, 2]] == -1).all()
    # The batches have different sizes (3 then 2, against 2), so kernels may sum in another order:
    # not bit for bit, but a leak of the diverging network (a NaN, an inf, a wrong mask) would be O(1).
    assert_floor_close(mixed.traj_loss_train[[0, 2]], calm.traj_loss_train, scale=loss_scale(paper_data))
    assert_floor_close(mixed.traj_distance[[0, 2]], calm.traj_distance, scale=distance_scale(paper_data))
    for Wm, Wc in zip(mixed.layers, calm.layers):
        assert_weights_close(Wm[[0, 2]], Wc)
    # frozen at the point of divergence: trajectory NaN from there on, weights finite and kept
    after = mixed.record_steps >= mixed.diverged_step[1]
    assert np.isnan(mixed.traj_loss_train[1, after]).all()
    assert np.isfinite(mixed.traj_loss_train[1, ~after]).all()


def test_fig1_small_lr_converges_within_bounds(paper_data):
    """fig1 (docs/theory.md#the-papers-experiments): L=10, m=5, s=0.25. η=0.005 converges with S_min ≤ S ≤ 8LΛ;
    η=0.2 > η_c never converges."""
    b = dlnpipe.bounds(paper_data, 10)
    assert b.eta_c < 0.2
    res = dlnpipe.train(paper_data, arch="small", depth=10, width=5, lr=[0.005] * 4 + [0.2] * 4, scale=0.25,
                        seed=np.arange(8), steps=[40_000] * 4 + [2_000] * 4, dtype="float32")
    small, large = slice(0, 4), slice(4, 8)
    assert (res.status[small] == dlnpipe.CONVERGED).all()
    assert (res.status[large] != dlnpipe.CONVERGED).all()
    assert (excess(res, paper_data)[small] < 1e-4 * loss_scale(paper_data)).all()  # on the data, not the moments
    s = dlnpipe.sharpness(paper_data, res, method="lanczos")
    assert (b.s_min <= s.values[small]).all() and (s.values[small] <= b.s_upper).all()
    assert (s.values[small] <= 2 / 0.005).all()
    # close to the flattest minimizer, as the paper reports for small init (ratio 1.1–1.5)
    assert (s.values[small] / b.s_min < 1.5).all()


def test_record_sharpness_and_float32(paper_data):
    res = dlnpipe.train(paper_data, arch="small", depth=3, width=5, lr=0.05, scale=0.5, seed=[0, 1],
                        steps=200, record_every=50, record_sharpness=True, dtype="float32")
    assert res.traj_sharpness.shape == (2, 5) and np.isfinite(res.traj_sharpness).all()
    last = dlnpipe.sharpness(paper_data, res, method="lanczos")
    np.testing.assert_allclose(res.traj_sharpness[:, -1], last.values, rtol=1e-8)
    assert res.dtype == "float32"


def test_status_failed_when_not_converged(paper_data):
    res = dlnpipe.train(paper_data, arch="small", depth=10, width=5, lr=0.001, scale=0.1, seed=0, steps=50)
    assert res.status[0] == dlnpipe.FAILED  # stalled near the saddle at 0: finite, not converged
    assert np.isfinite(res.loss_train[0])


@pytest.mark.parametrize("arch", ["small", "residual", "gelu", "relu"])
def test_memory_batches_equal_one_batch(paper_data, arch):
    """A cell larger than the device's memory is trained in slices: same result as one batch."""
    kw = dict(arch=arch, depth=3, width=6, lr=[0.01, 0.02, 0.05, 0.01, 0.02], scale=[0.3, 0.4, 0.5, 0.6, 0.2],
              seed=[5, 6, 7, 8, 9], steps=[300, 200, 300, 100, 250], record_every=25)
    whole = dlnpipe.train(paper_data, **kw)
    sliced = dlnpipe.train(paper_data, max_batch=2, **kw)
    assert len(sliced) == 5
    for key in ("lr", "scale", "seed", "steps", "status", "diverged_step", "record_steps"):
        np.testing.assert_array_equal(getattr(sliced, key), getattr(whole, key))
    # slices are batches of another size: the same claim, and tolerances, as batch = one at a time
    for Ws, Ww in zip(sliced.layers, whole.layers):
        assert_weights_close(Ws, Ww)
    for key in ("loss_train", "traj_loss_train"):
        assert_floor_close(getattr(sliced, key), getattr(whole, key), scale=loss_scale(paper_data))
    assert_floor_close(sliced.traj_distance, whole.traj_distance, scale=distance_scale(paper_data))
    if arch == "residual":
        np.testing.assert_array_equal(sliced.p, whole.p)


def test_batch_size_follows_memory_budget(paper_data, monkeypatch, caplog):
    """Without max_batch the batch is as large as the device's memory budget allows."""
    from dlnpipe import archs, training

    one = archs.get("small").bytes_per_network(depth=3, width=6, d=paper_data.d, n=paper_data.n,
                                               itemsize=torch.float64.itemsize)
    monkeypatch.setattr(training, "memory_budget", lambda device: 2.5 * one)
    kw = dict(arch="small", depth=3, width=6, lr=0.02, scale=0.4, seed=[1, 2, 3, 4, 5], steps=100)
    with caplog.at_level("INFO", logger="dlnpipe.training"):
        res = dlnpipe.train(paper_data, **kw)
    assert "5 networks in batches of 2" in caplog.text and len(res) == 5
    for Wa, Wb in zip(res.layers, dlnpipe.train(paper_data, max_batch=5, **kw).layers):
        assert_weights_close(Wa, Wb)


@pytest.mark.parametrize("optimizer", ["gd", "flow"])
@pytest.mark.parametrize("arch", ["small", "residual"])
def test_networks_on_different_datasets_train_in_one_batch(arch, optimizer):
    """One batch over several datasets (per-network Σ, w*, R*) gives each network's own-dataset result."""
    sets = [dlnpipe.make_dataset(20, 4, noise=0.3, seed=1, kappa=k, spectrum=sp, wstar=ws)
            for k, sp, ws in ((1.0, "geometric", "random"), (10.0, "linear", "top"), (100.0, "geometric", "bottom"))]
    which = [0, 1, 2, 1, 0, 2]
    kw = dict(arch=arch, depth=3, width=5, lr=[0.02, 0.03, 0.01, 0.02, 0.03, 0.01], scale=0.4,
              seed=[1, 2, 3, 4, 5, 6], steps=[400, 300, 400, 200, 100, 400], record_every=50, optimizer=optimizer)
    batch = dlnpipe.train([sets[i] for i in which], **kw)
    for j, i in enumerate(which):
        one = dlnpipe.train(sets[i], **{**kw, "lr": kw["lr"][j], "seed": kw["seed"][j], "steps": kw["steps"][j]},
                            record_steps=batch.record_steps)
        for Wb, Wo in zip(batch.layers, one.layers):
            assert_weights_close(Wb[j], Wo[0])
        # converged networks sit at R − R* ~ 1e-14 and ‖w − w*‖² ~ 1e-21: absolute tolerances
        for key in ("loss_train", "loss_test"):
            assert_floor_close(getattr(batch, key)[j], getattr(one, key)[0], scale=loss_scale(*sets))
        assert_floor_close(batch.distance[j], one.distance[0], scale=distance_scale(*sets))
        assert_floor_close(batch.traj_loss_test[j], one.traj_loss_test[0], scale=loss_scale(*sets))
        assert batch.status[j] == one.status[0]
    with pytest.raises(ValueError, match="one entry per network"):
        dlnpipe.train(sets[:2], **{**kw, "lr": 0.01, "seed": [1, 2, 3], "steps": 10})
    with pytest.raises(ValueError, match="linear nets only"):
        dlnpipe.train(sets[:2], **{**kw, "arch": "gelu", "lr": 0.01, "seed": [1, 2], "steps": 10})
