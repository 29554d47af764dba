"""Certificates for a cluster: one CA, and a key and certificate per endpoint.

TLS between parties is mutual: every endpoint presents a certificate signed
by the cluster CA, and the other side checks its common name ("P0", "P1",
"P2" or "client"). Keys are EC P-256. Whoever holds the CA key can mint any
identity, so in a real deployment each party generates its own key and only
the CA's certificate (ca.pem) is shared; `make_cluster_certs` makes all of
them in one place, which suits tests and single-operator setups (then the
CA key is kept off the workers). `pysmpc certs DIR` is its command line.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pysmpc.parties.streams import CERT_FILES, CERT_NAMES, OWNER_CERT_PREFIX

__all__ = ["make_cluster_certs", "make_cert", "make_owner_cert", "owner_stem", "endpoint_files", "cert_host", "fingerprint", "LOOPBACK_NAMES",
           "VALID_DAYS"]

VALID_DAYS = 825  # the CA/Browser Forum's former limit for a leaf certificate: rotate at least this often
# Always in every certificate's subject alternative names, so one machine works as is.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pysmpc cluster"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _write(path: Path, data: bytes, mode: int) -> None:
    # A fresh file (O_EXCL, no symlink followed) gets exactly `mode`: an old
    # file's looser mode, or the umask, never carries over to a private key.
    if path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def _write_key(path: Path, key) -> None:
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)


def _write_cert(path: Path, cert) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def cert_host(entry: str) -> str:
    """The host of "host", "host:port", "[v6addr]:port" or a bare IPv6 address; ValueError if it is not one."""
    text = str(entry).strip()
    if text.startswith("["):
        host = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        host = text
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host) or ".." in host:
        raise ValueError(f"{entry!r} is neither an IP address nor a host name (letters, digits, '-' and '.')")
    return host.lower()


def endpoint_files(index: int) -> tuple[str, str, str]:
    """The files endpoint `index` (P0, P1, DEALER or CLIENT) needs in its TLS directory."""
    stem = CERT_FILES[index]
    return "ca.pem", f"{stem}.pem", f"{stem}.key"


def fingerprint(cert_path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as openssl prints it (AB:CD:...)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def make_cert(common_name: str, ca_key, ca_cert, key=None, hosts=LOOPBACK_NAMES, days: int = VALID_DAYS):
    """Issue a TLS client+server certificate for `common_name`; returns (key, cert)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = []
    for h in dict.fromkeys(hosts):  # each name once, in order
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def owner_stem(name: str) -> str:
    """The file stem of data owner `name`'s key and certificate: owner-NAME."""
    from pysmpc.runtime.rounds import check_owner_name

    return f"owner-{check_owner_name(name)}"


def make_owner_cert(directory, name: str, *, days: int = VALID_DAYS, overwrite: bool = False) -> Path:
    """Issue data owner `name` a certificate ("owner:NAME") with the CA in `directory`; return its .pem path.

    Writes owner-NAME.pem and owner-NAME.key next to ca.pem (the CA key
    ca.key must be there). The workers count an owner once per round by
    this name, so whoever holds the CA key decides who is an owner: keep it
    away from the aggregator (it could otherwise mint owners of its own).
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    directory = Path(directory)
    stem = owner_stem(name)
    ca_key_path, ca_cert_path = directory / "ca.key", directory / "ca.pem"
    if not ca_key_path.is_file() or not ca_cert_path.is_file():
        raise FileNotFoundError(f"{directory} lacks ca.pem or ca.key: make the cluster's CA first (pysmpc certs DIR)")
    if not overwrite and any((directory / f"{stem}.{ext}").exists() for ext in ("pem", "key")):
        raise FileExistsError(f"{directory} already holds {stem}.pem or {stem}.key (overwrite=True replaces them)")
    ca_key = load_pem_private_key(ca_key_path.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    key, cert = make_cert(OWNER_CERT_PREFIX + name, ca_key, ca_cert, days=days)
    _write_key(directory / f"{stem}.key", key)
    _write_cert(directory / f"{stem}.pem", cert)
    return directory / f"{stem}.pem"


def make_cluster_certs(directory, hosts=LOOPBACK_NAMES, *, party_hosts=None, days: int = VALID_DAYS,
                       overwrite: bool = False, owners=()) -> Path:
    """Write ca.pem/ca.key and p0, p1, p2, client .pem/.key into `directory`; return it.

    Every certificate names `hosts` in its subject alternative names, and
    endpoint i also `party_hosts[i]` (e.g. {P0: ["10.0.0.1"], ...}). The
    names are informative: peers are checked by common name, not host name.
    `owners` names data owners to certify too (make_owner_cert).
    Keys are written with mode 0600, certificates 0644, a new directory
    0700. Raises FileExistsError if any of these files exists, unless
    `overwrite` (certificates signed by the old CA stop working).
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive int, got {days!r}")
    party_hosts = {i: list(h) for i, h in (party_hosts or {}).items()}
    unknown = set(party_hosts) - set(CERT_FILES)
    if unknown:
        raise ValueError(f"party_hosts names unknown endpoints {sorted(unknown)}; known are {sorted(CERT_FILES)}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    names = ["ca.pem", "ca.key"] + [f"{stem}.{ext}" for stem in CERT_FILES.values() for ext in ("pem", "key")]
    existing = [n for n in names if (directory / n).exists() or (directory / n).is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)}: refusing to replace a cluster's CA and keys "
            "(every certificate the old CA signed would stop working). Choose another directory, or replace "
            "them all with --force (in Python: overwrite=True).")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("pysmpc cluster CA"))
        .issuer_name(_name("pysmpc cluster CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(directory / "ca.key", ca_key)
    _write_cert(directory / "ca.pem", ca_cert)
    for index, stem in CERT_FILES.items():
        key, cert = make_cert(CERT_NAMES[index], ca_key, ca_cert, days=days,
                              hosts=[*party_hosts.get(index, ()), *hosts])
        _write_key(directory / f"{stem}.key", key)
        _write_cert(directory / f"{stem}.pem", cert)
    for name in owners:
        make_owner_cert(directory, name, days=days, overwrite=True)
    return directory
