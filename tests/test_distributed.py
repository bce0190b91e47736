"""Sharded training: the fixed-order norm over shards, and real gloo ranks on loopback
running FSDP2, ZeRO and their checkpoints against a one-process run, bit for bit."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import portopt
from portopt.reductions import combine_frontiers, pairwise_frontier, pairwise_sum

torch = pytest.importorskip("torch", reason="torch is not installed")
dist = pytest.importorskip("torch.distributed", reason="this torch has no torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)

import portopt.torch as pt  # noqa: E402

# Functions run by spawned ranks must live in a module the ranks can import by name
# (tests/ is on sys.path; this test module, imported by pytest's importlib mode, is not).
from distributed_ranks import raise_on_rank_one, skip_on_one_rank, zero_skip_on_one_rank  # noqa: E402
from portopt.conformance import distributed  # noqa: E402


def _split_sum(values: np.ndarray, cuts: list[int]) -> np.generic:
    bounds = [0, *sorted(cuts), values.size]
    parts = [pairwise_frontier(xp, values[first:end], first, values.size) for first, end in zip(bounds, bounds[1:])]
    return combine_frontiers(parts[::-1], values.size, values.dtype)  # any order of the ranks


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 400), data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1))
def test_any_contiguous_split_sums_to_the_unsharded_bits(n, data, dtype, seed):
    cuts = data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts")
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(dtype)
    want = np.asarray(pairwise_sum(xp, [values], dtype))
    assert np.asarray(_split_sum(values, cuts)).tobytes() == want.tobytes()


def test_a_naive_split_would_differ_so_the_test_above_can_fail():
    # Summing each half and adding the halves is not the unsharded tree for n = 6 (3 + 3):
    values = np.array([1.0, 1e-8, 1e-8, 1e8, -1e8, 1e-8], np.float32)
    naive = np.asarray(pairwise_sum(xp, [values[:3]], np.float32)) + np.asarray(pairwise_sum(xp, [values[3:]], np.float32))
    want = np.asarray(pairwise_sum(xp, [values], np.float32))
    assert naive.tobytes() != want.tobytes()
    assert np.asarray(_split_sum(values, [3])).tobytes() == want.tobytes()


def test_overlapping_or_missing_ranges_are_refused():
    values = np.arange(8, dtype=np.float32)
    overlapping = [pairwise_frontier(xp, values[:4], 0, 8), pairwise_frontier(xp, values[2:], 2, 8)]
    with pytest.raises(ValueError, match="overlap at element 2"):
        combine_frontiers(overlapping, 8, np.float32)
    gap = [pairwise_frontier(xp, values[:3], 0, 8), pairwise_frontier(xp, values[4:], 4, 8)]
    with pytest.raises(ValueError, match="leave a gap at element 3"):
        combine_frontiers(gap, 8, np.float32)
    with pytest.raises(ValueError, match="cover 5 of 8"):
        combine_frontiers([pairwise_frontier(xp, values[:5], 0, 8)], 8, np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        pairwise_frontier(xp, values, 4, 8)


def _params_with_grads(seed: int, dtype=torch.float32) -> list:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in distributed.NORM_SHAPES:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        p.grad = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) * 3.0
        params.append(p)
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_grad_norm_and_clipping_match_portopt_on_one_process(dtype):
    params = _params_with_grads(0, dtype)
    grads = [p.grad.numpy().copy() for p in params]
    assert pt.global_grad_norm(params).numpy().tobytes() == np.asarray(portopt.global_norm(grads)).tobytes()
    clipped, norm = portopt.clip_by_global_norm(grads, max_norm=0.5)
    returned = pt.clip_grad_norm_(params, max_norm=0.5)
    assert returned.numpy().tobytes() == np.asarray(norm).tobytes()
    for p, want in zip(params, clipped):
        assert p.grad.numpy().tobytes() == want.tobytes()
    assert float(pt.global_grad_norm(params)) < float(norm)  # they were scaled


def test_clip_grad_norm_checks_its_arguments_before_touching_grads():
    params = _params_with_grads(1)
    before = [p.grad.clone() for p in params]
    with pytest.raises(ValueError, match="max_norm"):
        pt.clip_grad_norm_(params, max_norm=-1.0)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    with pytest.raises(ValueError, match="no gradients"):
        pt.global_grad_norm([torch.nn.Parameter(torch.zeros(3))])


def test_first_difference_finds_a_one_ulp_change():
    a, b = distributed.build_model(0), distributed.build_model(0)
    assert distributed.first_difference(a, b) == ""
    with torch.no_grad():
        weight = b[2].weight.view(-1)
        weight[5] = torch.nextafter(weight[5], torch.tensor(float("inf")))
    assert distributed.first_difference(a, b).startswith("2.weight[5] (flat)")


def test_bad_names_fail_before_any_rank_starts():
    with pytest.raises(ValueError, match="no drop-in variant"):
        distributed.run(2, ["fsdp2"], ["NoSuchRule"])
    with pytest.raises(ValueError, match="unknown checks"):
        distributed.run(2, ["tensor-parallel"])


DEFAULT_MODES = ("auto",)  # the long tier adds "off", "blocked" and "compiled"


def _default_variants() -> list[str]:
    """Each drop-in rule's first variant and every clipped one (clip_grad_norm_ under
    sharding); the long tier runs every variant."""
    names, seen = [], set()
    for variant in distributed.drop_in_variants():
        if variant["rule"] not in seen or variant["name"].endswith("clipped"):
            names.append(f"{variant['rule']}-{variant['name']}")
        seen.add(variant["rule"])
    return names


@pytest.fixture(scope="module")
def two_rank_findings():
    """Every check, each drop-in rule's first and clipped variants of cases.toml, the default
    fast path, on 2 gloo ranks."""
    return distributed.run(ranks=2, steps=4, variant_names=_default_variants(), modes=DEFAULT_MODES, timeout=480)


def _check_findings(findings, check, modes, variant_count):
    findings = [f for f in findings if f.check == check]
    assert {f.rank for f in findings} == {0, 1}
    failed = [f for f in findings if not f.equal]
    assert not failed, distributed.summary(failed)
    if check in ("fsdp2", "zero"):
        variants = {f.variant for f in findings}
        assert len(variants) == variant_count
        assert {f.fast_path for f in findings} == set(modes)
        assert any(v.endswith("clipped") for v in variants)  # clip_grad_norm_ under sharding


@pytest.mark.parametrize("check", distributed.CHECKS)
def test_two_ranks_give_the_one_process_bits(two_rank_findings, check):
    _check_findings(two_rank_findings, check, DEFAULT_MODES, len(_default_variants()))


@pytest.mark.long
def test_two_ranks_give_the_one_process_bits_under_every_fast_path():
    from portopt.fast import MODES
    from portopt.kernels import cpu as compiled

    modes = [m for m in MODES if m != "compiled" or compiled.available()]
    findings = distributed.run(ranks=2, steps=4, modes=modes, timeout=900)
    for check in distributed.CHECKS:
        _check_findings(findings, check, modes, len(distributed.drop_in_variants()))


def test_skip_nonfinite_agrees_across_ranks_and_other_layouts_are_refused():
    from portopt.conformance.ranks import run_ranks

    results = run_ranks(skip_on_one_rank, 2, timeout=120)
    assert [r[:2] for r in results] == [(1, True), (1, True)]
    for _, _, refused in results:
        assert "parameters[0].grad has placement S(1)" in refused and "Shard(0)" in refused


@pytest.mark.parametrize("agree", [True, False], ids=["skip_group", "no_group"])
def test_zero_ranks_skip_together_when_given_a_skip_group(agree):
    from portopt.conformance.ranks import run_ranks

    results = run_ranks(zero_skip_on_one_rank, 2, agree, timeout=120)
    if agree:
        assert results == [(1, True), (1, True)]
    else:  # the owner skips, the other rank steps its partition: why skip_group exists
        assert results == [(1, False), (0, False)]


def test_skip_group_is_checked():
    with pytest.raises(TypeError, match="skip_group must be 'world'"):
        pt.Adam([torch.nn.Parameter(torch.zeros(2))], skip_group="everyone")


def test_a_failing_rank_is_reported_with_its_traceback():
    from portopt.conformance.ranks import RanksFailed, run_ranks

    with pytest.raises(RanksFailed, match="rank 1 of 2 failed(.|\n)*on purpose"):
        run_ranks(raise_on_rank_one, 2, timeout=120)
