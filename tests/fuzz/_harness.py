"""Shared start-up of the atheris harnesses in this directory (not a test module).

Each harness imports pysmpc from this working copy (not an installed
copy), instruments it for coverage, seeds its corpus with valid inputs and
hands over to libFuzzer.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def use_working_copy() -> None:
    """Put this checkout first on sys.path, so `import pysmpc` fuzzes the code being edited."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def run(test_one_input, seeds: list[bytes], name: str) -> None:
    """Fuzz `test_one_input` with libFuzzer; the corpus starts from `seeds`.

    Without a corpus directory on the command line, the corpus lives in
    $TMPDIR/pysmpc-fuzz/<name> and grows across runs.
    """
    import atheris

    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = Path(tempfile.gettempdir()) / "pysmpc-fuzz" / name
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (corpus / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
        args.append(str(corpus))
        print(f"corpus: {corpus}", file=sys.stderr)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


# -- an in-memory stream -------------------------------------------------------------------
class BytesStream:
    """What read_frame/write_frame need from a stream, over a bytes object.

    Delivers at most `chunk` bytes per read (short reads exercise the read
    loop) and 0 at the end, like a closed socket.
    """

    def __init__(self, data: bytes = b"", chunk: int = 1 << 16):
        self.data = memoryview(bytes(data))
        self.pos = 0
        self.chunk = chunk
        self.sent = bytearray()

    def recv_into(self, view: memoryview) -> int:
        n = min(len(view), self.chunk, len(self.data) - self.pos)
        view[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def send_views(self, views, idle, on_block=None) -> None:
        for v in views:
            self.sent += bytes(v)


def never_idle():
    raise AssertionError("an in-memory stream never times out: read_frame must not wait")
