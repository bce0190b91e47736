"""Promises under attack: in-place steps never half-applied, update() pure, aliasing refused or
copied, checkpoints that refuse cleanly, immutable rules, a conformance suite that cannot be
fooled by a wrong backend, and threads that do not disturb each other. Each test asserts the
clear error and the untouched bytes."""

from __future__ import annotations

import io
import json
import signal
import threading
import zipfile

import numpy as np
import pytest

import portopt
from conftest import TARGETS
from helpers import VARIANTS, make_rule, variant_id
from portopt.backends.numpy_adapter import NumpyAdapter
from portopt.cli import main as portopt_main
from portopt.kernels.cpu import available as compiled_loops_available


def _tree(n=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {f"x{i}": rng.standard_normal(5 + i).astype(dtype) for i in range(n)}


def _bytes(tree):
    return {k: v.tobytes() for k, v in tree.items()}


# --- 1. in-place steps are all or nothing ------------------------------------------------------
def test_an_error_while_computing_a_later_leaf_writes_nothing():
    """The reference path computes every leaf's new values before it writes any: running out
    of memory on the third leaf leaves the first two as they were."""
    rule = portopt.Adam(lr=0.1)
    params, grads = _tree(), _tree(seed=1)
    with portopt.fast_path("off"):
        state = rule.init(params)
        rule.step(params, grads, state)
        before, slots_before = _bytes(params), {k: _bytes(v) for k, v in state.slots.items()}
        namespace = rule._plans[True].namespace
        real_sqrt, calls = namespace.sqrt, {"n": 0}

        def sqrt_out_of_memory_on_the_third_leaf(x):
            calls["n"] += 1
            if calls["n"] == 3:
                raise MemoryError("no memory for this leaf")
            return real_sqrt(x)

        namespace._overrides["sqrt"] = sqrt_out_of_memory_on_the_third_leaf
        try:
            with pytest.raises(MemoryError):
                rule.step(params, grads, state)
        finally:
            namespace._overrides["sqrt"] = real_sqrt
    assert calls["n"] == 3 and state.step == 1 and not state.torn
    assert _bytes(params) == before and {k: _bytes(v) for k, v in state.slots.items()} == slots_before


def _step_interrupted(rule, params, grads, state, mode):
    """One step that must end in KeyboardInterrupt, under Python's own Ctrl-C handler (also
    where the test process was started with SIGINT ignored, nohup or a background job: there
    portopt has nothing to defer)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with portopt.fast_path(mode), pytest.raises(KeyboardInterrupt):
            rule.step(params, grads, state)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_writes_is_raised_after_the_step_is_complete(monkeypatch):
    """A KeyboardInterrupt arriving while a many-part step writes is held until every leaf
    and the step counter are written: a retry does not apply the step twice."""
    rule = portopt.SGD(lr=0.5)
    params, grads = _tree(), _tree(seed=1)
    expected, expected_state = rule.update({k: v.copy() for k, v in params.items()}, grads, rule.init(params))
    state = rule.init(params)
    writes = {"n": 0}
    original = NumpyAdapter.write

    def write_then_interrupt(self, destination, source):
        writes["n"] += 1
        original(self, destination, source)
        if writes["n"] == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after the first leaf is written

    monkeypatch.setattr(NumpyAdapter, "write", write_then_interrupt)
    _step_interrupted(rule, params, grads, state, "off")
    assert writes["n"] == len(params)
    assert state.step == 1 and not state.torn
    assert all(params[k].tobytes() == expected[k].tobytes() for k in params)


@pytest.mark.skipif(not compiled_loops_available(), reason="numba is not installed")
@pytest.mark.parametrize("size", [7, 1 << 17], ids=["one thread", "threads"])
def test_ctrl_c_just_after_a_first_compiled_loop_is_raised_after_the_step_is_counted(monkeypatch, size):
    """A single compiled loop cannot stop half way, but Ctrl-C can surface the moment it returns,
    before the step is counted: the step is then counted first (a first step, which the repeat
    lane does not take), so the params, the moments and state.step agree."""
    from portopt.kernels import cpu

    rule = portopt.Adam(lr=0.1)
    params = np.linspace(-1.0, 1.0, size).astype(np.float32)
    grads = np.cos(np.arange(size, dtype=np.float32))
    expected, _ = rule.update(params.copy(), grads, rule.init(params))
    state = rule.init(params)
    original = cpu.Loops.run

    def run_then_interrupt(self, *args, **kwargs):
        original(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C the moment the loop has written everything

    monkeypatch.setattr(cpu.Loops, "run", run_then_interrupt)
    _step_interrupted(rule, params, grads, state, "compiled")
    assert state.step == 1 and not state.torn
    assert params.tobytes() == expected.tobytes()


def test_a_step_stopped_half_way_marks_the_state_torn_and_later_steps_refuse_it(monkeypatch):
    """Where a write itself fails half way (an exception the step cannot hold back), the state
    says so and is refused from then on, instead of a retry applying the step twice."""
    rule = portopt.SGD(lr=0.5)
    params, grads = _tree(), _tree(seed=1)
    state = rule.init(params)
    writes = {"n": 0}
    original = NumpyAdapter.write

    def fail_on_second(self, destination, source):
        writes["n"] += 1
        if writes["n"] == 2:
            raise MemoryError("out of memory while writing")
        original(self, destination, source)

    monkeypatch.setattr(NumpyAdapter, "write", fail_on_second)
    with portopt.fast_path("off"), pytest.raises(MemoryError):
        rule.step(params, grads, state)
    monkeypatch.setattr(NumpyAdapter, "write", original)
    assert state.torn and state.step == 0
    with pytest.raises(ValueError, match="state is torn"):
        rule.step(params, grads, state)
    with pytest.raises(ValueError, match="state is torn"):
        rule.update(params, grads, state)


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")
def test_torch_views_as_later_leaves_neither_half_apply_nor_fail():
    import torch

    rule = portopt.SGD(lr=0.5)
    negative = torch._neg_view(torch.ones(3, dtype=torch.float64))
    params = [torch.ones(3, dtype=torch.float64), negative]
    grads = [torch.ones(3, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)]
    state = rule.init(params)
    rule.step(params, grads, state)
    assert params[0].tolist() == [0.5] * 3 and negative.tolist() == [-2.0] * 3
    expanded = torch.ones(1, dtype=torch.float64).expand(3)
    first = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"params\[1\] has elements that share memory"):
        rule.step([first, expanded], grads, rule.init([first, expanded]))
    assert first.tolist() == [1.0] * 3


# --- 2. update() returns no input ----------------------------------------------------------------
def _shares(target, a, b) -> bool:
    if a is b:
        return True
    if target.label == "numpy":
        return np.shares_memory(a, b)
    if target.label.startswith("torch"):
        if a.numel() == 0 or b.numel() == 0:
            return False
        ra = (a.data_ptr(), a.data_ptr() + a.numel() * a.element_size())
        rb = (b.data_ptr(), b.data_ptr() + b.numel() * b.element_size())
        return ra[0] < rb[1] and rb[0] < ra[1]
    return False


@pytest.mark.parametrize("skip", [False, True], ids=["stepped", "skipped"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
@pytest.mark.parametrize("backend", [b for b in ("numpy", "torch-cpu", "array_api_strict") if b in TARGETS])
def test_no_output_of_update_is_an_input(backend, variant, skip):
    target = TARGETS[backend]
    rule = make_rule(variant)
    if skip:
        rule = type(getattr(rule, "rule", rule))(**{**getattr(rule, "rule", rule).hyperparameters(),
                                                    "skip_nonfinite": True})
    params = {k: target.asarray(v) for k, v in _tree(3).items()}
    grads = {k: target.asarray(v) for k, v in _tree(3, seed=1).items()}
    if skip:
        grads["x0"] = target.asarray(np.full(5, np.nan))
    state = rule.init(params)
    new_params, new_state = rule.update(params, grads, state)  # SGD's first step: buf = g
    inputs = [*params.values(), *grads.values(), *(x for tree in state.slots.values() for x in tree.values())]
    outputs = [*new_params.values(), *(x for tree in new_state.slots.values() for x in tree.values())]
    for out in outputs:
        assert not any(_shares(target, out, x) for x in inputs)
    assert new_state.skipped == int(skip)


# --- 3. aliasing in the inputs --------------------------------------------------------------------
def test_the_same_array_twice_in_a_tree_is_refused_before_anything_is_written():
    rule = portopt.Adam()
    a, b = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match=r"params\[1\] and params\[2\] share memory"):
        rule.step([b, a, a], [np.ones(4)] * 3, rule.init([b, a, a]))
    assert a.tolist() == [1.0] * 4 and b.tolist() == [1.0] * 4
    overlapping = np.arange(8.0)
    with pytest.raises(ValueError, match=r"params\['left'\] and params\['right'\] share memory"):
        params = {"left": overlapping[:5], "right": overlapping[3:]}
        rule.step(params, {k: np.ones_like(v) for k, v in params.items()}, rule.init(params))
    state = rule.init({"w": np.ones(3)})
    aliased = portopt.State(rule="Adam", step=0, slots={"exp_avg": {"w": state.slots["exp_avg_sq"]["w"]},
                                                        "exp_avg_sq": state.slots["exp_avg_sq"]})
    with pytest.raises(ValueError, match="share memory"):
        rule.step({"w": np.ones(3)}, {"w": np.ones(3)}, aliased)


def test_a_zero_stride_writeable_array_is_refused():
    p = np.lib.stride_tricks.as_strided(np.ones(1), (4,), (0,))
    assert p.flags.writeable
    rule = portopt.SGD(lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        rule.step(p, np.ones(4), rule.init(p))
    assert p.tolist() == [1.0] * 4


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_grads_that_share_memory_with_params_are_copied_so_step_equals_update(mode):
    rule = portopt.SGD(lr=0.5, momentum=0.9)
    base = np.arange(10.0)
    p, g = base[:6], base[3:9]  # g reads what the step writes
    expected, _ = rule.update(p.copy(), g.copy(), rule.init(p))
    state = rule.init(p)
    with portopt.fast_path(mode):
        rule.step(p, g, state)
    assert p.tobytes() == expected.tobytes()
    same = np.arange(4.0)
    expected, _ = rule.update(same.copy(), same.copy(), rule.init(same))
    state = rule.init(same)
    rule.step(same, same, state)  # grads are the params themselves
    assert same.tobytes() == expected.tobytes()


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")
def test_a_drop_in_group_holding_one_parameter_twice_warns_and_is_refused():
    import portopt.torch as drop_ins
    import torch

    p = torch.ones(3, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        optimizer = drop_ins.Adam([p, p])
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="share memory"):
        optimizer.step()
    assert p.tolist() == [1.0] * 3


# --- 4. checkpoints -------------------------------------------------------------------------------
def _checkpoint(tmp_path, rule=None):
    rule = rule or portopt.Adam(lr=0.01)
    params = {"w": np.ones((2, 3)), "b": np.zeros(3)}
    state = rule.init(params)
    rule.step(params, {"w": np.full((2, 3), 0.5), "b": np.ones(3)}, state)
    path = tmp_path / "opt.npz"
    portopt.save(path, rule.state_dict(state))
    return rule, params, state, path


def test_every_single_bit_flip_is_refused_with_a_checkpoint_error_or_loads_unchanged(tmp_path):
    rule, params, state, path = _checkpoint(tmp_path)
    data = path.read_bytes()
    good = portopt.load(path)
    errors = set()
    for position in range(0, len(data), max(1, len(data) // 1500)):
        for bit in (0, 5):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            try:
                loaded = portopt.load(path)
            except portopt.CheckpointError as error:
                errors.add(type(error))
                continue
            # a flip the format does not read (e.g. a zip timestamp): the contents are unchanged
            assert all(a.tobytes() == b.tobytes() for name in good["slots"]
                       for a, b in zip(good["slots"][name], loaded["slots"][name]))
            assert loaded["step"] == good["step"]
    assert errors == {portopt.CheckpointError}


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    npy = tmp_path / "plain.npy"
    np.save(npy, np.ones(3))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    for path in (npy, text, empty, tmp_path / "missing.npz", tmp_path):
        with pytest.raises(portopt.CheckpointError):
            portopt.load(path)


def _rewrite(path, change, digest=True):
    """Rewrite a checkpoint's members with ``change(members)``; recompute the manifest digest."""
    import hashlib

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    if digest:
        text = np.load(io.BytesIO(members["manifest.npy"])).tobytes()
        buffer = io.BytesIO()
        np.save(buffer, np.frombuffer(hashlib.sha256(text).hexdigest().encode(), dtype=np.uint8))
        members["manifest_sha256.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w", compression=members.pop("__compression__", zipfile.ZIP_STORED)) as archive:
        for name, value in members.items():
            archive.writestr(name, value)


def _set_manifest(members, edit):
    manifest = json.loads(np.load(io.BytesIO(members["manifest.npy"])).tobytes())
    edit(manifest)
    text = json.dumps(manifest)
    if '"DEEP:' in text:  # a tree nested this deep, written out by hand (json.dumps would recurse)
        depth = int(text.split('"DEEP:')[1].split('"')[0])
        text = text.replace(f'"DEEP:{depth}"', '{"kind": "list", "keys": null, "children": [' * depth + '"*"'
                            + "]}" * depth)
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(text.encode(), dtype=np.uint8))
    members["manifest.npy"] = buffer.getvalue()


MANIFEST_EDITS = {
    "step a string": lambda m: m.update(step="3"),
    "step negative": lambda m: m.update(step=-1),
    "step a bool": lambda m: m.update(step=True),
    "skipped a float": lambda m: m.update(skipped=1.5),
    "host a list": lambda m: m.update(host=[1]),
    "host not hex": lambda m: m.update(host={"x": "zz"}),
    "arrays not a list": lambda m: m.update(arrays={"a": 1}),
    "array entry without a key": lambda m: m["arrays"][0].pop("key"),
    "array dtype object": lambda m: m["arrays"][0].update(dtype="|O"),
    "array shape huge": lambda m: m["arrays"][0].update(shape=[10 ** 12]),
    "array digest short": lambda m: m["arrays"][0].update(sha256="abc"),
    "slot names with a slash": lambda m: m.update(slot_names=["exp/avg"]),
    "tree malformed": lambda m: m.update(tree={"kind": "set", "children": []}),
    "tree nested 300 levels": lambda m: m.update(tree="DEEP:300"),
    "tree nested past the parser": lambda m: m.update(tree="DEEP:100000"),
    "manifest a list": lambda m: (m.clear(), None),
    "format other": lambda m: m.update(format="portopt-state/99"),
    "rule not a string": lambda m: m.update(rule=7),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_a_malformed_manifest_with_a_valid_digest_is_refused(tmp_path, edit):
    _, _, _, path = _checkpoint(tmp_path)
    _rewrite(path, lambda members: _set_manifest(members, MANIFEST_EDITS[edit]))
    with pytest.raises(portopt.CheckpointError):
        portopt.load(path)


def test_a_compressed_member_is_refused_before_it_is_expanded(tmp_path):
    """A zip bomb: 2 GiB of zeros that compress to a few MiB. portopt writes stored members,
    so a compressed one is refused without decompressing anything."""
    _, _, _, path = _checkpoint(tmp_path)

    def bomb(members):
        members["exp_avg/0.npy"] = b"\0" * (64 << 20)  # 64 MiB here; the check does not depend on size
        members["__compression__"] = zipfile.ZIP_DEFLATED

    _rewrite(path, bomb)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(portopt.CheckpointError, match="compressed"):
        portopt.load(path)


def test_an_array_header_claiming_a_huge_shape_is_refused_without_allocating(tmp_path):
    _, _, _, path = _checkpoint(tmp_path)

    def huge(members):
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (10 ** 12,)})
        members["exp_avg/0.npy"] = b"\x93NUMPY\x01\x00" + buffer.getvalue()[8:] + b"\0" * 64

    _rewrite(path, huge)
    with pytest.raises(portopt.CheckpointError):
        portopt.load(path)


def test_an_interrupted_save_leaves_no_temporary_file_behind(tmp_path):
    rule, params, state, path = _checkpoint(tmp_path)
    stale = tmp_path / f".{path.name}.999999999.abc.tmp"  # a save by a process that no longer exists
    stale.write_bytes(b"partial")
    portopt.save(path, rule.state_dict(state))
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_other_hyperparameters_load_with_a_warning_naming_them(tmp_path):
    _, params, _, path = _checkpoint(tmp_path)
    other = portopt.Adam(lr=0.02, betas=(0.8, 0.99))
    with pytest.warns(portopt.CheckpointWarning, match=r"betas=\[0\.9, 0\.999\] \(this rule: \[0\.8, 0\.99\]\), lr=0\.01 \(this rule: 0\.02\)"):
        other.load_state_dict(portopt.load(path), like=params)
    with pytest.raises(portopt.CheckpointError, match="other options"):
        portopt.Adam(amsgrad=True).load_state_dict(portopt.load(path), like=params)


# --- 5. rules are immutable -----------------------------------------------------------------------
def test_hyperparameters_cannot_be_changed_after_construction():
    rule = portopt.Adam(lr=0.1)
    with pytest.raises(AttributeError, match="immutable"):
        rule.lr = float("nan")
    with pytest.raises(AttributeError, match="immutable"):
        del rule.betas
    assert rule.lr == 0.1
    changed = portopt.Adam(**{**rule.hyperparameters(), "lr": 0.2})
    assert changed.lr == 0.2 and rule.lr == 0.1


# --- 6. the conformance suite cannot be fooled ----------------------------------------------------
FAKES = {
    "sqrt_one_ulp_high": "sqrt",
    "multiply_one_ulp_high": "x * y",
    "divide_one_ulp_high": "x / y",
    "flushes_subnormals": "x + y",
    "fused_multiply_add": "x * y + z",
}
SMALL = ["--rules", "Adam", "--variants", "defaults", "--dtypes", "float32", "--shapes", "prime", "--no-progress",
         "--jobs", "1"]


@pytest.mark.parametrize("fake", list(FAKES))
def test_a_backend_wrong_in_one_primitive_fails_with_that_primitive_named(fake, capsys):
    code = portopt_main(["conformance", "--namespace", f"fake_namespaces.{fake}", *SMALL])
    out = capsys.readouterr().out
    assert code == 1, out[-2000:]
    assert f"defect: fake_namespaces.{fake} [portopt] {FAKES[fake]} float32" in out
    assert f"MISMATCH fake_namespaces.{fake} Adam/defaults/float32/prime" in out


def test_a_namespace_that_changes_nothing_passes(capsys):
    code = portopt_main(["conformance", "--namespace", "fake_namespaces.exact", *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    assert "1 passed, 0 failed" in out and "defect:" not in out


def test_a_wrong_maximum_is_named_and_replaced_by_portopts_own(capsys):
    """maximum(-0, +0) wrong, as NumPy's is: reported as the backend's defect that portopt's
    namespace replaces (its maximum is built from comparisons and where), and the rules pass."""
    code = portopt_main(["conformance", "--namespace", "fake_namespaces.maximum_by_position", *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    assert "replaced: fake_namespaces.maximum_by_position's own maximum float32" in out


def test_a_module_whose_arrays_report_another_namespace_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "wrapped_numpy.py").write_text(
        "import numpy as np\nfrom numpy import *\n"
        "def sqrt(x):\n    return np.nextafter(np.sqrt(x), np.inf)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = portopt_main(["conformance", "--namespace", "wrapped_numpy", *SMALL])
    out = capsys.readouterr().out
    assert code == 2
    assert "would test array_api_compat.numpy, not wrapped_numpy" in out


@pytest.mark.parametrize("module", ["json", "no_such_module_here"])
def test_a_module_that_is_no_namespace_is_refused_with_what_is_missing(module, capsys):
    assert portopt_main(["conformance", "--namespace", module, *SMALL]) == 2
    out = capsys.readouterr().out
    assert "portopt conformance: --namespace" in out and "Traceback" not in out


def test_pydata_sparse_runs_through_update_and_reads_its_values_densely(capsys):
    pytest.importorskip("sparse")
    code = portopt_main(["conformance", "--namespace", "sparse", "--rules", "SGD", "--variants", "plain",
                         "--dtypes", "float64", "--shapes", "one", "--no-progress", "--jobs", "1",
                         "--skip-primitives"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    assert "1 passed, 0 failed" in out


def test_a_selection_that_matches_no_case_is_an_error_not_a_pass(capsys):
    assert portopt_main(["conformance", "--rules", "SGD", "--variants", "defaults", "--no-progress"]) == 2
    assert "no case matches" in capsys.readouterr().out


# --- 7. threads -----------------------------------------------------------------------------------
def test_fast_path_blocks_in_two_threads_do_not_change_each_others_mode():
    seen, barrier = {}, threading.Barrier(2)

    def use(mode):
        with portopt.fast_path(mode):
            barrier.wait()
            seen[mode] = portopt.get_fast_path()
            barrier.wait()

    threads = [threading.Thread(target=use, args=(mode,)) for mode in ("off", "blocked")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"off": "off", "blocked": "blocked"}
    assert portopt.get_fast_path() == "auto"


def test_two_threads_stepping_large_trees_give_the_bits_of_one_thread():
    """Large enough for the threaded compiled loop; one rule object shared by both threads."""
    rule = portopt.Adam(lr=0.01)
    trees = [{"w": np.random.default_rng(seed).standard_normal(200_000)} for seed in (1, 2)]
    grads = [{"w": np.random.default_rng(seed + 10).standard_normal(200_000)} for seed in (1, 2)]
    expected = []
    for tree, grad in zip(trees, grads):
        params, state = {"w": tree["w"].copy()}, rule.init(tree)
        for _ in range(5):
            rule.step(params, grad, state)
        expected.append(params["w"].tobytes())

    def run(index, out):
        params, state = {"w": trees[index]["w"].copy()}, rule.init(trees[index])
        for _ in range(5):
            rule.step(params, grads[index], state)
        out[index] = params["w"].tobytes()

    for _ in range(3):
        out: dict = {}
        threads = [threading.Thread(target=run, args=(i, out)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [out[0], out[1]] == expected


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_update_never_returns_two_outputs_over_one_buffer(mode):
    """ASGD's ax is its new p at first; with a masked-array gradient the kernel's results are two
    views of one buffer, not one object: update copies one, so a later step takes the state."""
    rule = portopt.ASGD()
    params = {"w": np.arange(3, dtype=np.float32)}
    grads = {"w": np.ma.masked_array(np.ones(3, np.float32), mask=[0, 1, 0])}
    with portopt.fast_path(mode):
        new_params, new_state = rule.update(params, grads, rule.init(params))
    outputs = [new_params["w"], *(tree["w"] for tree in new_state.slots.values())]
    assert not any(np.shares_memory(a, b) for k, a in enumerate(outputs) for b in outputs[k + 1:])
    rule.step(new_params, {"w": np.ones(3, np.float32)}, new_state)  # refused before as sharing memory
    assert new_state.step == 2


@pytest.mark.parametrize("api", ["update", "step"])
def test_torch_zero_tensor_gradients_step_as_zeros(api):
    """A ZeroTensor (torch's storage-less zeros, data_ptr() 0) is no address for a compiled loop:
    it takes the reference path (it crashed the compiled one), first step and repeated step alike."""
    torch = pytest.importorskip("torch")

    if not hasattr(torch, "_efficientzerotensor"):
        pytest.skip("this torch has no ZeroTensor")
    rule = portopt.Adam(lr=0.1)
    expected_rule = portopt.Adam(lr=0.1)
    params = {"w": torch.arange(1.0, 4.0)}
    expected = {"w": params["w"].clone()}
    state, expected_state = rule.init(params), expected_rule.init(expected)
    half = {"w": torch.full((3,), 0.5)}
    for grads, zeros in [(half, half), ({"w": torch._efficientzerotensor(3)}, {"w": torch.zeros(3)})] * 2:
        if api == "update":
            params, state = rule.update(params, grads, state)
        else:
            rule.step(params, grads, state)
        with portopt.fast_path("off"):
            expected, expected_state = expected_rule.update(expected, zeros, expected_state)
        assert params["w"].numpy().tobytes() == expected["w"].numpy().tobytes()
