"""Checkpoints: bit-exact resume across backends, atomic writes, refusal of bad files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import portopt
from conftest import MISSING, TARGETS
from helpers import VARIANTS, make_rule, random_arrays, same_bits, variant_id
from portopt.checkpoint import CheckpointError

PAIRS = [("numpy", "torch-cpu"), ("torch-cpu", "array_api_strict"), ("array_api_strict", "numpy")]


def _pair_params(pair):
    marks = []
    for name in pair:
        if name in MISSING:
            marks.append(pytest.mark.skip(reason=f"{name} not available: {MISSING[name]}"))
    return pytest.param(pair, marks=marks, id=f"{pair[0]}-to-{pair[1]}")


def _host_tree(seed):
    a, b = random_arrays(seed, (4, 3), "float32", 2)
    return {"w": a, "layers": [b[0], np.array(seed, dtype=np.float32)]}


def _on(target, tree):
    return portopt.tree_map(lambda x: target.asarray(np.asarray(x)), tree)


@pytest.mark.parametrize("pair", [_pair_params(p) for p in PAIRS])
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_resume_on_another_backend_is_bit_exact(variant, pair, tmp_path):
    first, second = TARGETS[pair[0]], TARGETS[pair[1]]
    rule = make_rule(variant)
    grads = [_host_tree(100 + k) for k in range(12)]
    straight = _on(first, _host_tree(1))
    straight_state = rule.init(straight)
    for g in grads:
        straight, straight_state = rule.update(straight, _on(first, g), straight_state)
    resumed = _on(first, _host_tree(1))
    state = rule.init(resumed)
    for g in grads[:7]:
        resumed, state = rule.update(resumed, _on(first, g), state)
    portopt.save(tmp_path / "ckpt.npz", rule.state_dict(state))
    moved = portopt.tree_map(lambda x: second.asarray(first.to_numpy(x)), resumed)
    state = rule.load_state_dict(portopt.load(tmp_path / "ckpt.npz"), like=moved)
    assert state.step == 7
    for g in grads[7:]:
        rule.step(moved, _on(second, g), state)
    for a, b in zip(portopt.flatten(straight)[0], portopt.flatten(moved)[0]):
        assert same_bits(first.to_numpy(a), second.to_numpy(b))
    for name in rule.slot_names():
        for a, b in zip(portopt.flatten(straight_state.slots[name])[0], portopt.flatten(state.slots[name])[0]):
            assert same_bits(first.to_numpy(a), second.to_numpy(b))


def _saved(tmp_path, rule=None):
    rule = rule or portopt.Adam(lr=0.1)
    params = _host_tree(1)
    state = rule.init(params)
    rule.step(params, _host_tree(2), state)
    path = tmp_path / "ckpt.npz"
    portopt.save(path, rule.state_dict(state))
    return rule, params, state, path


def _rewrite_entry(path, entry, transform):
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents[entry] = transform(contents[entry])
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def test_round_trip_keeps_everything(tmp_path):
    rule, params, state, path = _saved(tmp_path)
    loaded = rule.load_state_dict(portopt.load(path), like=params)
    assert loaded.step == state.step == 1 and loaded.skipped == 0
    for name in rule.slot_names():
        for a, b in zip(portopt.flatten(loaded.slots[name])[0], portopt.flatten(state.slots[name])[0]):
            assert same_bits(a, b)


def test_truncated_file_is_refused(tmp_path):
    _, _, _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable portopt checkpoint"):
        portopt.load(path)


def test_edited_array_is_refused(tmp_path):
    _, _, _, path = _saved(tmp_path)
    # Change one element's bytes but keep the zip's own CRC consistent: only our digest can tell.
    def flip(data):
        data = bytearray(data)
        data[-1] ^= 0x01
        return bytes(data)

    _rewrite_entry(path, "exp_avg/0.npy", flip)
    with pytest.raises(CheckpointError, match=r"array exp_avg/0 does not match its SHA-256"):
        portopt.load(path)


def test_edited_manifest_is_refused(tmp_path):
    _, _, _, path = _saved(tmp_path)

    def bump_step(data):
        return data.replace(b'"step": 1', b'"step": 9')

    _rewrite_entry(path, "manifest.npy", bump_step)
    with pytest.raises(CheckpointError, match="manifest does not match its SHA-256"):
        portopt.load(path)


def test_checkpoint_of_another_rule_or_tree_loads_nothing(tmp_path):
    _, params, _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="is a Adam state, not AdaGrad"):
        portopt.AdaGrad().load_state_dict(portopt.load(path), like=params)
    with pytest.raises(CheckpointError, match="slots .* this Adam needs"):
        portopt.Adam(amsgrad=True).load_state_dict(portopt.load(path), like=params)
    with pytest.raises(CheckpointError, match="tree .* differs from like's"):
        portopt.Adam().load_state_dict(portopt.load(path), like={"w": params["w"]})
    wrong_shape = {"w": np.zeros((3, 4), np.float32), "layers": params["layers"]}
    with pytest.raises(CheckpointError, match=r"slot 'exp_avg'\['w'\] is float32\(4, 3\), like\['w'\] needs float32\(3, 4\)"):
        portopt.Adam().load_state_dict(portopt.load(path), like=wrong_shape)
    wrong_dtype = portopt.tree_map(lambda x: np.asarray(x, np.float64), params)
    with pytest.raises(CheckpointError, match="needs float64"):
        portopt.Adam().load_state_dict(portopt.load(path), like=wrong_dtype)


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, manifest=np.array([{"format": "portopt-state/1"}], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable portopt checkpoint"):
        portopt.load(path)


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    rule, params, state, path = _saved(tmp_path)
    before = path.read_bytes()
    rule.step(params, _host_tree(3), state)

    def crash(handle, **arrays):
        handle.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        portopt.save(path, rule.state_dict(state))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"], "a temporary file was left behind"


def test_state_dict_is_plain_numpy_and_python(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rule = portopt.RMSProp(momentum=0.5, centered=True)
    params = [torch.ones(3, dtype=torch.float16)]
    state = rule.init(params)
    rule.step(params, [torch.ones(3, dtype=torch.float16)], state)
    data = rule.state_dict(state)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for leaves in data["slots"].values() for a in leaves)
    json.dumps({k: v for k, v in data.items() if k != "slots"})  # everything else is JSON-able


def test_skip_nonfinite_skips_and_counts(numpy_target):
    rule = portopt.AdamW(lr=0.1, skip_nonfinite=True)
    params = [np.ones(3), np.ones(2)]
    state = rule.init(params)
    rule.step(params, [np.ones(3), np.ones(2)], state)
    snapshot = [p.copy() for p in params], {k: [x.copy() for x in v] for k, v in state.slots.items()}
    for bad in (np.nan, np.inf, -np.inf):
        rule.step(params, [np.ones(3), np.array([1.0, bad])], state)  # the last leaf is bad
        new_params, new_state = rule.update(params, [np.ones(3), np.array([bad, 1.0])], state)
        assert new_state.skipped == state.skipped + 1 and new_state.step == 1
        assert all(same_bits(a, b) for a, b in zip(new_params, snapshot[0]))
    assert state.step == 1 and state.skipped == 3
    assert all(same_bits(a, b) for a, b in zip(params, snapshot[0]))
    for name, leaves in state.slots.items():
        assert all(same_bits(a, b) for a, b in zip(leaves, snapshot[1][name]))


def test_without_skip_nonfinite_nan_propagates_as_in_torch(numpy_target):
    rule = portopt.Adam()
    params = np.ones(2)
    state = rule.init(params)
    rule.step(params, np.array([np.nan, 1.0]), state)
    assert np.isnan(params[0]) and np.isfinite(params[1]) and state.step == 1


def test_drop_in_skips_the_whole_step_on_nonfinite_gradients():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import portopt.torch as pt

    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = pt.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, skip_nonfinite=True)
    a.grad, b.grad = torch.ones(2), torch.tensor([1.0, float("inf")])
    optimizer.step()
    assert optimizer.skipped_steps == 1 and torch.equal(a.detach(), torch.ones(2)) and not optimizer.state
    b.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.state[a]["step"] == 1 and not torch.equal(a.detach(), torch.ones(2))
