"""``edgeplane artifact …``: wasm modules and images in OCI registries (docs/artifacts.md).

``push`` prints the digest on its last stdout line (scripts do ``| tail -1``); progress
goes to stderr, and only on a terminal. Credentials come from ``--username`` with
``--password-stdin`` (as ``docker login``), else ``EDGEPLANE_REGISTRY_USERNAME`` /
``EDGEPLANE_REGISTRY_PASSWORD``, else the registry config file; they are never printed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from edgeplane.cli.output import (
    Format,
    OutputOption,
    echo,
    error,
    note,
    print_fields,
    print_json,
    print_table,
    session,
)
from edgeplane.errors import Invalid

if TYPE_CHECKING:
    from edgeplane.artifacts.reference import Reference
    from edgeplane.artifacts.registry import Descriptor, Manifest, Registry
    from edgeplane.artifacts.registry_config import RegistryConfig

T = TypeVar("T")
USAGE = 2
USERNAME_ENV = "EDGEPLANE_REGISTRY_USERNAME"
PASSWORD_ENV = "EDGEPLANE_REGISTRY_PASSWORD"
#: Tags whose manifests ``list`` resolves at once.
LIST_CONCURRENCY = 8

app = typer.Typer(
    help="Artifacts in OCI registries: push wasm modules, list tags, inspect manifests.",
    no_args_is_help=True,
)

RefArgument = Annotated[
    str, typer.Argument(metavar="REF", help="oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]")
]
UsernameOption = Annotated[
    str | None, typer.Option("--username", "-u", help=f"Registry user (or ${USERNAME_ENV}).")
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help=f"Read the registry password from stdin (or ${PASSWORD_ENV})."
    ),
]
RegistriesOption = Annotated[
    Path | None,
    typer.Option(
        "--registries",
        envvar="EDGEPLANE_REGISTRIES",
        help="Registry config file (default: DATA_DIR/registries.yaml if there).",
        show_default=False,
    ),
]
InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure", help="Plain HTTP to this registry (loopback registries always are)."
    ),
]


def _settings(
    target: Reference, registries: Path | None, username: str | None, password_stdin: bool,
    insecure: bool,
) -> RegistryConfig:  # fmt: skip
    from edgeplane.artifacts import registry_config
    from edgeplane.artifacts.registry_config import Credentials

    config = registry_config.load(registries or registry_config.default_file())
    username = username or os.environ.get(USERNAME_ENV) or None
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise Invalid("no password on stdin", field="--password-stdin")
    elif PASSWORD_ENV in os.environ:
        password = os.environ[PASSWORD_ENV]
    if password is not None and not username:
        raise Invalid("a password needs --username (or $" + USERNAME_ENV + ")", field="username")
    if username and password is None:
        raise Invalid(f"--username needs --password-stdin (or ${PASSWORD_ENV})", field="password")
    if username and password is not None:
        config = config.with_credentials(
            target.registry, Credentials(username=username, password=password)
        )
    if insecure:
        config = config.with_credentials(
            target.registry,
            config.credentials(target.registry).model_copy(update={"insecure": True}),
        )
    return config


def _run(config: RegistryConfig, work: Callable[[Registry], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a client; a registry's refusal is bad input (exit code 2)."""
    from edgeplane.artifacts.registry import Registry
    from edgeplane.artifacts.registry_errors import RegistryDenied

    async def main() -> T:
        async with Registry(config) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except RegistryDenied as exc:
        error(f"{exc.detail} (check --username / --password-stdin or the registry config)")
        raise typer.Exit(USAGE) from None


def _parse(text: str) -> Reference:
    from edgeplane.artifacts import reference

    return reference.parse(text, field="REF")


@app.command()
def push(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The wasm module.", show_default=False)
    ],
    target: RefArgument,
    username: UsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    registries: RegistriesOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Push a wasm module as an OCI artifact; print its digest (the last line).

    The tag defaults to `latest`. Tasks then name it `oci://…:TAG` or `oci://…@DIGEST`.
    """
    ref = _parse(target)
    if ref.digest:
        raise Invalid("push to a tag, not a digest", field="REF")
    if not file.is_file():
        raise Invalid(f"no such file: {file}", field="FILE")
    with file.open("rb") as head:
        magic = head.read(4)
    if magic != b"\0asm":
        raise Invalid(f"{file} is not a wasm module (no \\0asm header)", field="FILE")
    config = _settings(ref, registries, username, password_stdin, insecure)
    size = file.stat().st_size
    with _PushProgress(f"pushing {file.name}", size) as advance:
        pushed = _run(config, lambda client: client.push_wasm(ref, file, progress=advance))
    note(
        f"pushed {file.name} ({size} bytes) to {pushed.reference.repo_only()}:{ref.tag or 'latest'}"
    )
    echo(pushed.digest)


@app.command()
def pull(
    source: RefArgument,
    out: Annotated[Path, typer.Option("--output-file", "-o", help="Where to write the module.")],
    username: UsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    registries: RegistriesOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Fetch a wasm module, verified against its digest; print the manifest digest."""
    ref = _parse(source)
    config = _settings(ref, registries, username, password_stdin, insecure)
    manifest = _run(config, lambda client: client.pull_wasm(ref, out))
    note(f"wrote {out}")
    echo(manifest.digest)


@app.command("list")
def list_tags(
    ctx: typer.Context,
    repository: RefArgument,
    username: UsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    registries: RegistriesOption = None,
    insecure: InsecureOption = False,
    output: OutputOption = None,
) -> None:
    """The repository's tags with digest, size and media type."""
    ref = _parse(repository)
    config = _settings(ref, registries, username, password_stdin, insecure)

    async def work(client: Registry) -> list[tuple[str, Descriptor]]:
        tags = await client.tags(ref)
        gate = asyncio.Semaphore(LIST_CONCURRENCY)

        async def one(tag: str) -> tuple[str, Descriptor]:
            async with gate:
                return tag, await client.resolve(ref.with_tag(tag))

        return list(await asyncio.gather(*(one(tag) for tag in sorted(tags))))

    found = _run(config, work)
    rows = [
        {"tag": tag, "digest": d.digest, "size": d.size, "media_type": d.media_type}
        for tag, d in found
    ]
    if session(ctx).format(output) is Format.json:
        print_json(rows)
        return
    print_table(("tag", "digest", "size", "media type"), [list(r.values()) for r in rows])


@app.command()
def inspect(
    ctx: typer.Context,
    source: RefArgument,
    username: UsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    registries: RegistriesOption = None,
    insecure: InsecureOption = False,
    output: OutputOption = None,
) -> None:
    """A manifest: digest, size, media type, artifact type, and its layers (or, for an
    index, the manifest of each platform)."""
    ref = _parse(source)
    config = _settings(ref, registries, username, password_stdin, insecure)
    manifest = _run(config, lambda client: client.manifest(ref))
    data = _manifest_json(manifest)
    if session(ctx).format(output) is Format.json:
        print_json(data)
        return
    print_fields([(k, v) for k, v in data.items() if k not in ("layers", "manifests")])
    parts = manifest.manifests if manifest.is_index else manifest.layers
    title = "platform" if manifest.is_index else "title"
    print_table(
        ("media type", "size", "digest", title),
        [
            (
                p.media_type,
                p.size,
                p.digest,
                _platform(p.platform)
                if manifest.is_index
                else p.annotations.get("org.opencontainers.image.title", ""),
            )
            for p in parts
        ],
    )


def _manifest_json(manifest: Manifest) -> dict[str, Any]:
    def part(d: Descriptor) -> dict[str, Any]:
        data: dict[str, Any] = {"media_type": d.media_type, "digest": d.digest, "size": d.size}
        if d.platform:
            data["platform"] = dict(d.platform)
        if d.annotations:
            data["annotations"] = dict(d.annotations)
        return data

    data: dict[str, Any] = {
        "reference": str(manifest.reference),
        "digest": manifest.digest,
        "size": manifest.size,
        "media_type": manifest.media_type,
        "artifact_type": manifest.artifact_type,
        "total_size": manifest.size
        + sum(d.size for d in manifest.layers)
        + (manifest.config.size if manifest.config else 0),
    }
    if manifest.is_index:
        data["manifests"] = [part(d) for d in manifest.manifests]
    else:
        data["config"] = part(manifest.config) if manifest.config else None
        data["layers"] = [part(d) for d in manifest.layers]
    return data


def _platform(platform: Any) -> str:
    if not isinstance(platform, dict):
        return ""
    return "/".join(str(platform[k]) for k in ("os", "architecture", "variant") if k in platform)


class _PushProgress:
    """A rich progress bar on stderr for a push, only on a terminal; yields the callback
    that advances it (a no-op off a terminal)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return lambda _n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self._bar = Progress(
            "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        self._bar.start()
        task = self._bar.add_task(self.what, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
