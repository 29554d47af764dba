"""Fault injection for the fault tests: make a party's outgoing protocol frames late, or cut a connection.

A worker started with `--fault SPEC` (for instance through
`TcpCluster(worker_args={1: ("--fault", "delay:relu:0.5")})`) wraps its
channel with `inject_fault`, so a test can slow a party down or drop one
of its connections at a chosen point of a protocol, in a real worker
process. SPEC is one of

    delay:TAG:SECONDS   hold each frame whose tag starts with TAG for SECONDS before sending it
    drop:TAG            instead of sending the first frame whose tag starts with TAG,
                        close the connection it would go on (the peer sees it drop)

Only protocol traffic (`Channel.send`, hence `exchange`) is affected;
control messages and query answers are not.
"""

from __future__ import annotations

import threading
import time

from pysmpc.parties.channel import Channel

__all__ = ["inject_fault", "parse_fault"]


def parse_fault(spec: str) -> tuple[str, str, float]:
    """Split a fault SPEC into (kind, tag prefix, seconds); ValueError names what is wrong."""
    kind, _, rest = spec.partition(":")
    if kind == "delay":
        tag, sep, seconds = rest.rpartition(":")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if not sep or not value >= 0:
            raise ValueError(f"fault {spec!r}: expected delay:TAG:SECONDS with SECONDS >= 0")
        return kind, tag, value
    if kind == "drop":
        return kind, rest, 0.0
    raise ValueError(f"fault {spec!r}: the kind must be 'delay' or 'drop'")


def inject_fault(channel: Channel, spec: str) -> None:
    """Wrap `channel`'s transport so that its protocol sends suffer the fault `spec` (module docstring)."""
    kind, prefix, seconds = parse_fault(spec)
    send = channel._send_raw
    dropped = threading.Event()

    def faulty_send(to, tag, data):
        if tag.startswith(prefix):
            if kind == "delay":
                time.sleep(seconds)
            elif not dropped.is_set():
                dropped.set()
                channel.disconnect(to)
                # Fail the way a real cut fails: this party cannot send either.
        send(to, tag, data)

    channel._send_raw = faulty_send
