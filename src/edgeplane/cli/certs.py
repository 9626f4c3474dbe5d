"""``edgeplane certs init``: the CA and certificates TLS needs (``edgeplane.certs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Certificates for TLS (API and broker).")


@app.command("init")
def init(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", envvar="EDGEPLANE_DATA_DIR", help="State directory (~/.edgeplane)."
        ),
    ] = None,
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--hosts",
            help="Name or address the server certificate covers, repeatable or comma-separated "
            "(default: localhost, 127.0.0.1, ::1 and this machine's names).",
        ),
    ] = None,
) -> None:
    """Make a CA (kept if there) and server and client certificates in DATA_DIR/certs.

    Servers in that data dir then serve TLS when listening off loopback; give ca.pem to
    workers and clients (`--ca`, `EDGEPLANE_CA`).
    """
    from edgeplane.certs import default_hosts, init_certs

    names = [h for given in hosts or [] for h in given.split(",")] or default_hosts()
    paths = init_certs(data_dir or Path.home() / ".edgeplane", names)
    typer.echo(
        f"certificates in {paths.dir}\n"
        f"  CA:     {paths.ca}   (give it to workers and clients: --ca / EDGEPLANE_CA)\n"
        f"  server: {paths.server} + {paths.server_key.name}   (for {', '.join(names)})\n"
        f"  client: {paths.client} + {paths.client_key.name}\n"
        f"  keys are 0600; keep {paths.ca_key.name} private: it signs certificates"
    )
