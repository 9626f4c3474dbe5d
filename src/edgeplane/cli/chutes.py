"""``edgeplane chute …``: chutes on one node, through its Edge API (docs/chutes.md).

``--node URL`` is the node's ``edgeplane worker --api`` address; the node token comes from
``--node-token``, ``$EDGEPLANE_NODE_TOKEN``, else the worker's token file
(``--token-file``, default ``~/.edgeplane/worker/edge-api-token``: the CLI on the node
itself needs nothing more). Every mutating command prints the change id; ``--wait``
follows the change's steps live until it ends (exit 1 when it failed or rolled back).
With ``--worker ID`` instead, the same calls go through the control plane
(``/api/v1/workers/{id}/chutes…``, with the CLI's usual ``--url`` and token): the manager
passes them to the worker over MQTT.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeplane.cli.output import (
    Format,
    OutputOption,
    Session,
    echo,
    note,
    print_fields,
    print_json,
    print_table,
    session,
    when,
)
from edgeplane.errors import Invalid, TaskFailure, Unavailable

app = typer.Typer(no_args_is_help=True, help="Chutes on a node (docs/chutes.md).")

TOKEN_ENV = "EDGEPLANE_NODE_TOKEN"

NodeOption = Annotated[
    str | None,
    typer.Option("--node", envvar="EDGEPLANE_NODE", help="The node's Edge API, http://HOST:PORT."),
]
WorkerOption = Annotated[
    str | None, typer.Option("--worker", help="Through the control plane: the worker's id.")
]
NodeTokenOption = Annotated[
    str | None, typer.Option("--node-token", envvar=TOKEN_ENV, help="The node's API token.")
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option("--token-file", help="File holding the node token (the worker's edge-api-token)."),
]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the change until it ends.")]


class _Node:
    def __init__(
        self,
        cli: Session,
        node: str | None,
        worker: str | None,
        token: str | None,
        token_file: Path | None,
    ) -> None:
        import httpx

        #: through the control plane (``--worker``), not the node's own API
        self.worker = worker
        if worker is not None:
            if node:
                raise Invalid("give --node URL or --worker ID, not both", field="worker")
            self._through_control_plane(cli, worker)
            return
        if not node:
            raise Invalid("give the node's Edge API with --node http://HOST:PORT", field="node")
        if token is None:
            path = token_file or Path.home() / ".edgeplane" / "worker" / "edge-api-token"
            try:
                token = path.read_text().strip()
            except OSError:
                raise Invalid(f"no node token: give --node-token or ${TOKEN_ENV} "
                              f"(cannot read {path})", field="node-token") from None  # fmt: skip
        base = node.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def _through_control_plane(self, cli: Session, worker: str) -> None:
        import httpx

        from edgeplane.client import resolve_endpoint, split_urls
        from edgeplane.protocol.topics import check_segment

        check_segment(worker, "worker", "a worker id")
        url, token = resolve_endpoint(cli.url, cli.token)
        base = f"{split_urls(url)[0]}/api/v1/workers/{worker}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {self.http.base_url}: {exc}") from None
        if answer.status_code >= 400:
            from edgeplane.client import problem
            from edgeplane.wire import Reply

            raise problem(Reply.of(answer))  # the error the node or manager raised
        if answer.headers.get("content-type", "").startswith("application/json"):
            return answer.json()
        return answer.text

    def follow(self, change_id: str) -> dict[str, Any]:
        """The change's steps, live from its SSE stream, until it ends; its last view."""
        from rich.console import Console

        console = Console(stderr=True, highlight=False)
        last: dict[str, Any] = {}
        shown: dict[str, str] = {}
        marks = {"done": "[green]✓[/]", "running": "[yellow]…[/]", "failed": "[red]✗[/]",
                 "undone": "[magenta]↶[/]", "pending": " "}  # fmt: skip
        with self.http.stream("GET", f"/changes/{change_id}/stream", timeout=None) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                last = json.loads(line.removeprefix("data: "))
                for step in last.get("steps", []):
                    if shown.get(step["name"]) != step["state"] and step["state"] != "pending":
                        shown[step["name"]] = step["state"]
                        console.print(
                            f"{marks.get(step['state'], '?')} {step['name']} ({step['state']})"
                        )
        return last

    def changed(self, answer: Any, wait: bool) -> None:
        change_id = str(answer["change_id"])
        if not wait:
            echo(change_id)
            return
        last = self.follow(change_id)
        state = last.get("state")
        note(f"change {change_id}: {state}")
        if state != "done":
            raise TaskFailure(str(last.get("error") or f"the change ended {state}"))


def _open(
    ctx: typer.Context,
    node: str | None,
    worker: str | None,
    token: str | None,
    token_file: Path | None,
) -> _Node:
    found = _Node(session(ctx), node, worker, token, token_file)
    ctx.call_on_close(found.http.close)  # its connection, when the command ends
    return found


def _manifest(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror or exc}", field="file") from None
    kind = "application/json" if path.suffix == ".json" else "application/yaml"
    return data, kind


SourceArgument = Annotated[
    str,
    typer.Argument(
        metavar="FILE|NAME[@VERSION]",
        help="chute.yaml (or .json), or a chute in the store (with --worker; NAME: its latest).",
    ),
]


def _body(source: str, worker: str | None) -> tuple[str, dict[str, Any]]:
    """The chute's name and the request's body for a manifest file or, when no such
    file exists, a reference to the chute store (docs/chutes.md)."""
    from edgeplane.chutes.catalog import parse_ref
    from edgeplane.chutes.manifest import load

    path = Path(source)
    if path.exists():
        data, kind = _manifest(path)
        name = load(data, source).name  # bad input is exit 2 before any request
        return name, {"content": data, "headers": {"content-type": kind}}
    try:
        ref = parse_ref(source, field="file")
    except Invalid:
        raise Invalid(
            f"{source}: no such file, and not a store reference NAME[@VERSION]", field="file"
        ) from None
    if worker is None:
        raise Invalid(
            f"{source}: a chute from the store is installed through the control plane: "
            "give --worker ID (or a manifest file)",
            field="worker",
        )
    return ref.name, {"json": {"store": str(ref)}}


@app.command()
def install(
    ctx: typer.Context,
    source: SourceArgument,
    node: NodeOption = None,
    worker: WorkerOption = None,
    node_token: NodeTokenOption = None,
    token_file: TokenFileOption = None,
    wait: WaitOption = False,
) -> None:
    """Install a chute from its manifest, or from the chute store (NAME@VERSION)."""
    client = _open(ctx, node, worker, node_token, token_file)
    _, body = _body(source, worker)
    client.changed(client.call("POST", "/chutes", **body), wait)


@app.command()
def update(
    ctx: typer.Context,
    source: SourceArgument,
    node: NodeOption = None,
    worker: WorkerOption = None,
    node_token: NodeTokenOption = None,
    token_file: TokenFileOption = None,
    wait: WaitOption = False,
) -> None:
    """Update a chute: the new version replaces the old only once healthy."""
    client = _open(ctx, node, worker, node_token, token_file)
    name, body = _body(source, worker)
    client.changed(client.call("PUT", f"/chutes/{name}", **body), wait)


@app.command("list")
def listing(
    ctx: typer.Context,
    node: NodeOption = None,
    worker: WorkerOption = None,
    node_token: NodeTokenOption = None,
    token_file: TokenFileOption = None,
    output: OutputOption = None,
) -> None:
    """The node's chutes."""
    found = _open(ctx, node, worker, node_token, token_file).call("GET", "/chutes")
    if session(ctx).format(output) == Format.json:
        print_json(found)
        return
    if found:
        _stale_note(found[0], worker)
    print_table(
        ["name", "version", "state", "services"],
        [[c["name"], c["version"], c["state"], [s["name"] for s in c["services"]]] for c in found],
    )


@app.command()
def get(
    ctx: typer.Context,
    name: str,
    node: NodeOption = None,
    worker: WorkerOption = None,
    node_token: NodeTokenOption = None,
    token_file: TokenFileOption = None,
    output: OutputOption = None,
) -> None:
    """One chute: state, services (with the image each runs: an oci:// tag pinned to its
    digest when the chute was installed or updated), resources."""
    found = _open(ctx, node, worker, node_token, token_file).call("GET", f"/chutes/{name}")
    if session(ctx).format(output) == Format.json:
        print_json(found)
        return
    _stale_note(found, worker)
    source = found.get("source") or {}
    store = f"{source.get('store')} ({source.get('digest')})" if source else None
    # the image each service runs: an oci:// tag pinned to its digest at install or update
    # (a field, not a column: a pinned reference is wider than a table's cell may be)
    images = [(f"image {s['name']}", s.get("pinned") or s.get("image")) for s in found["services"]]
    print_fields(
        [
            *((k, found.get(k)) for k in ("name", "version", "state", "change_id")),
            ("store", store),
            *images,
        ]
    )
    print_table(
        ["service", "state", "healthy", "address", "ports"],
        [[s["name"], s["state"], s["healthy"], s["address"],
          [f"{p['host']}->{p['chute']}/{p['protocol']}" for p in s["ports"]]]
         for s in found["services"]],
    )  # fmt: skip


def _stale_note(doc: dict[str, Any], worker: str | None) -> None:
    """Say so when the control plane answered with a worker's last known state."""
    if not doc.get("stale"):
        return
    from datetime import UTC, datetime

    def when(ts: Any) -> str:
        stamp = datetime.fromtimestamp(float(ts or 0), UTC)
        return stamp.isoformat(timespec="seconds")

    note(
        f"worker {worker} cannot be reached: its chutes as last reported "
        f"(at {when(doc.get('reported_at'))}; last contact {when(doc.get('last_contact'))})"
    )


def _action(action: str) -> None:
    def command(
        ctx: typer.Context,
        name: str,
        node: NodeOption = None,
        worker: WorkerOption = None,
        node_token: NodeTokenOption = None,
        token_file: TokenFileOption = None,
        wait: WaitOption = False,
    ) -> None:
        client = _open(ctx, node, worker, node_token, token_file)
        if action == "delete":
            client.changed(client.call("DELETE", f"/chutes/{name}"), wait)
        else:
            client.changed(client.call("POST", f"/chutes/{name}/{action}"), wait)

    command.__doc__ = f"{action.capitalize()} a chute."
    app.command(action)(command)


for _name in ("start", "stop", "restart", "delete"):
    _action(_name)


@app.command()
def logs(
    ctx: typer.Context,
    name: str,
    service: Annotated[str | None, typer.Option(help="Which service (default: the first).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    node: NodeOption = None,
    worker: WorkerOption = None,
    node_token: NodeTokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """A chute service's output; with -f, what it prints from now on, until the chute is
    deleted (or Ctrl-C)."""
    client = _open(ctx, node, worker, node_token, token_file)
    params: dict[str, Any] = {} if service is None else {"service": service}
    if not follow:
        echo(client.call("GET", f"/chutes/{name}/logs", params=params))
        return
    with client.http.stream(
        "GET", f"/chutes/{name}/logs", params={**params, "follow": "true"}, timeout=None
    ) as stream:
        if stream.status_code >= 400:
            from edgeplane.client import problem
            from edgeplane.wire import Reply

            stream.read()
            raise problem(Reply.of(stream))  # the error the node or manager raised
        if client.worker is None:  # the node's own API: plain text
            for text in stream.iter_text():
                typer.echo(text, nl=False)
            return
        for kind, text in _events(stream.iter_lines()):  # the control plane's SSE
            if kind == "log":
                typer.echo(text, nl=False)
            elif kind == "gap":
                note(f"(output lost: {text})")
            elif kind == "end":
                note(f"(the follow ended: {json.loads(text).get('reason')})")
                return


@app.command()
def metrics(
    ctx: typer.Context,
    name: str,
    service: Annotated[str | None, typer.Option(help="Which service (default: the first).")] = None,
    since: Annotated[
        float | None, typer.Option(min=0, help="From this time on (unix seconds).")
    ] = None,
    until: Annotated[
        float | None, typer.Option(min=0, help="Up to this time (unix seconds).")
    ] = None,
    points: Annotated[
        int, typer.Option(min=1, max=1000, help="At most this many points (averaged beyond).")
    ] = 200,
    worker: WorkerOption = None,
    output: OutputOption = None,
) -> None:
    """A chute service's usage samples (cpu, memory, processes, io of its cgroup), as its
    manager keeps them: through the control plane (--worker), which keeps the series."""
    if worker is None:
        raise Invalid(
            "a chute's usage series are kept by the control plane: give --worker ID",
            field="worker",
        )
    client = _open(ctx, None, worker, None, None)
    params: dict[str, Any] = {"points": points}
    for key, value in (("service", service), ("since", since), ("until", until)):
        if value is not None:
            params[key] = value
    found = client.call("GET", f"/chutes/{name}/metrics", params=params)
    if session(ctx).format(output) == Format.json:
        print_json(found)
        return
    samples = found["samples"]
    columns = sorted({key for sample in samples for key in sample["values"]})
    note(
        f"{found['id']}: {len(samples)} sample(s)" + (", averaged" if found["downsampled"] else "")
    )
    print_table(
        ["time", *columns],
        [[when(s["ts"]), *(_value(s["values"].get(c)) for c in columns)] for s in samples],
    )


def _value(value: float | None) -> float | int | None:
    """A sample's value for a table: whole numbers as such, others to one decimal."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(value, 1)


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event, data): the data lines joined with newlines."""
    name, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])


@app.command()
def config(
    ctx: typer.Context,
    name: str,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value (a JSON value or a string).")
    ] = None,
    node: NodeOption = None,
    worker: WorkerOption = None,
    node_token: NodeTokenOption = None,
    token_file: TokenFileOption = None,
    wait: WaitOption = False,
) -> None:
    """Show a chute's config, or change keys of it with --set."""
    client = _open(ctx, node, worker, node_token, token_file)
    current = client.call("GET", f"/chutes/{name}/config")
    if not set_:
        print_json(current)
        return
    for pair in set_:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Invalid(f"--set wants key=value, not {pair!r}", field="set")
        try:
            current[key] = json.loads(value)
        except ValueError:
            current[key] = value
    client.changed(client.call("PUT", f"/chutes/{name}/config", json=current), wait)
