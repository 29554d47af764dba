#!/usr/bin/env python3
"""atheris harness: the frame decoder and hello parsing on arbitrary bytes.

    python tests/fuzz/fuzz_frames.py -max_total_time=60

Any exception other than ChannelError (or a subclass) is a finding, and so
is a decoded payload made of anything but arrays of whitelisted dtypes,
bytes, lists, tuples and None. See README.md.
"""

from __future__ import annotations

import atheris
from _harness import BytesStream, never_idle, run, use_working_copy

use_working_copy()
with atheris.instrument_imports(include=["pysmpc"]):
    import numpy as np

    from pysmpc.parties.channel import ChannelError
    from pysmpc.parties.frames import HELLO_TAG, read_frame, write_frame
    from pysmpc.parties.party import P0
    from pysmpc.parties.socket import _hello_peer, _parse_hello

MAX_FRAME = 1 << 20


def check_payload(payload) -> None:
    if isinstance(payload, np.ndarray):
        assert payload.dtype.kind in "biuf", payload.dtype
    elif isinstance(payload, (list, tuple)):
        for p in payload:
            check_payload(p)
    else:
        assert payload is None or isinstance(payload, bytes), type(payload)


def test_one_input(data: bytes) -> None:
    # The first byte picks how many bytes each read returns (short reads exercise the loop).
    chunk = 1 + (data[0] if data else 0) * 97
    stream = BytesStream(data[1:], chunk)
    try:
        header, payload = read_frame(stream, MAX_FRAME, never_idle)
        check_payload(payload)
        if header["tag"] == HELLO_TAG:
            _hello_peer(_parse_hello(header, payload), P0)
    except ChannelError as exc:
        assert str(exc)


def seeds() -> list[bytes]:
    def frame(tag, seq, payload):
        out = BytesStream(b"", 1)
        write_frame(out, tag, seq, "session-1", payload, never_idle)
        return b"\x05" + bytes(out.sent)

    hello = b'{"party":1,"session":"session-1","version":1}'
    return [
        frame(HELLO_TAG, 0, hello),
        frame(HELLO_TAG, 0, b'{"party":3,"session":"q","query":{"shape":[1,28,28,1],"reveal":"logits"}}'),
        frame("mul", 3, [np.arange(6, dtype=np.uint64).reshape(2, 3), np.zeros(2, np.uint64)]),
        frame("ctl:call", 1, [b'{"dict":[["op","add"]]}', np.ones((2, 2), np.float64), b"x"]),
        frame("t", 2, (np.zeros((0, 3), np.int32), np.array(True), [None, b""])),
        frame("t", 2, None),
    ]


if __name__ == "__main__":
    run(test_one_input, seeds(), "frames")
