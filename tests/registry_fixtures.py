"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on a
free port with filesystem storage, optionally behind htpasswd basic auth, and skopeo to
push container images into it.

Register with ``pytest_plugins = ["registry_fixtures"]``; ``scripts/system-deps.sh``
installs ``docker-registry``, ``skopeo`` and ``apache2-utils`` (htpasswd's bcrypt).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgeplane.transport import free_port
from faults.procs import wait_until


@dataclass
class RegistryProcess:
    """One ``docker-registry serve`` process; ``address`` is ``127.0.0.1:PORT``."""

    root: Path
    credentials: tuple[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

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
        self.port = free_port()
        auth = ""
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

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
