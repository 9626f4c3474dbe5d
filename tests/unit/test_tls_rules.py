"""`certs init` (files, modes, names, a kept CA) and the TLS rules of edgeplane.tls: when a
server serves TLS, which CA a client trusts, nothing plain off loopback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from edgeplane.cli.main import app
from edgeplane.errors import Invalid
from edgeplane.tls import (
    CertPaths,
    ServerTls,
    is_loopback,
    refuse_plain_off_loopback,
    server_tls,
    trusted_ca,
)
from edgeplane.transport import parse_broker_url
from edgeplane.transport.broker import mosquitto_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certs_init(data_dir: Path, *hosts: str) -> tuple[int, str]:
    args = ["certs", "init", "--data-dir", str(data_dir)]
    for host in hosts:
        args += ["--hosts", host]
    done = CliRunner().invoke(app, args)
    return done.exit_code, done.output


def test_certs_init_writes_keys_0600_in_a_0700_dir_and_says_where(tmp_path: Path) -> None:
    code, output = certs_init(tmp_path, "edge.example,10.0.0.5", "127.0.0.1")
    assert code == 0, output
    paths = CertPaths.of(tmp_path)
    assert mode(paths.dir) == 0o700
    for key in (paths.ca_key, paths.server_key, paths.client_key):
        assert mode(key) == 0o600, key
    for cert in (paths.ca, paths.server, paths.client):
        assert mode(cert) == 0o644, cert
        assert str(cert) in output
    assert sorted(p.name for p in paths.dir.iterdir()) == [
        "ca.key", "ca.pem", "client.key", "client.pem", "server.key", "server.pem",
    ]  # fmt: skip
    server = x509.load_pem_x509_certificate(paths.server.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["edge.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.5",
        "127.0.0.1",
    ]


def test_certs_init_again_keeps_the_ca_and_issues_new_certificates(tmp_path: Path) -> None:
    assert certs_init(tmp_path, "127.0.0.1")[0] == 0
    paths = CertPaths.of(tmp_path)
    ca, server = paths.ca.read_bytes(), paths.server.read_bytes()
    assert certs_init(tmp_path, "127.0.0.1,edge.example")[0] == 0
    assert paths.ca.read_bytes() == ca
    assert paths.server.read_bytes() != server
    issued = x509.load_pem_x509_certificate(paths.server.read_bytes())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


@pytest.mark.parametrize("bad", ["a b", "", "x/y"])
def test_certs_init_rejects_a_bad_host_with_exit_code_2(tmp_path: Path, bad: str) -> None:
    code, output = certs_init(tmp_path, bad)
    assert code == 2
    assert "hosts" in output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("edge.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_server_serves_the_data_dirs_certs_only_off_loopback(tmp_path: Path) -> None:
    assert server_tls(tmp_path, None, None, hosts=("0.0.0.0",)) is None  # none made yet
    certs_init(tmp_path, "127.0.0.1")
    paths = CertPaths.of(tmp_path)
    assert server_tls(tmp_path, None, None, hosts=("127.0.0.1", "localhost")) is None
    made = ServerTls(paths.server, paths.server_key)
    assert server_tls(tmp_path, None, None, hosts=("127.0.0.1", "0.0.0.0")) == made


def test_given_cert_and_key_win_and_go_together(tmp_path: Path) -> None:
    certs_init(tmp_path, "127.0.0.1")
    paths = CertPaths.of(tmp_path)
    given = server_tls(tmp_path / "x", paths.server, paths.server_key, hosts=("127.0.0.1",))
    assert given == ServerTls(paths.server, paths.server_key)
    with pytest.raises(Invalid, match="together"):
        server_tls(tmp_path, paths.server, None, hosts=("127.0.0.1",))
    with pytest.raises(Invalid) as missing:
        server_tls(tmp_path, tmp_path / "nope.pem", paths.server_key, hosts=("127.0.0.1",))
    assert missing.value.field == "tls_cert"


def test_nothing_plain_off_loopback_unless_insecure(tmp_path: Path) -> None:
    tls = ServerTls(tmp_path / "c", tmp_path / "k")
    with pytest.raises(Invalid, match="--insecure") as refused:
        refuse_plain_off_loopback("API", "0.0.0.0", None, insecure=False)
    assert refused.value.field == "insecure"
    refuse_plain_off_loopback("API", "0.0.0.0", None, insecure=True)
    refuse_plain_off_loopback("API", "0.0.0.0", tls, insecure=False)
    refuse_plain_off_loopback("API", "127.0.0.1", None, insecure=False)


def test_a_client_trusts_the_flag_then_env_then_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPLANE_CA", raising=False)
    assert trusted_ca(None, tmp_path) is None  # the system's trust store
    certs_init(tmp_path, "127.0.0.1")
    assert trusted_ca(None, tmp_path) == tmp_path / "certs" / "ca.pem"
    monkeypatch.setenv("EDGEPLANE_CA", "/env/ca.pem")
    assert trusted_ca(None, tmp_path) == Path("/env/ca.pem")
    assert trusted_ca(Path("/flag/ca.pem"), tmp_path) == Path("/flag/ca.pem")


def test_mqtts_urls_mean_tls_on_8883_by_default() -> None:
    assert parse_broker_url("mqtts://edge.example").port == 8883
    assert parse_broker_url("mqtts://edge.example").tls
    assert parse_broker_url("mqtts://edge.example:1884").port == 1884
    assert not parse_broker_url("mqtt://edge.example").tls


def test_the_mosquitto_listener_gets_the_certificate_only_with_tls(tmp_path: Path) -> None:
    plain = mosquitto_config(1883)
    assert "listener 1883 127.0.0.1" in plain and "certfile" not in plain
    served = ServerTls(tmp_path / "s.pem", tmp_path / "s.key")
    tls = mosquitto_config(8883, host="0.0.0.0", tls=served)
    lines = tls.splitlines()
    at = lines.index("listener 8883 0.0.0.0")
    assert lines[at + 1 : at + 3] == [
        f"certfile {tmp_path / 's.pem'}",
        f"keyfile {tmp_path / 's.key'}",
    ]
