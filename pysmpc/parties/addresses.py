"""Party addresses: "host:port" lists, loopback, and the cleartext guard.

Off loopback the parties must talk over TLS; `check_cleartext` refuses
otherwise unless cleartext is forced, and then warns loudly.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import warnings

__all__ = ["CleartextError", "CleartextWarning", "check_cleartext", "is_loopback", "parse_hosts"]

log = logging.getLogger("pysmpc.socket")


class CleartextWarning(UserWarning):
    """Parties talk over a non-loopback network without TLS (forced with allow_cleartext)."""


class CleartextError(ValueError):
    """A connection off loopback would go without TLS, and cleartext was not forced."""


def parse_hosts(hosts) -> list[tuple[str, int]]:
    """Parse "h0:p0,h1:p1,h2:p2" (or a sequence of "host:port") into three (host, port)."""
    if isinstance(hosts, str):
        hosts = [h for h in hosts.split(",") if h.strip()]
    out = []
    for entry in hosts:
        if isinstance(entry, (tuple, list)):
            host, port = entry
        else:
            host, sep, port = str(entry).strip().rpartition(":")
            if not sep or not host:
                raise ValueError(f"host {entry!r} is not of the form host:port")
            host = host.strip("[]")  # "[::1]:4000"
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"host {entry!r} has a bad port") from None
        if not 0 <= port < 65536:
            raise ValueError(f"host {entry!r}: port out of range")
        out.append((host, port))
    if len(out) != 3:
        raise ValueError(f"need exactly three hosts (P0, P1, P2), got {len(out)}: {hosts!r}")
    return out


def is_loopback(host: str) -> bool:
    """True if every address `host` resolves to is a loopback address."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addrs = {info[4][0].split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def _fmt_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_cleartext(hosts: list[tuple[str, int]], tls, who: str, *, allow_cleartext: bool = False) -> bool:
    """Refuse cleartext off loopback unless forced; when forced, warn loudly. True if traffic is exposed.

    `tls` is the TLS configuration (or its directory); None means cleartext.
    Without TLS, shares, PRG seeds and dealer corrections cross the network
    readable and forgeable by anyone on the path: an eavesdropper who sees
    both input shares, or the seeds P2 shares with P0 and P1, learns the
    secrets, which breaks the one-corruption assumption without corrupting
    any party. Loopback stays open without TLS (tests, demos, one machine).
    """
    if tls is not None:
        return False
    exposed = [f"{h}:{p}" for h, p in hosts if not is_loopback(h)]
    if not exposed:
        return False
    if not allow_cleartext:
        raise CleartextError(
            f"{who}: refusing to connect without TLS: {', '.join(exposed)} "
            f"{'is' if len(exposed) == 1 else 'are'} not loopback, so shares, PRG seeds and dealer material "
            "would cross the network unencrypted and unauthenticated. Make certificates with "
            f"`pysmpc certs DIR --hosts {','.join(_fmt_host(h, p) for h, p in hosts)}`, copy them to the machines "
            "(the command says which file goes where) and pass tls_dir=DIR (--tls-dir DIR); or, on a network "
            "you trust with the secrets, force cleartext with allow_cleartext=True (--allow-cleartext).")
    msg = (f"{who}: TRAFFIC IS IN THE CLEAR (forced with allow_cleartext). Hosts {', '.join(exposed)} are not "
           "loopback and no TLS directory is configured: shares, seeds and dealer material cross the network "
           "unencrypted and unauthenticated. Make certificates with `pysmpc certs` and pass tls_dir / --tls-dir.")
    log.warning(msg)
    warnings.warn(msg, CleartextWarning, stacklevel=3)
    return True
