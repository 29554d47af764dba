"""The public API type-checks: mypy on the modules [tool.mypy] in pyproject.toml lists, and the stub of the extension."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_public_modules_type_check():
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install '.[test]'")
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode == 0 and not errors, done.stdout[-6000:] + done.stderr[-2000:]


def test_extension_stub_names_what_the_extension_has():
    from pysmpc.kernels import _ring

    stub = (REPO / "pysmpc" / "kernels" / "_ring.pyi").read_text()
    stubbed = {line.split("(")[0][4:] for line in stub.splitlines() if line.startswith("def ")}
    compiled = {name for name in dir(_ring) if not name.startswith("_") and callable(getattr(_ring, name))}
    assert stubbed == compiled, f"only in the stub: {stubbed - compiled}; only in the extension: {compiled - stubbed}"
