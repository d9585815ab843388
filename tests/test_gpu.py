"""The device path. Tests marked ``gpu`` need CUDA (they skip without it): training, Lanczos and a
whole train_cell stage on the GPU equal the CPU in float64 within 1e-10. The CPU path of
benchmarks/gpu_check.py runs everywhere."""

import subprocess
import sys

import numpy as np
import pytest
from tolerances import assert_floor_close, distance_scale, loss_scale
from workflow_utils import ROOT

import dlnpipe

TOL = 1e-10


@pytest.fixture(scope="module")
def data():
    return dlnpipe.make_dataset(30, 5, noise=0.5, seed=2, kappa=20.0)


@pytest.mark.gpu
@pytest.mark.parametrize("arch,width", [("small", 5), ("small", 9), ("residual", 7), ("gelu", 4)])
def test_cuda_training_equals_cpu_float64(data, arch, width):
    kw = dict(arch=arch, depth=5, width=width, lr=np.linspace(0.005, 0.05, 12), scale=0.4, seed=np.arange(12),
              steps=600, dtype="float64", record_every=50)
    cpu, gpu = dlnpipe.train(data, device="cpu", **kw), dlnpipe.train(data, device="cuda", **kw)
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    np.testing.assert_array_equal(cpu.status, gpu.status)
    for a, b in zip(cpu.layers, gpu.layers):
        np.testing.assert_allclose(b, a, rtol=0, atol=TOL)
    assert_floor_close(gpu.traj_loss_train, cpu.traj_loss_train, scale=loss_scale(data), rel=TOL)
    assert_floor_close(gpu.traj_distance, cpu.traj_distance, scale=distance_scale(data), rel=TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["small", "gelu"])
@pytest.mark.parametrize("optimizer,options", [("heavy_ball", {"momentum": [0.0, 0.5, 0.9]}),
                                               ("adam", {"betas": [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]}),
                                               ("sgd", {"batch_size": [1, 7, 30], "label_noise": [0.0, 0.3, 0.5]})])
def test_cuda_optimizers_equal_cpu_float64(data, arch, optimizer, options):
    """The optimizers' per-network tensors and the counter-based mini-batches and noise are the same on
    the device: each network's run equals the CPU's."""
    kw = dict(arch=arch, depth=4, width=5, lr=[0.01, 0.004, 0.002], scale=0.4, seed=[1, 2, 3], steps=300,
              dtype="float64", record_every=50, optimizer=optimizer, **options)
    cpu, gpu = dlnpipe.train(data, device="cpu", **kw), dlnpipe.train(data, device="cuda", **kw)
    np.testing.assert_array_equal(cpu.status, gpu.status)
    for a, b in zip(cpu.layers, gpu.layers):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-8 * np.abs(a).max())
    for name, value in cpu.extras.items():
        np.testing.assert_allclose(gpu.extras[name], value, rtol=1e-8, atol=1e-8 * np.nanmax(np.abs(value)))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["small", "residual", "gelu"])
def test_cuda_lanczos_equals_cpu_float64(data, arch):
    res = dlnpipe.train(data, arch=arch, depth=4, width=6, lr=0.02, scale=0.4, seed=np.arange(8), steps=300)
    cpu = dlnpipe.sharpness(data, res, k=3, device="cpu").eigenvalues
    gpu = dlnpipe.sharpness(data, res, k=3, device="cuda").eigenvalues
    np.testing.assert_allclose(gpu, cpu, rtol=TOL)


@pytest.mark.gpu
def test_cuda_batches_follow_device_memory(data):
    """The default batch comes from the free device memory; a smaller cap gives the same networks."""
    kw = dict(arch="small", depth=4, width=6, lr=0.02, scale=0.4, seed=np.arange(10), steps=200, device="cuda")
    whole, sliced = dlnpipe.train(data, **kw), dlnpipe.train(data, max_batch=3, **kw)
    for a, b in zip(whole.layers, sliced.layers):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def test_gpu_check_cpu_path():
    """benchmarks/gpu_check.py on the CPU with small sizes: the correctness check passes and the
    throughput table has one row per width with positive rates."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--device", "cpu",
                          "--widths", "8", "16", "--depth", "4", "--steps", "10", "--max-nets", "16"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "correctness PASS" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().split()[:1] in (["8"], ["16"])]
    assert [r[0] for r in rows] == ["8", "16"]
    for r in rows:
        assert float(r[4]) > 0 and float(r[7]) > 0  # net-steps/s, net-HVPs/s
