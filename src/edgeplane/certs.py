"""``edgeplane certs init``: a private CA and the certificates the API and broker serve.

Layout in ``<data-dir>/certs`` (directory 0700, keys 0600, certificates 0644):
``ca.pem``/``ca.key`` (the CA workers and clients are given with ``--ca``),
``server.pem``/``server.key`` (the API's HTTPS and the broker's MQTTS, for every name in
``--hosts``) and ``client.pem``/``client.key`` (for a client a broker asks a certificate
of). Running it again keeps the CA, so what already trusts it keeps working, and issues
the server and client certificates anew (new hosts, say).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeplane.errors import Invalid
from edgeplane.tls import CertPaths

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity clients such as Apple's accept for a server cert
# Ten minutes back: a machine whose clock is a little behind still accepts a fresh cert.
BACKDATE = datetime.timedelta(minutes=10)


def default_hosts() -> list[str]:
    """Names a server cert covers when ``--hosts`` is not given: this machine and loopback."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(name for name in names if name))


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts):
        if not host or "/" in host or " " in host:
            raise Invalid(f"not a host name or address: {host!r}", field="hosts")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise Invalid("give at least one host name or address", field="hosts")
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with ``mode``: a key is never readable by
    others, not even for the moment between creating and chmod-ing it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)  # the umask may have taken bits off a certificate's 0644
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeplane"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(
    paths: CertPaths, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA already there, or a new one."""
    if paths.ca.is_file() and paths.ca_key.is_file():
        cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise Invalid(f"{paths.ca_key} is not the key certs init made", field="data_dir")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("edgeplane CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths.ca_key, _key_pem(key), 0o600)
    _write(paths.ca, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None,
    now: datetime.datetime,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def init_certs(
    data_dir: Path, hosts: Sequence[str], now: datetime.datetime | None = None
) -> CertPaths:
    """Make (or keep) the CA and issue server and client certificates under ``data_dir``."""
    names = _names(hosts)
    now = now or datetime.datetime.now(datetime.UTC)
    paths = CertPaths.of(data_dir)
    paths.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    ca, ca_key = _ca(paths, now)
    server, server_key = _leaf(
        ca, ca_key, "edgeplane server", ExtendedKeyUsageOID.SERVER_AUTH, names, now
    )
    client, client_key = _leaf(
        ca, ca_key, "edgeplane client", ExtendedKeyUsageOID.CLIENT_AUTH, None, now
    )
    _write(paths.server_key, server_key, 0o600)
    _write(paths.server, server, 0o644)
    _write(paths.client_key, client_key, 0o600)
    _write(paths.client, client, 0o644)
    return paths
