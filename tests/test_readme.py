"""The README's Python code blocks run, each as a script in a fresh process, as a reader would paste them.

A block that cannot run alone (it waits for another process) is listed in
NOT_SELF_CONTAINED with the test that runs its code instead; every other
block runs, so a new block is tested without editing this file.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# First line of the block -> why it does not run here, and what runs its code.
NOT_SELF_CONTAINED = {
    "import pysmpc as sy": "serves until three clients query it: examples/serve.py, run by tests/test_examples.py",
    "cluster = sy.Cluster(sy.Worker(\"localhost:4000\", auto_managed=False),":
        "a client of a served model: examples/client.py, run by tests/test_examples.py",
}


def python_blocks() -> list[tuple[str, str]]:
    """(section heading, code) of each ```python block, in order."""
    blocks, heading = [], "top"
    for match in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```$", README.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.append((heading, match.group(2)))
    return blocks


BLOCKS = python_blocks()


def test_readme_has_blocks_and_the_exceptions_are_current():
    first_lines = {code.splitlines()[0] for _, code in BLOCKS}
    assert len(BLOCKS) >= 4, BLOCKS
    stale = set(NOT_SELF_CONTAINED) - first_lines
    assert not stale, f"NOT_SELF_CONTAINED names blocks the README no longer has: {stale}"


@pytest.mark.parametrize("heading, code", BLOCKS, ids=[f"{i}-{h}" for i, (h, _) in enumerate(BLOCKS)])
def test_readme_block_runs(heading, code, tmp_path):
    first = code.splitlines()[0]
    if first in NOT_SELF_CONTAINED:
        pytest.skip(NOT_SELF_CONTAINED[first])
    for module in re.findall(r"^import (\w+)", code, re.M):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the block under {heading!r} needs {module}, which is not installed")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README block under {heading!r} failed:\n{code}\n{done.stdout}\n{done.stderr[-4000:]}"
    # A block's trailing '# value' comment on a print line is what it prints: check those that are literal values.
    printed = iter(done.stdout.splitlines())
    for line in code.splitlines():
        if line.lstrip().startswith("print(") and "#" in line:
            shown, expected = next(printed, ""), line.split("#", 1)[1].strip()
            if re.fullmatch(r"[\[\]\d.,() A-Z-]+", expected):
                assert shown == expected, f"under {heading!r}: {line!r} printed {shown!r}"


def test_readme_lists_every_supported_layer_and_op():
    """The README's table of supported layers and ops names what the importers read, no less."""
    from pysmpc.models._keras import ACTIVATIONS, SUPPORTED
    from pysmpc.models.onnx_import import SUPPORTED_OPS

    text = README.read_text()
    section = text[text.index("## Supported layers and ops"):]
    section = section[:section.index("\n## ", 1)]
    listed = set(re.findall(r"`(\w+)`", section))
    assert set(SUPPORTED) <= listed, set(SUPPORTED) - listed
    assert set(SUPPORTED_OPS) <= listed, set(SUPPORTED_OPS) - listed
    table_activations = re.search(r"`activation=` ([^;|]*)", section).group(1)
    assert all(a in table_activations for a in ACTIVATIONS), table_activations
