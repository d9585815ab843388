"""The compiled GD steps (dlnpipe/kernels: activated.c for GELU and ReLU nets, linear.c for deep linear
nets) against independent references: an autograd GD loop on the data in float64, torch's float32
GELU, each network alone, and the torch path they fall back to."""

import ctypes
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from tolerances import assert_floor_close, assert_weights_close

import dlnpipe
from dlnpipe import archs, kernels
from dlnpipe.kernels import activated, linear

ACTIVATION = {"gelu": torch.nn.functional.gelu, "relu": torch.relu}
LINEAR = (lambda z: z)  # noqa: E731


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(50, 5, noise=0.0, seed=66)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the steps taken by the compiled kernels (so a test knows the fused path really ran)."""
    calls = []
    for module in (activated, linear):
        real = module.gd_steps

        def spy(*args, count, real=real, **kw):
            calls.append(count)
            return real(*args, count=count, **kw)

        monkeypatch.setattr(module, "gd_steps", spy)
    return calls


def autograd_gd(data, arch, nets, lr, steps):
    """The reference: one network at a time, the loss written here from the data, autograd gradients."""
    X, y = torch.tensor(data.X), torch.tensor(data.y)
    out = []
    for net, eta in zip(nets, lr):
        Ws = [torch.tensor(W, requires_grad=True) for W in net.layers]
        p = None if net.p is None else torch.tensor(net.p)
        X_in = X if p is None else torch.nn.functional.pad(X, (0, p.numel() - X.shape[1]))  # zero-padded inputs
        for _ in range(steps):
            h = X_in
            for W in Ws[:-1]:
                h = ACTIVATION.get(arch, LINEAR)(h @ W.T)
            f = h @ Ws[-1].T
            f = f[:, 0] if p is None else f @ p
            loss = ((y - f) ** 2).mean()
            grads = torch.autograd.grad(loss, Ws)
            with torch.no_grad():
                for W, g in zip(Ws, grads):
                    W -= eta * g
        out.append([W.detach().numpy() for W in Ws])
    return out


@pytest.mark.parametrize("arch,depth,width", [("gelu", 2, 3), ("gelu", 4, 5), ("gelu", 10, 5), ("gelu", 3, 8),
                                              ("gelu", 1, 5), ("relu", 4, 5), ("relu", 3, 8), ("small", 1, 5),
                                              ("small", 4, 5), ("small", 10, 5), ("small", 3, 8), ("residual", 4, 5),
                                              ("residual", 3, 7)])
def test_fused_step_equals_autograd_in_float64(data, kernel_calls, arch, depth, width):
    lr, scale, seed = [0.02, 0.05, 0.01], [0.5, 0.7, 0.6], [1, 2, 3]
    if archs.get(arch).linear:  # deep linear nets are stiffer at these scales: smaller steps
        lr, scale = [0.01, 0.005, 0.0025], [0.4, 0.5 if arch == "small" else 1.0, 0.3]
    res = dlnpipe.train(data, arch=arch, depth=depth, width=width, lr=lr, scale=scale, seed=seed, steps=200,
                        dtype="float64", record_every=50, log_every_s=None)
    assert sum(kernel_calls) >= 150  # most steps were fused (the others are recording and check steps)
    assert (res.status != dlnpipe.DIVERGED).all()
    nets = [dlnpipe.init_network(arch, depth=depth, width=width, d=5, scale=s, seed=i) for s, i in zip(scale, seed)]
    for i, ref in enumerate(autograd_gd(data, arch, nets, lr, 200)):  # the linear nets: from the data, not moments
        for W, R in zip(res.layers, ref):
            assert_weights_close(W[i], R)


def test_fused_float32_stays_within_float32_rounding(data, kernel_calls):
    """float32 GD drifts from float64 GD by rounding; the fused step drifts no more than torch's float32 path."""
    kw = dict(arch="gelu", depth=10, width=5, lr=0.005, scale=np.linspace(0.43, 0.7, 16), seed=np.arange(16),
              steps=400, record_every=100, log_every_s=None)
    ref = dlnpipe.train(data, dtype="float64", **kw)
    fused = dlnpipe.train(data, dtype="float32", **kw)
    assert kernel_calls
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLNPIPE_KERNELS", "0")
        kernels._load.cache_clear()
        torch32 = dlnpipe.train(data, dtype="float32", **kw)
    kernels._load.cache_clear()

    def drift(res):
        return max(float(np.abs(W - R).max() / np.abs(R).max()) for W, R in zip(res.layers, ref.layers))

    assert drift(fused) <= 2 * drift(torch32) + 1e-6, (drift(fused), drift(torch32))
    assert drift(fused) < 1e-4


def test_float32_gelu_is_as_accurate_as_torchs(data):
    """The kernel's own float32 GELU and its derivative against the float64 formula, next to torch's float32."""
    from scipy.special import ndtr

    lib, why = activated.library(kernels.Activation.GELU, torch.float32, 5, 5)
    assert lib is not None, f"the C compiler builds the kernel on the test machines ({why})"
    z = torch.linspace(-20, 20, 400_001, dtype=torch.float32)
    a, da = torch.empty_like(z), torch.empty_like(z)
    lib.dlnpipe_activation(z.numel(), z.data_ptr(), a.data_ptr(), da.data_ptr())
    z64 = z.double().numpy()
    cdf, pdf = ndtr(z64), np.exp(-z64**2 / 2) / np.sqrt(2 * np.pi)
    exact_a, exact_da = z64 * cdf, cdf + z64 * pdf
    torch_a = torch.nn.functional.gelu(z).double().numpy()
    torch_da = torch.ops.aten.gelu_backward(torch.ones_like(z), z).double().numpy()
    scale = np.maximum(1.0, np.abs(z64))
    ours_a, ours_da = np.abs(a.double().numpy() - exact_a) / scale, np.abs(da.double().numpy() - exact_da)
    ulp = np.finfo(np.float32).eps  # 1.19e-7: float32 rounding of values near 1
    # both within a few ulp: ours 1.0 and 2.9 ulp, torch's own float32 GELU 3.0 and 2.4 ulp on this grid
    assert ours_a.max() <= 4 * ulp and np.max(np.abs(torch_a - exact_a) / scale) <= 4 * ulp
    assert ours_da.max() <= 4 * ulp and np.max(np.abs(torch_da - exact_da)) <= 4 * ulp


def test_batch_equals_each_network_alone_and_divergence_is_isolated(data, kernel_calls):
    kw = dict(arch="gelu", depth=4, width=5, steps=300, dtype="float64", record_every=100, log_every_s=None)
    lr, scale, seed = [0.02, 9.0, 0.05, 0.01], [0.5, 2.5, 0.6, 0.7], [4, 5, 6, 7]
    batch = dlnpipe.train(data, lr=lr, scale=scale, seed=seed, **kw)
    assert batch.status[1] == dlnpipe.DIVERGED and (batch.status[[0, 2, 3]] != dlnpipe.DIVERGED).all()
    for i in range(4):
        one = dlnpipe.train(data, lr=lr[i], scale=scale[i], seed=seed[i], **kw)
        assert one.status[0] == batch.status[i] and one.diverged_step[0] == batch.diverged_step[i]
        if i != 1:
            for Wb, Wo in zip(batch.layers, one.layers):
                assert_weights_close(Wb[i], Wo[0])
    assert kernel_calls


def test_fallback_gives_the_same_results_and_says_so(data, monkeypatch, caplog):
    kw = dict(arch="relu", depth=3, width=6, lr=[0.02, 0.05], scale=0.6, seed=[1, 2], steps=300, dtype="float64",
              record_every=100, log_every_s=None)
    fused = dlnpipe.train(data, **kw)
    kernels._load.cache_clear()
    monkeypatch.setattr(kernels, "compiler", lambda: None)  # a machine without a C compiler
    with caplog.at_level(logging.WARNING, logger="dlnpipe.kernels"):
        plain = dlnpipe.train(data, **kw)
    kernels._load.cache_clear()
    assert "no C compiler found" in caplog.text and "torch path" in caplog.text
    np.testing.assert_array_equal(fused.status, plain.status)
    for a, b in zip(fused.layers, plain.layers):
        assert_weights_close(a, b)


def test_compiled_kernel_is_cached_between_processes(tmp_path):
    code = ("import logging, sys, torch; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from dlnpipe.kernels import activated; "
            "print('loaded', activated.library(activated.Activation.RELU, torch.float32, 7, 3)[0] is not None)")
    env = {"DLNPIPE_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "compiling activated" in first.stdout and "loaded True" in first.stdout
    assert "compiling" not in second.stdout and "loaded True" in second.stdout
    assert len(list((tmp_path / "kernels").glob("activated-*.so"))) == 1


def test_linear_kernel_with_one_dataset_per_network(kernel_calls):
    """Networks on different datasets (per-network Σ, w*, R*) in one fused batch = each on its own dataset."""
    sets = [dlnpipe.make_dataset(20, 4, noise=0.3, seed=1, kappa=k, spectrum="linear", wstar=w)
            for k, w in ((1.0, "random"), (10.0, "top"), (100.0, "bottom"))]
    which = [0, 1, 2, 1, 0]
    kw = dict(arch="residual", depth=3, width=5, scale=0.4, steps=400, record_every=100, log_every_s=None)
    lr, seed = [0.02, 0.03, 0.01, 0.02, 0.03], [1, 2, 3, 4, 5]
    batch = dlnpipe.train([sets[i] for i in which], lr=lr, seed=seed, **kw)
    assert sum(kernel_calls) >= 300
    for j, i in enumerate(which):
        one = dlnpipe.train(sets[i], lr=lr[j], seed=seed[j], **kw)
        for Wb, Wo in zip(batch.layers, one.layers):
            assert_weights_close(Wb[j], Wo[0])


@pytest.mark.parametrize("name", ["gelu", "small"])
def test_fused_step_runs_on_the_cpu_only(data, name):
    """The compiled steps are for the CPU: for tensors elsewhere (here torch's "meta" device, as a stand-in
    for CUDA) fused_steps declines and says why, and the stepper takes the torch path one step at a time."""
    from dlnpipe.tensors import stack_weights

    arch = archs.get(name)
    nets = [dlnpipe.init_network(name, depth=2, width=5, d=5, scale=0.5, seed=0)]
    for device in ("cpu", "meta"):
        layers, c = stack_weights(nets, dtype="float64", device="cpu")
        layers, c = [W.to(device) for W in layers], c.to(device)
        prob = arch.problem([data], in_dim=5, dtype="float64", device="cpu")
        kw = dict(lr=torch.full((1,), 0.01, dtype=torch.float64, device=device),
                  alive=torch.ones(1, dtype=torch.bool, device=device),
                  alive_steps=torch.zeros(1, dtype=torch.int64, device=device),
                  cap=torch.full((1,), 1e9, dtype=torch.float64, device=device))
        step, why = arch.fused_steps(layers, c, prob)
        assert (step is not None) == (device == "cpu") and (why == "") == (device == "cpu")
        if device == "cpu":
            step(layers, c, prob, count=3, **kw)
            assert int(kw["alive_steps"][0]) == 3 and not np.allclose(layers[0].numpy(), nets[0].layers[0])
        else:
            assert "CPU" in why


@pytest.mark.parametrize("name", ["linear", "activated"])
def test_a_signature_that_does_not_match_the_c_source_is_refused(name):
    """The ctypes declarations are checked against the C prototypes before anything is built or called: an
    argument too few, or a pointer declared as an integer, raises (a mismatch would otherwise segfault)."""
    module = {"linear": linear, "activated": activated}[name]
    source = (kernels.Path(kernels.__file__).with_name(f"{name}.c")).read_text()
    kernels.check_signatures(name, source, module.SIGNATURES)  # the real declarations match
    real = module.SIGNATURES["dlnpipe_steps"]
    last = kernels.prototypes(source)["dlnpipe_steps"][1][-1][0]  # the name of its last argument, a pointer
    short = {"dlnpipe_steps": kernels.Signature(real.restype, real.argtypes[:-1])}
    with pytest.raises(kernels.KernelSignatureError, match=rf"dlnpipe_steps takes \d+ arguments .*{last}\), declared"):
        kernels.check_signatures(name, source, short)
    wrong = {"dlnpipe_steps": kernels.Signature(real.restype, (*real.argtypes[:-1], ctypes.c_int))}
    with pytest.raises(kernels.KernelSignatureError, match=rf"argument \d+ \({last}\) of dlnpipe_steps is c_void_p, "
                                                            r"declared c_int"):
        kernels.load(name, wrong, REAL="double")  # refused before any build


def test_the_activation_codes_are_one_enum_on_both_sides():
    """activated.c compares ACT only with the ACT_<NAME> constants that dlnpipe.kernels.Activation defines."""
    import re

    source = (kernels.Path(kernels.__file__).with_name("activated.c")).read_text()
    compared = set(re.findall(r"ACT\s*==\s*(\w+)", source))
    assert compared and compared <= {f"ACT_{a.name}" for a in kernels.Activation}
    assert not re.search(r"ACT\s*==\s*\d", source)
    assert archs.get("gelu").kernel_activation is kernels.Activation.GELU
    assert archs.get("relu").kernel_activation is kernels.Activation.RELU


@pytest.mark.parametrize("arch,depth,width", [("gelu", 3, 5), ("small", 3, 5)])
def test_compiled_and_torch_paths_freeze_diverging_networks_alike(data, arch, depth, width, monkeypatch):
    """The step's rules (dlnpipe.steppers.base) on networks built to diverge at different steps, some to
    inf/NaN: the compiled kernel and the torch path freeze each one at the same step, where it was, and say
    which path ran."""
    lr = [0.01, 0.5, 1.5, 4.0, 30.0, 0.02]
    kw = dict(arch=arch, depth=depth, width=width, lr=lr, scale=[0.6, 0.9, 1.0, 1.2, 1.5, 0.7],
              seed=[1, 2, 3, 4, 5, 6], steps=250, dtype="float64", record_every=50, log_every_s=None,
              check_every=7)
    fused = dlnpipe.train(data, **kw)
    kernels._load.cache_clear()
    monkeypatch.setenv("DLNPIPE_KERNELS", "0")
    plain = dlnpipe.train(data, **kw)
    kernels._load.cache_clear()
    assert (fused.train_path == dlnpipe.TrainPath.COMPILED).all()
    assert (plain.train_path == dlnpipe.TrainPath.TORCH).all()
    diverged = fused.status == dlnpipe.DIVERGED
    assert 2 <= diverged.sum() <= 5 and len(set(fused.diverged_step[diverged])) >= 2, fused.diverged_step
    np.testing.assert_array_equal(fused.status, plain.status)
    np.testing.assert_array_equal(fused.diverged_step, plain.diverged_step)
    for a, b in zip(fused.layers, plain.layers):
        frozen_finite = np.isfinite(a).all(axis=(1, 2))
        np.testing.assert_array_equal(frozen_finite, np.isfinite(b).all(axis=(1, 2)))
        keep = ~diverged
        assert_weights_close(a[keep], b[keep])
        np.testing.assert_allclose(a[diverged & frozen_finite], b[diverged & frozen_finite], rtol=1e-6)


def test_the_float32_gelu_coefficients_come_from_the_fit_script():
    """activated.c's polynomial coefficients are exactly what dlnpipe/kernels/fit_gelu.py fits (it rewrites
    them with --write), and the fit meets the accuracy the kernel's comment states."""
    from dlnpipe.kernels import fit_gelu

    c = fit_gelu.fits()
    assert fit_gelu.rewritten(fit_gelu.SOURCE.read_text(), c) == fit_gelu.SOURCE.read_text()
    err = fit_gelu.errors(c)
    assert err["sigma"] <= 1.2e-7 and err["sigma_prime"] <= 4e-7, err
    assert fit_gelu.main(["--check"]) == 0


@pytest.mark.parametrize("arch,dtype,d", [("gelu", "float32", 5), ("gelu", "float64", 5), ("small", "float64", 5),
                                          ("relu", "float32", 5), ("small", "float64", 8)])
def test_the_kernel_built_for_either_vector_width_gives_the_same_results(kernel_calls, monkeypatch, arch, dtype, d):
    """Chunks of 32 bytes (AVX2) and 64 bytes (AVX-512) of networks, built on this CPU whichever it has: each
    lane runs the same scalar program, so the results agree to rounding (not always bit for bit: at another
    register width the compiler may fuse a different set of multiply-adds into FMAs; with -ffp-contract=off
    they are identical), and each kernel says the lanes it packs. 11 networks: a partial last chunk at both."""
    data = dlnpipe.make_dataset(50, d, noise=0.0, seed=66)
    kw = dict(arch=arch, depth=4, width=5, lr=np.linspace(0.01, 0.05, 11), scale=0.5, seed=np.arange(11), steps=150,
              dtype=dtype, record_every=50, log_every_s=None)
    out = {}
    for vector in (32, 64):
        monkeypatch.setenv("DLNPIPE_VECTOR_BYTES", str(vector))
        lib, why = linear.library(torch.float64, in_dim=d, width=5, out_last=1, per_network=False)
        assert lib is not None, why
        assert linear.lanes(lib) == vector // 8
        out[vector] = dlnpipe.train(data, **kw)
    assert sum(kernel_calls) >= 200
    rel = 1e-10 if dtype == "float64" else 1e-4  # float32: a few ulps, grown over 150 steps
    for a, b in zip(out[32].layers, out[64].layers):
        assert_weights_close(a, b, rel=rel)
    assert_floor_close(out[32].traj_loss_train, out[64].traj_loss_train, scale=float(data.yty), rel=rel)


def test_the_vector_width_follows_the_cpu_and_a_bad_override_is_refused(monkeypatch):
    monkeypatch.delenv("DLNPIPE_VECTOR_BYTES", raising=False)
    flags = kernels._cpu()
    assert kernels.vector_bytes() == (64 if "avx512f" in flags else 32 if "avx" in flags else 16)
    monkeypatch.setenv("DLNPIPE_VECTOR_BYTES", "48")
    with pytest.raises(ValueError, match="DLNPIPE_VECTOR_BYTES must be one of"):
        kernels.vector_bytes()


@pytest.mark.parametrize("arch,dtype", [("gelu", "float64"), ("small", "float64"), ("gelu", "float32")])
def test_recording_through_the_kernel_gives_the_torch_paths_trajectories(data, monkeypatch, arch, dtype):
    """A recording step is the kernel's (the first of a span): its training and test losses are the ones the
    kernel computes for the step (a linear net's test loss from its regressor, taken with the distance just
    before), so no step but the last of a run is evaluated on the torch path. Recorded every 7 steps, with
    networks diverging (not recorded from their divergence on), the trajectories are the torch path's: to
    1e-10 of the loss scale in float64, to float32 rounding in float32."""
    lr = [0.02, 0.05, 30.0, 0.03, 9.0]
    kw = dict(arch=arch, depth=3, width=5, lr=lr, scale=[0.5, 0.6, 1.5, 0.7, 2.0], seed=[1, 2, 3, 4, 5], steps=90,
              dtype=dtype, record_every=7, check_every=10, log_every_s=None)
    real = archs.get(arch).evaluate
    calls = []

    def spy(self, layers, *a, **k):
        calls.append(layers[0].shape[0])
        return real(layers, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(type(archs.get(arch)), "evaluate", spy)
        fused = dlnpipe.train(data, **kw)
    assert len(calls) == 2  # the start and the last step: every recording step was the kernel's
    kernels._load.cache_clear()
    monkeypatch.setenv("DLNPIPE_KERNELS", "0")
    plain = dlnpipe.train(data, **kw)
    kernels._load.cache_clear()
    assert (fused.train_path == 1).all() and (plain.train_path == 0).all()
    np.testing.assert_array_equal(fused.status, plain.status)
    np.testing.assert_array_equal(fused.diverged_step, plain.diverged_step)
    assert (fused.status == dlnpipe.DIVERGED).sum() >= 1
    rel = 1e-10 if dtype == "float64" else 1e-4
    for key in ("traj_loss_train", "traj_loss_test", "traj_distance"):
        a, b = getattr(fused, key), getattr(plain, key)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=key)
        scale = float(data.yty) if "loss" in key else float(data.w_norm) ** 2
        ok = ~np.isnan(a) & (fused.status != dlnpipe.DIVERGED)[:, None]
        assert_floor_close(a[ok], b[ok], scale=scale, rel=rel, err_msg=key)
