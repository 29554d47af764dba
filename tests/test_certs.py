"""Cluster certificates: `pysmpc certs` (runtime/certs.py), its files, and a TLS cluster that uses them."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import re
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pysmpc as sy
from pysmpc.cli import main
from pysmpc.parties.addresses import CleartextError
from pysmpc.runtime.certs import cert_host, fingerprint, make_cluster_certs
from pysmpc.runtime.cluster import ClusterError

HOSTS = "10.0.0.1:4000,p1.example.org:4001,[fd00::3]:4002"
FILES = ["ca.pem", "ca.key", "p0.pem", "p0.key", "p1.pem", "p1.key", "p2.pem", "p2.key", "client.pem", "client.key"]


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _alt_names(cert) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def cli_certs(tmp_path_factory):
    """`pysmpc certs DIR --hosts ... --san ...`, run once: (directory, stdout)."""
    directory = tmp_path_factory.mktemp("cli") / "certs"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["certs", str(directory), "--hosts", HOSTS, "--san", "owner.example.org", "--days", "30"])
    assert code == 0, out.getvalue()
    return directory, out.getvalue()


def test_cli_writes_a_ca_and_one_key_and_certificate_per_endpoint(cli_certs):
    directory, out = cli_certs
    assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
    for name in FILES:
        expected = 0o600 if name.endswith(".key") else 0o644
        assert _mode(directory / name) == expected, f"{name}: mode {oct(_mode(directory / name))}"
    assert _mode(directory) == 0o700
    ca = _cert(directory / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for stem, cn in (("p0", "P0"), ("p1", "P1"), ("p2", "P2"), ("client", "client")):
        cert = _cert(directory / f"{stem}.pem")
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=30, minutes=10)
        key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_cli_puts_each_partys_host_into_its_certificate(cli_certs):
    directory, _ = cli_certs
    loopback = {"localhost", "127.0.0.1", "::1"}
    own = {"p0": "10.0.0.1", "p1": "p1.example.org", "p2": "fd00::3", "client": None}
    for stem, host in own.items():
        names = set(_alt_names(_cert(directory / f"{stem}.pem")))
        expected = loopback | {"owner.example.org"} | ({host} if host else set())
        assert names == expected, f"{stem}: {sorted(names)}"
    san = _cert(directory / "p2.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("fd00::3") in san.get_values_for_type(x509.IPAddress)


def test_cli_says_which_file_goes_to_which_machine(cli_certs):
    directory, out = cli_certs
    lines = out.splitlines()

    def files_after(role):
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(role))
        return lines[index + 1].split()

    assert files_after("P0 at 10.0.0.1") == [str(directory / f) for f in ("ca.pem", "p0.pem", "p0.key")]
    assert files_after("P1 at p1.example.org") == [str(directory / f) for f in ("ca.pem", "p1.pem", "p1.key")]
    assert files_after("P2 (the dealer) at fd00::3") == [str(directory / f) for f in ("ca.pem", "p2.pem", "p2.key")]
    assert files_after("the model owner") == [str(directory / f) for f in ("ca.pem", "client.pem", "client.key")]
    assert f"Keep {directory / 'ca.key'} off the workers" in out
    assert f"CA fingerprint (SHA-256): {fingerprint(directory / 'ca.pem')}" in out
    assert f"pysmpc worker --party N --hosts {HOSTS} --tls-dir DIR" in out
    handed_out = files_after("P0") + files_after("P1") + files_after("P2") + files_after("the model")
    assert not any("ca.key" in f for f in handed_out)


def test_cli_refuses_to_overwrite_a_ca_unless_forced(tmp_path, capsys):
    directory = tmp_path / "certs"
    assert main(["certs", str(directory)]) == 0
    before = {name: (directory / name).read_bytes() for name in FILES}
    (directory / "p0.key").chmod(0o644)  # a key left readable by mistake
    capsys.readouterr()
    assert main(["certs", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "pysmpc certs: error:" in err and "already holds ca.pem, ca.key" in err and "--force" in err
    assert {name: (directory / name).read_bytes() for name in FILES} == before
    assert main(["certs", str(directory), "--force"]) == 0
    assert (directory / "ca.pem").read_bytes() != before["ca.pem"]
    assert _mode(directory / "p0.key") == 0o600  # rewritten with the right mode, not the old file's
    with pytest.raises(FileExistsError, match="already holds"):
        make_cluster_certs(directory)


@pytest.mark.parametrize("args, message", [
    (["--hosts", "a,b"], r"--hosts needs three hosts \(P0, P1, P2\), got 2"),
    (["--hosts", "a,b c,d"], r"'b c' is neither an IP address nor a host name"),
    (["--hosts", "a:99999,b,c"], r"port out of range"),
    (["--san", "bad_name!"], r"'bad_name!' is neither"),
])
def test_cli_errors_are_clear_and_write_nothing(tmp_path, capsys, args, message):
    assert main(["certs", str(tmp_path / "certs"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pysmpc certs: error: ") and re.search(message, err), err
    assert not (tmp_path / "certs").exists()


def test_cli_days_are_checked_as_the_arguments_are_parsed(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["certs", str(tmp_path / "certs"), "--days", "0"])
    assert exit_.value.code == 2
    assert "pysmpc certs: error: argument --days: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "certs").exists()


def test_cert_host_takes_the_forms_of_hosts():
    assert cert_host("Example.ORG:4000") == "example.org"
    assert cert_host("[fd00::1]:4000") == "fd00::1"
    assert cert_host("fd00:0::1") == "fd00::1"
    assert cert_host("10.0.0.1") == "10.0.0.1"
    for bad in ("", "a b", "-a", "a..b", "[fd00::1", "é.example"):
        with pytest.raises(ValueError):
            cert_host(bad)


@pytest.mark.tcp
def test_a_tls_cluster_serves_a_client_with_certificates_from_the_cli(tmp_path, capsys, monkeypatch):
    from test_secure_graph import seed_cnn

    monkeypatch.chdir(tmp_path)  # relative directories, as on the command line (workers run elsewhere)
    directory = Path("certs")
    assert main(["certs", str(directory)]) == 0
    client_dir = Path("client-machine")  # what the summary says a client gets, and nothing else
    client_dir.mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (client_dir / name).write_bytes((directory / name).read_bytes())
    model = sy.Model(seed_cnn(np.random.default_rng(0)))
    image = np.random.default_rng(1).uniform(0, 1, (28, 28, 1))
    with sy.TcpCluster(tls_dir=directory, ephemeral_ports=True, timeout=20) as cluster:
        model.share(cluster)
        hosts = [f"localhost:{p}" for p in cluster.ports]
        results = {}

        def client():
            try:
                plain = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts))
                with pytest.raises(ClusterError, match=r"cannot reach P0"):  # TLS workers: cleartext goes nowhere
                    plain.submit_query(image[None], timeout=5)
                tls = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts), tls_dir=client_dir)
                results["label"] = tls.submit_query(image[None], reveal="argmax", timeout=30)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                results["error"] = exc

        thread = threading.Thread(target=client)
        thread.start()
        served = model.serve(num_requests=1, idle_timeout=30)
        thread.join(30)
        model.stop_sharing()
    assert "error" not in results, results.get("error")
    assert served == 1
    assert results["label"].tolist() == [int(model.predict(image[None])[0].argmax())]


def test_clusters_off_loopback_point_to_pysmpc_certs():
    with pytest.raises(CleartextError, match=r"pysmpc certs DIR --hosts 10.0.0.1:4000,10.0.0.2:4000,10.0.0.3:4000"):
        sy.Cluster(*(sy.Worker(f"10.0.0.{i}:4000", auto_managed=False) for i in (1, 2, 3)))
