"""What only a GPU can show, run by scripts/gpu-check (and by pytest wherever CuPy or torch
finds a CUDA device; skipped with the reason elsewhere): CuPy and torch CUDA steps run the
generated kernels (one launch per group, never CuPy's flushing ufuncs) with NumPy's bits; a
checkpoint saved from CuPy resumes on NumPy and torch CPU bit-exact; the torch drop-in on a
CUDA model matches the CPU bits."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from helpers import VARIANTS, make_rule, same_bits_any_nan, variant_id


def _cupy_device():
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "skip"
        return None


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


cupy = _cupy_device()
torch = _torch_cuda()
needs_cupy = pytest.mark.skipif(cupy is None, reason="no CUDA device through CuPy here")
needs_torch_cuda = pytest.mark.skipif(torch is None, reason="torch has no CUDA device here")


def _problem(dtype, seed=0, leaves=((7,), (3, 5), (40_000,), (0,))):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in leaves]
    grads = [[rng.standard_normal(shape).astype(dtype) * 1e-3 for shape in leaves] for _ in range(6)]
    return params, grads


def _numpy_run(rule, params, grads):
    params = [p.copy() for p in params]
    state = rule.init(params)
    with portopt.fast_path("off"):
        for g in grads:
            rule.step(params, g, state)
    return params, state


@needs_cupy
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("variant", [pytest.param(v, id=variant_id(v)) for v in VARIANTS])
def test_cupy_steps_run_the_generated_kernel_with_numpys_bits(variant, dtype, launches):
    rule = make_rule(variant)
    params, grads = _problem(dtype)
    expected, _ = _numpy_run(make_rule(variant), params, grads)
    on_gpu = [cupy.asarray(p) for p in params]
    state = rule.init(on_gpu)
    for g in grads:
        rule.step(on_gpu, [cupy.asarray(x) for x in g], state)
    assert launches[0] >= len(grads)
    assert all(same_bits_any_nan(e, p.get()) for e, p in zip(expected, on_gpu))


@needs_cupy
def test_a_resnet_sized_tree_is_one_launch_per_step(launches):
    from benchmarks.workloads import resnet50_shapes

    shapes = resnet50_shapes()
    rule = portopt.Adam(lr=1e-3)
    params = [cupy.ones(shape, dtype=cupy.float32) for shape in shapes]
    grads = [cupy.full(shape, 0.5, dtype=cupy.float32) for shape in shapes]
    state = rule.init(params)
    for _ in range(3):
        rule.step(params, grads, state)
    assert len(shapes) >= 150 and launches[0] == 3


@needs_cupy
def test_a_checkpoint_saved_from_cupy_resumes_on_numpy_and_torch_cpu(tmp_path):
    params, grads = _problem("float32", seed=3)
    expected, _ = _numpy_run(portopt.AdamW(lr=1e-2), params, grads)
    rule = portopt.AdamW(lr=1e-2)
    on_gpu = [cupy.asarray(p) for p in params]
    state = rule.init(on_gpu)
    for g in grads[:3]:
        rule.step(on_gpu, [cupy.asarray(x) for x in g], state)
    portopt.save(tmp_path / "opt.npz", rule.state_dict(state))
    host = [p.get() for p in on_gpu]
    resumed = {"numpy": [h.copy() for h in host]}
    try:
        import torch as cpu_torch

        resumed["torch-cpu"] = [cpu_torch.from_numpy(h.copy()) for h in host]
    except ImportError:
        pass
    for name, like in resumed.items():
        again = portopt.AdamW(lr=1e-2)
        loaded = again.load_state_dict(portopt.load(tmp_path / "opt.npz"), like=like)
        for g in grads[3:]:
            again.step(like, [g_ if name == "numpy" else cpu_torch.from_numpy(g_) for g_ in g], loaded)
        got = [np.asarray(x) for x in like]
        assert all(same_bits_any_nan(e, x) for e, x in zip(expected, got)), name


@needs_torch_cuda
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_the_drop_in_on_a_cuda_model_matches_the_cpu_bits(name):
    import portopt.torch as drop_ins

    def model(device):
        generator = torch.Generator().manual_seed(0)
        layers = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
        with torch.no_grad():
            for p in layers.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        return layers.to(device)

    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    cpu, gpu = model("cpu"), model("cuda")
    optimizers = [getattr(drop_ins, name)(m.parameters(), **kwargs) for m in (cpu, gpu)]
    x, y = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)), torch.randn(64, 4)
    for _ in range(5):
        cpu.zero_grad()
        torch.nn.functional.mse_loss(cpu(x), y).backward()  # gradients from the CPU, copied: the
        for p, q in zip(cpu.parameters(), gpu.parameters()):  # step is what is compared
            q.grad = p.grad.to("cuda")
        for optimizer in optimizers:
            optimizer.step()
        for p, q in zip(cpu.parameters(), gpu.parameters()):
            assert torch.equal(p.detach().view(torch.int32), q.detach().cpu().view(torch.int32))


@needs_torch_cuda
@pytest.mark.skipif(cupy is None, reason="CuPy launches the generated kernels for torch CUDA tensors")
def test_torch_cuda_steps_run_the_generated_kernel(launches):
    params, grads = _problem("float32", seed=5)
    expected, _ = _numpy_run(portopt.Adam(lr=1e-2), params, grads)
    rule = portopt.Adam(lr=1e-2)
    on_gpu = [torch.from_numpy(p).cuda() for p in params]
    state = rule.init(on_gpu)
    for g in grads:
        rule.step(on_gpu, [torch.from_numpy(x).cuda() for x in g], state)
    assert launches[0] >= len(grads)
    assert all(same_bits_any_nan(e, p.cpu().numpy()) for e, p in zip(expected, on_gpu))
