"""``edgeplane artifact push|pull|list|inspect`` against a real registry: the digest on
push's last line, credentials from flags, stdin, env and the config file, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from edgeplane.cli.main import app
from edgeplane.cli.output import Session
from edgeplane.examples import write_examples
from registry_fixtures import RegistryProcess, skopeo_push

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "EDGEPLANE_REGISTRIES",
        "EDGEPLANE_REGISTRY_USERNAME",
        "EDGEPLANE_REGISTRY_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def examples(tmp_path: Path) -> dict[str, Path]:
    return write_examples(tmp_path / "examples")


def cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["artifact", *args], obj=Session(), input=stdin)


def test_push_prints_the_digest_last_then_list_inspect_pull(
    oci_registry: RegistryProcess, examples: dict[str, Path], tmp_path: Path
) -> None:
    base = f"oci://{oci_registry.address}/demo/add"
    pushed = cli("push", str(examples["add.wasm"]), f"{base}:1")
    assert pushed.exit_code == 0, pushed.stderr
    digest = pushed.stdout.splitlines()[-1]
    assert digest.startswith("sha256:") and len(digest) == 71

    listed = cli("list", "--output", "json", base)
    assert listed.exit_code == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["tag"] == "1" and row["digest"] == digest
    assert row["media_type"] == "application/vnd.oci.image.manifest.v1+json"

    inspected = cli("inspect", "--output", "json", f"{base}@{digest}")
    assert inspected.exit_code == 0, inspected.stderr
    data = json.loads(inspected.stdout)
    assert data["digest"] == digest
    assert data["artifact_type"] == "application/vnd.wasm.config.v1+json"
    assert [layer["media_type"] for layer in data["layers"]] == [
        "application/vnd.wasm.content.layer.v1+wasm"
    ]
    assert data["layers"][0]["size"] == examples["add.wasm"].stat().st_size
    table = cli("inspect", f"{base}:1")
    assert table.exit_code == 0 and "add.wasm" in table.stdout

    for source in (f"{base}:1", f"{base}@{digest}"):
        out = tmp_path / "pulled.wasm"
        pulled = cli("pull", source, "-o", str(out))
        assert pulled.exit_code == 0, pulled.stderr
        assert pulled.stdout.splitlines()[-1] == digest
        assert out.read_bytes() == examples["add.wasm"].read_bytes()
        out.unlink()


def test_bad_input_is_exit_code_2_without_a_traceback(
    oci_registry: RegistryProcess, examples: dict[str, Path], tmp_path: Path
) -> None:
    base = f"oci://{oci_registry.address}"
    cases = [
        ("push", str(examples["add.wasm"]), f"{base}/Demo/add:1"),  # uppercase repository
        ("push", str(examples["add.wasm"]), f"{base}/demo/add@sha256:{'0' * 64}"),
        ("push", str(tmp_path / "missing.wasm"), f"{base}/demo/add:1"),
        ("inspect", f"{base}/demo/add:nope"),  # artifact_not_found
        ("inspect", "http://example.com/demo/add:1"),
    ]
    not_wasm = tmp_path / "text.wasm"
    not_wasm.write_text("hello")
    cases.append(("push", str(not_wasm), f"{base}/demo/add:1"))
    for args in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith("error:")
    result = cli("inspect", f"{base}/demo/add:nope")
    assert "demo/add:nope" in result.stderr


def test_credentials_from_stdin_env_and_file(
    auth_registry: RegistryProcess,
    examples: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert auth_registry.credentials is not None
    user, password = auth_registry.credentials
    target = f"oci://{auth_registry.address}/private/add:1"
    module = str(examples["add.wasm"])

    refused = cli("push", module, target)
    assert refused.exit_code == 2
    assert "username" in refused.stderr

    wrong = cli("push", module, target, "--username", user, "--password-stdin", stdin="bad\n")
    assert wrong.exit_code == 2 and "bad" not in wrong.stderr

    ok = cli("push", module, target, "--username", user, "--password-stdin", stdin=password + "\n")
    assert ok.exit_code == 0, ok.stderr
    assert password not in ok.stdout + ok.stderr

    monkeypatch.setenv("EDGEPLANE_REGISTRY_USERNAME", user)
    monkeypatch.setenv("EDGEPLANE_REGISTRY_PASSWORD", password)
    assert cli("inspect", target).exit_code == 0
    monkeypatch.delenv("EDGEPLANE_REGISTRY_USERNAME")
    monkeypatch.delenv("EDGEPLANE_REGISTRY_PASSWORD")

    # DATA_DIR/registries.yaml is read when no file is named; a password_file works.
    secret = tmp_path / "secret"
    secret.write_text(password + "\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "registries.yaml").write_text(
        f"registries:\n  {auth_registry.address}:\n"
        f"    username: {user}\n    password_file: {secret}\n"
    )
    listed = cli("list", f"oci://{auth_registry.address}/private/add")
    assert listed.exit_code == 0, listed.stderr
    assert ok.stdout.splitlines()[-1] in listed.stdout


def test_registry_down_is_exit_code_3(examples: dict[str, Path]) -> None:
    from edgeplane.transport import free_port

    result = cli("push", str(examples["add.wasm"]), f"oci://127.0.0.1:{free_port()}/demo/add:1")
    assert result.exit_code == 3
    assert "unreachable" in result.stderr


def test_list_and_inspect_read_a_skopeo_pushed_image(
    oci_registry: RegistryProcess, tmp_path: Path
) -> None:
    from edgeplane.errors import Unavailable
    from edgeplane.runtimes.busybox import busybox_image, find_busybox

    try:
        find_busybox()
    except Unavailable as exc:
        pytest.skip(exc.detail)
    digest = busybox_image(tmp_path / "layout", tag="1.36")
    skopeo_push(tmp_path / "layout", "1.36", oci_registry, "library/busybox")
    base = f"oci://{oci_registry.address}/library/busybox"

    listed = cli("list", "--output", "json", base)
    assert listed.exit_code == 0, listed.stderr
    assert [(r["tag"], r["digest"]) for r in json.loads(listed.stdout)] == [("1.36", digest)]
    inspected = cli("inspect", "--output", "json", f"{base}:1.36")
    assert inspected.exit_code == 0, inspected.stderr
    data = json.loads(inspected.stdout)
    assert data["digest"] == digest
    assert data["artifact_type"] == "application/vnd.oci.image.config.v1+json"
    assert [layer["media_type"] for layer in data["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]
    # It is an image, not a wasm module: pull says so instead of writing a layer.
    pulled = cli("pull", f"{base}:1.36", "-o", str(tmp_path / "x.wasm"))
    assert pulled.exit_code == 2 and "wasm" in pulled.stderr
    assert not (tmp_path / "x.wasm").exists()
