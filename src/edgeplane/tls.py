"""TLS for whatever crosses a network: which CA a client trusts, what a server serves, and
the rule "nothing anonymous off loopback".

A client (worker, manager's uplink, CLI, Python client) verifies the server against the
first of: ``--ca`` / ``EDGEPLANE_CA``, ``<data-dir>/certs/ca.pem`` when ``edgeplane certs
init`` made one there, the system's trust store. A server (API, embedded broker) serves
``--tls-cert``/``--tls-key``, or the certificates ``certs init`` made in its data dir when
it listens off loopback; see docs/tls.md.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from edgeplane.errors import Invalid

CA_ENV = "EDGEPLANE_CA"
CERTS_DIR = "certs"


@dataclass(frozen=True)
class CertPaths:
    """Where ``certs init`` writes, under ``<data-dir>/certs``."""

    dir: Path

    @classmethod
    def of(cls, data_dir: Path) -> CertPaths:
        return cls(data_dir / CERTS_DIR)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def server_ready(self) -> bool:
        return self.ca.is_file() and self.server.is_file() and self.server_key.is_file()


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def trusted_ca(ca: Path | None, data_dir: Path | None) -> Path | None:
    """The CA file a client verifies servers with (None: the system's trust store)."""
    if ca is not None:
        return ca
    if env := os.environ.get(CA_ENV):
        return Path(env)
    if data_dir is not None and (found := CertPaths.of(data_dir).ca).is_file():
        return found
    return None


def client_context(ca: Path | None) -> ssl.SSLContext:
    """A context that verifies the server's certificate and name against ``ca``."""
    try:
        return ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise Invalid(f"cannot load the CA file {ca}: {exc}", field="ca") from None


@dataclass(frozen=True)
class ServerTls:
    """What a server presents: its certificate chain and key."""

    cert: Path
    key: Path


def server_tls(
    data_dir: Path,
    cert: Path | None,
    key: Path | None,
    *,
    hosts: tuple[str, ...],
) -> ServerTls | None:
    """``--tls-cert``/``--tls-key``, or the data dir's certificates when one of ``hosts``
    (where the API and the embedded broker listen) is off loopback, else None (plain)."""
    if (cert is None) != (key is None):
        raise Invalid("give --tls-cert and --tls-key together", field="tls_cert")
    if cert is not None and key is not None:
        for path, name in ((cert, "tls_cert"), (key, "tls_key")):
            if not path.is_file():
                raise Invalid(f"no such file: {path}", field=name)
        return ServerTls(cert, key)
    made = CertPaths.of(data_dir)
    if made.server_ready() and not all(is_loopback(h) for h in hosts):
        return ServerTls(made.server, made.server_key)
    return None


def refuse_plain_off_loopback(what: str, host: str, tls: ServerTls | None, insecure: bool) -> None:
    """Nothing anonymous off loopback: a server reachable from the network without TLS
    starts only when the operator said ``--insecure``."""
    if tls is None and not insecure and not is_loopback(host):
        raise Invalid(
            f"the {what} would listen on {host} without TLS: run `edgeplane certs init` "
            "(or give --tls-cert/--tls-key), or pass --insecure to serve it in the clear",
            field="insecure",
        )
