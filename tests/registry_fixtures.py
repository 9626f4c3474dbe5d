"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on a
free port with filesystem storage, optionally behind htpasswd basic auth, and skopeo to
push container images into it.

Register with ``pytest_plugins = ["registry_fixtures"]``; ``scripts/system-deps.sh``
installs ``docker-registry``, ``skopeo`` and ``apache2-utils`` (htpasswd's bcrypt).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgeplane.transport import free_port
from faults.procs import wait_until
from port_fixtures import hold_port


@dataclass
class RegistryProcess:
    """One ``docker-registry serve`` process; ``address`` is ``127.0.0.1:PORT``."""

    root: Path
    credentials: tuple[str, str] | None = None
    #: an ``auth:`` section of the registry's config written as is (token auth)
    auth_config: str = ""
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    #: the address kept while stopped (``stop(keep_address=True)``): bound, not listening
    held: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def blob_file(self, digest: str) -> Path:
        """Where filesystem storage keeps a blob's bytes (to tamper with in tests)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def start(self) -> RegistryProcess:
        executable = shutil.which("docker-registry")
        if executable is None:
            pytest.skip("docker-registry is not installed (scripts/system-deps.sh)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()  # started again: the same address
        auth = self.auth_config
        if self.credentials is not None:
            htpasswd = shutil.which("htpasswd")
            if htpasswd is None:
                pytest.skip("htpasswd is not installed (apache2-utils, scripts/system-deps.sh)")
            user, password = self.credentials
            line = subprocess.run(
                [htpasswd, "-nbB", user, password], check=True, capture_output=True, text=True
            ).stdout.strip()
            (self.root / "htpasswd").write_text(line + "\n")
            auth = (
                "auth:\n  htpasswd:\n    realm: edgeplane-test\n"
                f"    path: {self.root / 'htpasswd'}\n"
            )
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n  secret: {secrets.token_hex(16)}\n" + auth
        )
        log = (self.root / "registry.log").open("wb")
        self.release()
        self.process = subprocess.Popen(
            [executable, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    "docker-registry exited: " + (self.root / "registry.log").read_text()[-2000:]
                )
            try:
                return httpx.get(f"http://{self.address}/v2/", timeout=2).status_code in (200, 401)
            except httpx.TransportError:
                return False

        wait_until(answers, "docker-registry answering /v2/", timeout=30)
        return self

    def stop(self, *, keep_address: bool = False) -> None:
        """``keep_address``: hold its port until it starts again, so a registry that is
        down refuses connections, and no other test's server takes the address meanwhile
        (one did under xdist, and answered 404 for the image: ``artifact_not_found``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if keep_address and self.held is None:
            self.held = hold_port(self.port)

    def release(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None


@contextlib.contextmanager
def running_registry(
    root: Path, credentials: tuple[str, str] | None = None
) -> Iterator[RegistryProcess]:
    registry = RegistryProcess(root, credentials).start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def oci_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry of the test's own, no auth (loopback: plain HTTP)."""
    with running_registry(tmp_path / "registry") as registry:
        yield registry


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry behind basic auth: ``registry.credentials`` gets in."""
    with running_registry(tmp_path / "auth-registry", ("tester", secrets.token_hex(8))) as reg:
        yield reg


def skopeo_push(layout: Path, tag: str, registry: RegistryProcess, repo: str) -> None:
    """Copy the OCI layout's image ``tag`` to ``registry/repo:tag``, kept in OCI form."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (scripts/system-deps.sh)")
    command = [skopeo, "--insecure-policy", "copy", "--format", "oci", "--dest-tls-verify=false"]
    if registry.credentials is not None:
        command += ["--dest-creds", ":".join(registry.credentials)]
    command += [f"oci:{layout}:{tag}", f"docker://{registry.address}/{repo}:{tag}"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


# --- a registry behind a token service (the distribution spec's bearer flow) -----------

TOKEN_SERVICE = "edgeplane-test"
TOKEN_ISSUER = "edgeplane-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """A token service as distribution's ``auth: token`` expects: on
    ``GET /token?service=…&scope=…`` with the right basic credentials, an RS256 JWT
    granting the scopes asked for, signed by a key whose certificate (in the token's
    ``x5c``) is the registry's ``rootcertbundle``."""

    def __init__(self, root: Path, credentials: tuple[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.credentials = credentials
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeplane test tokens")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = root / "token-cert.pem"
        root.mkdir(parents=True, exist_ok=True)
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        #: every scope list a token was asked for (what the client requested)
        self.requests: list[list[str]] = []
        self.port = free_port()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": TOKEN_ISSUER, "sub": self.credentials[0], "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 60, "iat": now, "jti": secrets.token_hex(8),
            "access": access,
        }  # fmt: skip
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self
        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                if self.headers.get("authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                service.requests.append(scopes)
                body = json.dumps({"token": service.token(scopes)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def start(self) -> TokenService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[RegistryProcess, TokenService]]:
    """A registry that takes only bearer tokens from a token service that takes only
    ``service.credentials``."""
    root = tmp_path / "token-registry"
    service = TokenService(root, ("tester", secrets.token_hex(8))).start()
    auth = (
        f"auth:\n  token:\n    realm: {service.realm}\n    service: {TOKEN_SERVICE}\n"
        f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {service.cert_file}\n"
    )
    registry = RegistryProcess(root, auth_config=auth)
    try:
        registry.start()
        yield registry, service
    finally:
        registry.stop()
        service.stop()
