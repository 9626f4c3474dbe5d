"""How the CLI talks to people: data on stdout (JSON or tables), everything else on stderr.

stdout only ever carries the answer, so ``edgeplane … | jq`` and ``$(edgeplane …)`` work;
messages, errors and spinners go to stderr, spinners only when stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

    from edgeplane.client import Client


class Format(StrEnum):
    table = "table"
    json = "json"


#: The per-command ``--output`` (the global one, before the command, works too).
OutputOption = Annotated[
    Format | None,
    typer.Option(
        "--output", help="json or table; overrides the global --output.", show_default=False
    ),
]

ClientFactory = Callable[[str | None, str | None, Path | None], "Client"]


def _make_client(url: str | None, token: str | None, ca: Path | None) -> Client:
    from edgeplane.client import Client

    return Client(url, token, ca=ca)


@dataclass
class Session:
    """What every command needs: how to reach the server and how to print.

    ``make_client`` is how tests hand the CLI a client on a mock transport.
    """

    url: str | None = None
    token: str | None = None
    ca: Path | None = None
    output: Format = Format.table
    make_client: ClientFactory = _make_client
    _client: Client | None = field(default=None, init=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = self.make_client(self.url, self.token, self.ca)
        return self._client

    def format(self, override: Format | None) -> Format:
        return override or self.output

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def session(ctx: typer.Context) -> Session:
    found = ctx.find_object(Session)
    if found is None:
        raise RuntimeError("the edgeplane CLI callback did not run")
    return found


# --- stdout -------------------------------------------------------------------------------


def _stdout() -> Console:
    from rich.console import Console

    # Off a terminal, never wrap or cut: the output is for programs.
    terminal = sys.stdout.isatty()
    return Console(highlight=False, width=None if terminal else 100_000)


def echo(text: str) -> None:
    """Raw text on stdout, exactly once newline-terminated (task stdout, ids, values)."""
    if text:
        typer.echo(text, nl=not text.endswith("\n"))


def print_json(data: Any) -> None:
    import orjson

    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def print_model(model: BaseModel) -> None:
    print_json(model.model_dump(mode="json"))


def cell(value: Any) -> str:
    """One value as table text: empty for nothing, JSON-ish for lists and maps."""
    if value is None or value == "" or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    return str(value)


def when(ts: float | None) -> str:
    """A unix time as local ISO time; 0/None (never) as empty."""
    if not ts:
        return ""
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in columns:
        table.add_column(name.upper(), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell(v)) for v in row))
    _stdout().print(table)


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """One object as ``key  value`` lines; empty values left out."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False, show_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in pairs:
        if text := cell(value):
            table.add_row(key, Text(text))
    _stdout().print(table)


# --- stderr -------------------------------------------------------------------------------


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def note(text: str) -> None:
    """A message for the person, not for a program: on stderr."""
    from rich.text import Text

    _stderr().print(Text(text), soft_wrap=True)


def error(text: str) -> None:
    from rich.text import Text

    _stderr().print(Text("error: ", style="bold red") + Text(text), soft_wrap=True)


def raw_stderr(text: str) -> None:
    """A task's own stderr, passed through untouched."""
    if text:
        typer.echo(text, err=True, nl=not text.endswith("\n"))


@contextlib.contextmanager
def waiting(text: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while something slow happens. It yields ``say(why)``, which
    puts why it still waits (a pending task's reason) on the spinner's line; off a
    terminal, each new ``why`` is one line on stderr, so a wait is never silent."""
    console = _stderr()
    if not console.is_terminal:
        said: set[str] = set()

        def say_line(why: str) -> None:
            if why not in said:
                said.add(why)
                note(f"{text}: {why}")

        yield say_line
        return
    with console.status(text) as status:
        yield lambda why: status.update(f"{text}: {why}")
