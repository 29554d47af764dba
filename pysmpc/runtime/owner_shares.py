"""What a worker shares between its books of data owners' shares: FL rounds (runtime.rounds) and training data
(runtime.datasets).

* `computing_book`: a party's book, kept in its store; P2 has none (it
  holds no share of an owner's data).
* `take_owner_shares`: one owner's connection over TCP: read its request
  from the hello, tell it the rules, receive its shares into the book,
  then tell it whether they count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pysmpc.parties.channel import ChannelError
from pysmpc.parties.party import CLIENT, P0, P1, Party
from pysmpc.parties.socket import SocketChannel, reply_hello

__all__ = ["computing_book", "take_owner_shares", "tell_owner"]

log = logging.getLogger("pysmpc.worker")


def computing_book(party: Party, key: str, make: Callable[[int], object]):
    """The party's book under `key` (P0, P1), made by `make(party.index)` on first use; None on P2."""
    if party.index not in (P0, P1):
        return None
    book = party.store.get(key)
    if book is None:
        book = party.store[key] = make(party.index)
    return book


def take_owner_shares(index: int, hello: dict, stream, timeout: float, *, request_key: str, tag: str,
                      admit: Callable[[object], tuple], receive: Callable[[SocketChannel], str]) -> None:
    """Serve one data owner's connection: the rules, its shares, then "<tag>:ok" or "<tag>:error" and why.

    `admit(hello[request_key])` reads the owner's request: it returns (what, rules,
    max_recv_bytes), `what` naming owner and round or dataset for the log,
    or raises ValueError, which the owner hears in the hello reply.
    `receive(channel)` reads the shares and hands them to the book; it
    returns what to log, or raises ValueError (the owner is told why). An
    owner that leaves early is not counted. The shares never pass through
    the client driving the session.
    """
    session = str(hello.get("session"))[:64]
    try:
        what, rules, max_recv_bytes = admit(hello.get(request_key))
    except ValueError as exc:
        reply_hello(stream, index, session, error=str(exc))
        log.warning("refused a data owner's shares: %s", exc)
        return
    channel = SocketChannel(index, timeout, session=session, max_recv_bytes=max_recv_bytes)
    try:
        reply_hello(stream, index, session, extra={"rules": rules})
        channel.attach(CLIENT, stream)
        done = receive(channel)
    except ChannelError as exc:
        log.info("%s: the owner left before its shares arrived (%s): not counted", what, exc)
        channel.close()
        return
    except ValueError as exc:
        log.warning("%s: refused the owner's shares: %s", what, exc)
        tell_owner(channel, f"{tag}:error", str(exc))
        return
    log.info("%s: %s", what, done)
    tell_owner(channel, f"{tag}:ok", "")


def tell_owner(channel: SocketChannel, tag: str, text: str) -> None:
    """Tell the owner `tag` and `text` (at most 2000 bytes) and hang up; an owner already gone is fine."""
    try:
        channel.send_control(CLIENT, tag, text.encode()[:2000])
    except ChannelError:
        pass
    channel.close()
