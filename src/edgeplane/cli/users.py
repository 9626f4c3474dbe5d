"""``edgeplane login``, ``edgeplane user create|list|delete``, ``edgeplane token
create|list|revoke`` (docs/security.md)."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from edgeplane.cli.output import (
    Format,
    OutputOption,
    echo,
    note,
    print_json,
    print_table,
    session,
    when,
)
from edgeplane.errors import Invalid

users = typer.Typer(
    help="Users (admin): a role and the projects they belong to.", no_args_is_help=True
)
tokens = typer.Typer(
    help="Long-lived API tokens: shown once, stored hashed, revocable.", no_args_is_help=True
)


class RoleChoice(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


class ScopeChoice(StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from stdin (scripts), not a prompt."),
]


def _password(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if not password:
        raise Invalid("an empty password", field="password")
    return password


def _keep(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")


def login(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: PasswordStdin = False,
    print_token: Annotated[
        bool,
        typer.Option("--print", help="Print the access token instead of keeping it in a file."),
    ] = False,
) -> None:
    """Log in: the access token (15 min) is kept in $EDGEPLANE_DATA_DIR/token (0600), where
    the other commands find it; --print writes it to stdout instead
    (`export EDGEPLANE_TOKEN=$(edgeplane login ann --print)`)."""
    from edgeplane.client import login_token_path

    pair = session(ctx).client().login(name, _password(password_stdin, confirm=False))
    if print_token:
        echo(str(pair["access_token"]))
        return
    path = login_token_path()
    _keep(path, str(pair["access_token"]))
    note(f"logged in as {name}; token kept in {path} for {pair['expires_in'] / 60:g} minutes")


@users.command("create")
def create_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name (lowercase, digits, _ . -).")],
    role: Annotated[RoleChoice, typer.Option(help="What they may do.")] = RoleChoice.viewer,
    project: Annotated[
        list[str] | None,
        typer.Option("--project", help="A project they belong to (repeat; default: default)."),
    ] = None,
    password_stdin: PasswordStdin = False,
    output: OutputOption = None,
) -> None:
    """Create a user (admin)."""
    s = session(ctx)
    made = s.client().create_user(
        name, _password(password_stdin, confirm=True), role=role.value, projects=project
    )
    if s.format(output) is Format.json:
        print_json(made)
        return
    note(f"user {made['name']} ({made['role']}) in {', '.join(made['projects']) or 'no project'}")


@users.command("list")
def list_users(ctx: typer.Context, output: OutputOption = None) -> None:
    """List users (admin)."""
    s = session(ctx)
    found = s.client().users()
    if s.format(output) is Format.json:
        print_json(found)
        return
    print_table(
        ["name", "role", "projects", "created"],
        ([u["name"], u["role"], ",".join(u["projects"]), when(u["created_at"])] for u in found),
    )


@users.command("delete")
def delete_user(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]
) -> None:
    """Delete a user and every token of theirs (admin); effective at once."""
    session(ctx).client().delete_user(name)
    note(f"deleted user {name}")


@tokens.command("create")
def create_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="What it is for.")] = "",
    scope: Annotated[
        list[ScopeChoice] | None,
        typer.Option("--scope", help="Narrow it: read, write, admin (repeat; default: all)."),
    ] = None,
    expires_in: Annotated[
        float | None, typer.Option(min=1, help="Seconds until it expires (default: never).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Another user's (admin).")] = None,
    output: OutputOption = None,
) -> None:
    """Create an API token; its secret is printed once, on stdout."""
    s = session(ctx)
    scopes = [x.value for x in scope or ()]
    made = s.client().create_token(name, scopes=scopes, expires_in=expires_in, user=user)
    if s.format(output) is Format.json:
        print_json(made)
        return
    echo(str(made["token"]))
    note(f"token {made['id']} of {made['user']}: shown this once, keep it safe")


@tokens.command("list")
def list_tokens(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="Only this user's (admin).")] = None,
    output: OutputOption = None,
) -> None:
    """List your tokens (an admin: everyone's). Secrets are never shown again."""
    s = session(ctx)
    found = s.client().tokens(user)
    if s.format(output) is Format.json:
        print_json(found)
        return
    print_table(
        ["id", "name", "user", "kind", "scopes", "expires"],
        (
            [
                t["id"],
                t["name"],
                t["user"],
                t["kind"],
                ",".join(t["scopes"]) or "all",
                when(t["expires_at"]) if t["expires_at"] else "never",
            ]
            for t in found
        ),
    )


@tokens.command("revoke")
def revoke_token(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID", help="Token id.")]
) -> None:
    """Revoke a token; effective at once."""
    session(ctx).client().revoke_token(token_id)
    note(f"revoked token {token_id}")
