"""The documentation stays true to the code: the data-format page matches the one the package
ships, every state slot a rule can have is named there, nothing points outside the repository,
and the table generators name the pages they fill."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import portopt
from helpers import ALL_VARIANTS, make_rule

ROOT = Path(__file__).resolve().parent.parent
FORMAT = ROOT / "portopt" / "conformance" / "FORMAT.md"
COPY_NOTE = re.compile(r"^\*This page is a copy of `portopt/conformance/FORMAT.md`.*\*\n\n", re.M)


def test_the_format_page_is_the_packaged_format():
    page = (ROOT / "docs" / "format.md").read_text()
    assert COPY_NOTE.search(page), "docs/format.md lost the note saying where it comes from"
    assert COPY_NOTE.sub("", page) == FORMAT.read_text(), (
        "docs/format.md and portopt/conformance/FORMAT.md differ: copy one onto the other")


def test_every_state_slot_is_named_in_the_format():
    text = FORMAT.read_text()
    slots = {slot for variant in ALL_VARIANTS for slot in getattr(make_rule(variant), "rule", make_rule(variant)).slot_names()}
    missing = sorted(slot for slot in slots if f"`{slot}`" not in text)
    assert not missing, f"FORMAT.md does not name the state slots {missing}"


def _tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in names.splitlines():
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".yml", ".cfg", ".txt"} or path.name == "run":
            yield path


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|\bNUMERICS\.md|\bDESIGN\.md|\b[Ii]ssue \d+\b")  # the docs' numerics.md is ours
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in _tracked_text_files() if path.exists()
                 for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if outside.search(line) and path.name != "test_docs.py"]
    assert not offenders, f"references outside the repository: {offenders}"


@pytest.mark.parametrize("source, page", [
    ("portopt/conformance/cli.py", "docs/conformance.md"),
    ("portopt/conformance/peers.py", "docs/conformance.md"),
    ("benchmarks/__main__.py", "docs/performance.md"),
    ("benchmarks/distributed.py", "docs/performance.md"),
])
def test_table_generators_name_the_page_that_holds_their_table(source, page):
    text = (ROOT / source).read_text()
    named = set(re.findall(r"--readme ([\w./-]+)", text))
    assert named == {page}, f"{source} says it regenerates {named}, the table lives in {page}"
    assert (ROOT / page).exists()


def test_version_is_in_the_changelog():
    assert f"## {portopt.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_the_minimize_page_examples_run_and_say_what_they_print():
    pytest.importorskip("scipy")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "minimize.md").read_text(), re.S)
    namespace: dict = {}
    exec(blocks[0], namespace)  # the minimize example
    result = namespace["result"]
    assert (repr(result.x), result.nit, result.success) == ("array([1., 2.])", 353, True)  # as its comment says
    exec(blocks[1], namespace)  # the scipy_method example, with the same fun
    assert namespace["result"].success and namespace["result"].x[0] == 0.5
