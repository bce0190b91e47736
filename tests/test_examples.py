"""Every example runs, quickly, and shows what it claims."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    if str(EXAMPLES) not in sys.path:  # as when run as a script: examples/_plotting.py importable
        sys.path.insert(0, str(EXAMPLES))
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
    assert sizes["bfloat16, float32 state, split"] == 12.0  # + 2 B of low halves: a float32 master
    assert sizes["bfloat16, bfloat16 state, split"] == 8.0
    assert all(losses[-1] < losses[0] for losses, _ in results.values())


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_oscillator_fit_gives_the_same_digests_on_every_array_library(tmp_path):
    """The same script with only the array library changed: the fit and its whole path (and the
    Rosenbrock walk's) have the same SHA-256 on NumPy, torch and JAX, and the fit goes downhill."""
    example = _load("fit_oscillator")
    backends = ["numpy"] + [name for name in ("torch", "jax") if _installed(name)]
    if len(backends) < 2:
        pytest.skip("neither torch nor jax is installed")
    digests = {}
    for backend in backends:
        results = example.main(["--backend", backend, "--steps", "40"])
        losses = results["oscillator"]["losses"]
        assert len(losses) == 40 and losses[-1] < 0.5 * losses[0], backend
        assert results["valley"]["x"][0] <= 0.8, "the box's upper bound on x is honoured"
        digests[backend] = {problem: (r["fit_sha256"], r["path_sha256"]) for problem, r in results.items()}
    assert all(found == digests["numpy"] for found in digests.values()), digests


def test_oscillator_example_plots_small_figures(tmp_path):
    pytest.importorskip("matplotlib")
    fit, valley = tmp_path / "fit.png", tmp_path / "valley.png"
    _load("fit_oscillator").main(["--steps", "30", "--plot", str(fit), "--valley-plot", str(valley)])
    for path in (fit, valley):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 150_000
