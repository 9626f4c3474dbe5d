"""The ``edgeplane`` command: roles (``up``, ``manager``, ``worker``) and API commands.

Exit codes (DESIGN §3): 0 ok, 1 the thing failed (a task failed), 2 bad usage or input
(including a rejected token), 3 cannot reach the server. Every error ends as one line on
stderr through :class:`_Guarded`; nobody ever sees a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from edgeplane import __version__
from edgeplane.cli import (
    apps,
    artifacts,
    audit,
    certs,
    chutes,
    clusters,
    fl,
    helptext,
    jobs,
    roles,
    schedules,
    store,
    tasks,
    users,
    workers,
    workflows,
)
from edgeplane.cli.output import Format, Session, error
from edgeplane.errors import (
    EdgeplaneError,
    Forbidden,
    Invalid,
    NotFound,
    TaskFailure,
    Unauthorized,
    Unavailable,
)

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


def exit_code(exc: EdgeplaneError) -> int:
    if isinstance(exc, TaskFailure):
        return FAILED
    if isinstance(exc, Invalid | NotFound | Unauthorized | Forbidden):
        return USAGE
    if isinstance(exc, Unavailable):
        return UNREACHABLE
    return FAILED


def describe(exc: EdgeplaneError) -> str:
    """The one line a person reads for an error."""
    if isinstance(exc, Unauthorized | Forbidden):
        return f"unauthorized: check --token / EDGEPLANE_TOKEN ({exc.detail})"
    if isinstance(exc, Invalid) and exc.field and not exc.detail.startswith(exc.field):
        return f"{exc.field}: {exc.detail}"
    return exc.detail


class _Guarded(TyperGroup):
    """The root group: turns whatever a command raises into a message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise  # usage errors and deliberate exits: typer prints and exits as usual
        except EdgeplaneError as exc:
            error(describe(exc))
            raise typer.Exit(exit_code(exc)) from None
        except FileNotFoundError as exc:
            error(f"no such file: {exc.filename}")
            raise typer.Exit(USAGE) from None
        except Exception as exc:
            error(f"unexpected {type(exc).__name__}: {exc}")
            raise typer.Exit(FAILED) from None


app = typer.Typer(
    cls=_Guarded,
    name="edgeplane",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"edgeplane {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(envvar="EDGEPLANE_URL", help="API URL (default: from `edgeplane up`)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="EDGEPLANE_TOKEN", help="API token (default: from `edgeplane up`)."),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(
            envvar="EDGEPLANE_CA",
            help="CA an https:// API's certificate must chain to (default: "
            "DATA_DIR/certs/ca.pem if there, else the system's).",
        ),
    ] = None,
    output: Annotated[
        Format, typer.Option(envvar="EDGEPLANE_OUTPUT", help="How to print answers.")
    ] = Format.table,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version."),
    ] = False,
) -> None:
    """One orchestrator for the edge: wasm, host and container tasks over MQTT.

    Start with `edgeplane up`, then `edgeplane task run add.wasm add 2 3`.
    """
    current = ctx.obj if isinstance(ctx.obj, Session) else Session()
    current.url, current.token, current.ca, current.output = url, token, ca, output
    ctx.obj = current
    ctx.call_on_close(current.close)


app.add_typer(tasks.app, name="task")
app.add_typer(jobs.app, name="job")
app.add_typer(workflows.app, name="workflow")
app.add_typer(schedules.app, name="schedule")
app.add_typer(fl.app, name="fl")
app.add_typer(workers.runner(roles.worker), name="worker")  # runs one
app.add_typer(workers.app, name="workers")  # manages them
app.add_typer(clusters.app, name="cluster")
app.add_typer(apps.app, name="app")
app.add_typer(artifacts.app, name="artifact")
app.add_typer(chutes.app, name="chute")
app.add_typer(store.app, name="store")
app.add_typer(certs.app, name="certs")
app.command("login")(users.login)
app.add_typer(users.users, name="user")
app.add_typer(users.tokens, name="token")
app.command("audit")(audit.audit)
app.command("up")(roles.up)
app.command("manager")(roles.manager)
app.command("root")(roles.root)
app.command("proxy")(roles.proxy)


#: Options of the root command a user may also put after the subcommand.
_GLOBAL = ("--url", "--token", "--ca")


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move ``--url X`` / ``--token X`` written after a subcommand in front of it, so
    ``edgeplane task list --url …`` works like ``edgeplane --url … task list``.
    Arguments after ``--`` (a host command) are left alone."""
    end = argv.index("--") if "--" in argv else len(argv)
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        arg = argv[i]
        if arg in _GLOBAL and i + 1 < end:
            front += argv[i : i + 2]
            i += 2
            continue
        if arg.startswith(tuple(f"{name}=" for name in _GLOBAL)):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest + argv[end:]


def main() -> None:
    """Console-script entry point."""
    command = helptext.humanize(typer.main.get_command(app))
    command.main(args=hoist_global_options(sys.argv[1:]), prog_name="edgeplane")
