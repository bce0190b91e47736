"""Every example runs, quickly, and shows what it claims."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reddi_counterexample_adam_goes_to_the_worst_point_and_amsgrad_to_the_best():
    paths = _load("reddi_counterexample").main(["--steps", "600"])
    assert paths["Adam"][-1] > 0.9
    assert paths["AMSGrad"][-1] < -0.9


def test_numpy_mlp_learns_and_gives_the_same_bits_on_every_backend():
    results = _load("numpy_mlp").main(["--steps", "60"])
    for rule, by_backend in results.items():
        losses, digest = by_backend["numpy"]
        assert losses[-1] < 0.5 * losses[0], rule
        assert all(d == digest for _, d in by_backend.values()), rule


def test_torch_drop_in_example_trains_like_torch_optim():
    pytest.importorskip("torch", reason="torch is not installed")
    results = _load("torch_dropin").main(["--steps", "150"])
    ours, theirs = results["portopt.torch.Adam"], results["torch.optim.Adam"]
    assert ours[-1] < 0.2 * ours[0]
    assert abs(ours[-1] - theirs[-1]) < 1e-3 * max(theirs[-1], 1e-3) + 1e-4


def test_dask_example_gives_numpy_bits_on_a_two_process_cluster_and_beats_the_mean():
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    result = _load("dask_scaling").main(["--size", "128", "--frames", "8", "--steps", "40", "--chunk", "48"])
    assert result["same_bits"]
    assert result["fit_error"] < result["mean_error"]


def test_bf16_training_example_measures_the_memory_each_option_keeps():
    pytest.importorskip("torch")
    results = _load("bf16_training").main(["--steps", "20"])
    sizes = {name: size for name, (_, size) in results.items()}
    assert sizes["float32 params (reference)"] == 12.0  # 4 B params + two 4 B moments
    assert sizes["bfloat16 params, float32 state"] == 10.0
    assert sizes["bfloat16 params, bfloat16 state"] == 6.0
    assert sizes["bfloat16, bfloat16 state, kahan"] == 8.0  # + a 2 B compensation
    assert all(losses[-1] < losses[0] for losses, _ in results.values())
