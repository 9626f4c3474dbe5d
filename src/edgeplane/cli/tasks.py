"""``edgeplane task …``: run, create, start, stop, wait for and inspect tasks."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from edgeplane.cli.options import (
    LimitOption,
    OffsetOption,
    PriorityOption,
    ProjectOption,
    RetriesOption,
)
from edgeplane.cli.output import (
    Format,
    OutputOption,
    echo,
    error,
    note,
    print_fields,
    print_model,
    print_table,
    raw_stderr,
    session,
    waiting,
    when,
)
from edgeplane.errors import Invalid

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgeplane.client import Client
    from edgeplane.model import Task

app = typer.Typer(
    help="Tasks: one wasm function call, WASI program, host command or container on one worker.",
    no_args_is_help=True,
)


class Mode(StrEnum):
    function = "function"
    wasi = "wasi"


class RuntimeName(StrEnum):
    wasm = "wasm"
    host = "host"
    container = "container"


#: Lets ``-2`` be a function input and ``sh -c …`` a command without ``--``.
_PASS_THROUGH = {"ignore_unknown_options": True}

_ARGS_HELP = (
    "wasm: FILE.wasm (or oci://REF) NAME [ARGS]... where NAME is the export to call and ARGS "
    "its inputs (function mode) or the program's arguments (--mode wasi). "
    "host: the command, after `--`, e.g. `--runtime host -- sh -c 'echo hi'`. "
    "container: --image NAME[:TAG] or oci://HOST/REPO[:TAG] and optionally the command "
    "after `--` (default: the image's)."
)
ArgsArgument = Annotated[
    list[str] | None,
    typer.Argument(metavar="FILE.wasm NAME [ARGS] | -- CMD", help=_ARGS_HELP, show_default=False),
]
ModeOption = Annotated[
    Mode, typer.Option(help="wasm: call an export (function) or run _start (wasi).")
]
RuntimeOption = Annotated[RuntimeName, typer.Option(help="wasm module, host command or container.")]
ImageOption = Annotated[
    str | None,
    typer.Option(
        help="--runtime container: an image in the worker's image dir, NAME[:TAG], or "
        "oci://HOST[:PORT]/REPO[:TAG][@sha256:…] pulled from its registry."
    ),
]
ExportOption = Annotated[
    str | None, typer.Option(help="wasm export to call when it differs from NAME.")
]
NameOption = Annotated[
    str | None,
    typer.Option(help="Task name for host and container tasks (default: the program or image)."),
]
EnvOption = Annotated[list[str] | None, typer.Option("--env", help="K=V, repeatable.")]
NetworkOption = Annotated[
    str | None,
    typer.Option(
        "--network",
        metavar="none|bridge",
        help="container: 'bridge' for a network namespace on the worker's bridge (outbound "
        "NAT, --port published), 'none' for loopback only (default: bridge with --port).",
    ),
]
PortOption = Annotated[
    list[str] | None,
    typer.Option(
        "--port",
        metavar="PORT[/tcp|udp]",
        help="container: publish this container port on a free host port of the worker "
        "(shown in the task's endpoints), repeatable.",
    ),
]
SecretEnvOption = Annotated[
    list[str] | None,
    typer.Option(
        "--secret-env",
        help="K=V, or K alone to take the value of this shell's $K (kept off the command "
        "line); repeatable. Shown as *** by every read, sent only to the worker that runs "
        "the task.",
    ),
]
FuelOption = Annotated[int | None, typer.Option(min=1, help="wasm fuel limit.")]
MemoryOption = Annotated[int | None, typer.Option("--memory-mb", min=1, help="Memory limit, MB.")]
TimeLimitOption = Annotated[
    float | None,
    typer.Option("--time-limit", min=0.001, help="Kill the task after S seconds of running."),
]
LabelOption = Annotated[
    list[str] | None, typer.Option("--label", help="k=v the worker must carry, repeatable.")
]
WorkerOption = Annotated[str | None, typer.Option("--worker", help="Run on this worker only.")]
ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster", metavar="ID", help="Run in this cluster only (a root's API: `cluster list`)."
    ),
]
WaitTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout", min=0, help="Stop waiting after S seconds (exit 1); the task goes on."
    ),
]
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Task id.")]
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        metavar="CRON", help='Run on this cron schedule instead of now, e.g. "*/5 * * * *".'
    ),
]
TimezoneOption = Annotated[
    str | None, typer.Option(help="IANA timezone the --schedule is read in (default UTC).")
]


def pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``["k=v", …]`` as a dict; a malformed item is a usage error naming the option."""
    parsed: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected K=V, got {item!r}", param_hint=what)
        parsed[key] = value
    return parsed


def secret_pairs(values: list[str] | None) -> dict[str, str]:
    """``--secret-env`` items: ``K=V``, or ``K`` for the value of ``$K`` here (a command
    line is visible to every local user; the environment is not)."""
    parsed: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not key:
            raise typer.BadParameter("expected K=V or K", param_hint="--secret-env")
        if not sep:
            if key not in os.environ:
                raise typer.BadParameter(
                    f"${key} is not set (give K=V, or export {key})", param_hint="--secret-env"
                )
            value = os.environ[key]
        parsed[key] = value
    return parsed


def _input(text: str) -> Any:
    """A function input: a number when it reads as one (the worker converts to param types)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    if text.startswith("-"):
        raise Invalid(f"no such option: {text} (put `--` before inputs that start with '-')")
    return text


def task_spec(
    args: list[str] | None,
    *,
    runtime: RuntimeName,
    image: str | None,
    mode: Mode,
    export: str | None,
    name: str | None,
    env: list[str] | None,
    fuel: int | None,
    memory_mb: int | None,
    time_limit: float | None,
    retries: int | None,
    priority: int | None,
    label: list[str] | None,
    worker: str | None,
    cluster: str | None = None,
    project: str | None = None,
    secret_env: list[str] | None = None,
    network: str | None = None,
    port: list[str] | None = None,
) -> dict[str, Any]:
    """The task body the command line describes."""
    spec: dict[str, Any] = {"runtime": runtime.value, "env": pairs(env, "--env")}
    if network is not None or port:
        if runtime is not RuntimeName.container:
            hint = "--network" if network is not None else "--port"
            raise typer.BadParameter("only with --runtime container", param_hint=hint)
        if network is not None:
            spec["network"] = network
        if port:
            spec["ports"] = [_port(p) for p in port]
    if secrets := secret_pairs(secret_env):
        spec["secret_env"] = secrets
    args = args or []
    if image is not None and runtime is not RuntimeName.container:
        raise typer.BadParameter("only with --runtime container", param_hint="--image")
    if runtime is RuntimeName.container:
        if image is None:
            raise typer.BadParameter("a container task needs it", param_hint="--image NAME[:TAG]")
        spec.update(image=image, name=name or image.partition(":")[0])
        if args:
            spec["command"] = args
    elif runtime is RuntimeName.host:
        if not args:
            raise typer.BadParameter("give the command after --", param_hint="CMD")
        spec.update(command=args, name=name or Path(args[0]).name)
    else:
        if len(args) < 2:
            raise typer.BadParameter("give FILE.wasm and NAME", param_hint="FILE.wasm NAME")
        if name is not None:
            raise typer.BadParameter("wasm tasks take NAME as an argument", param_hint="--name")
        source, export_name, rest = args[0], args[1], args[2:]
        if source.startswith("oci://"):
            spec["image_url"] = source
        else:
            spec["file"] = Path(source)
        spec.update(name=export_name, mode=mode.value)
        if mode is Mode.wasi:
            spec["cli_args"] = rest
        else:
            spec["inputs"] = [_input(a) for a in rest]
    limits = {"fuel": fuel, "memory_mb": memory_mb, "timeout_s": time_limit}
    spec["limits"] = {k: v for k, v in limits.items() if v is not None}
    optional = {
        "export": export,
        "retries": retries,
        "priority": priority,
        "worker_id": worker,
        "cluster_id": cluster,
        "project": project,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    if labels := pairs(label, "--label"):
        spec["constraints"] = {"labels": labels}
    _check(spec)
    return spec


def _port(text: str) -> dict[str, Any]:
    """``8000`` or ``8000/udp`` as a ``ports`` item (its range is checked with the body)."""
    number, _, protocol = text.partition("/")
    if not number.isdigit() or protocol not in ("", "tcp", "udp"):
        raise typer.BadParameter(f"expected PORT[/tcp|udp], got {text!r}", param_hint="--port")
    return {"port": int(number), "protocol": protocol or "tcp"}


def _check(spec: dict[str, Any]) -> None:
    """Validate against the API's own model (its bounds too), so a mistake is exit 2 before
    any upload; ``file`` is still a path here (the client reads it)."""
    from pydantic import ValidationError

    from edgeplane.cli.specfile import field_path
    from edgeplane.model import TaskSpec

    try:
        TaskSpec.model_validate({k: v for k, v in spec.items() if k != "file"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(first["loc"])
        raise Invalid(f"{where}: {first['msg']}", field=where) from None


def _show_output(results: Any, stderr: str) -> None:
    """Results as a person reads them: values space-separated, or the program's stdout."""
    if isinstance(results, list):
        echo(" ".join(v if isinstance(v, str) else _scalar(v) for v in results))
    elif isinstance(results, dict) and "stdout" in results:
        echo(str(results["stdout"] or ""))
    elif results is not None:
        echo(_scalar(results))
    raw_stderr(stderr)


def _scalar(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def report(task: Task, fmt: Format) -> None:
    """Print a finished task's outcome; exit 1 when it did not complete."""
    if fmt is Format.json:
        print_model(task)
    else:
        _show_output(task.results, task.stderr)
    if task.state != "completed":
        raise_failed(task.id, task.state, task.error or task.reason)


def raise_failed(task_id: str, state: str, reason: str | None) -> None:
    error(f"task {task_id} {state}" + (f": {reason}" if reason else ""))
    raise typer.Exit(1)


def wait_and_report(client: Client, task_id: str, timeout: float | None, fmt: Format) -> None:
    _report_when_done(
        lambda progress: client.wait(task_id, timeout, progress), f"task {task_id}", fmt
    )


def _report_when_done(
    ended: Callable[[Callable[[Task], object]], Task], what: str, fmt: Format
) -> None:
    """Wait for ``ended(progress)`` with a spinner that says why the task still waits
    (its ``reason``, e.g. no worker offers its runtime), then report the task."""
    from edgeplane.client import WaitTimeout

    try:
        with waiting(f"waiting for {what}") as say:

            def progress(task: Task) -> None:
                if task.reason and not task.terminal:
                    say(f"{task.state}: {task.reason}")

            task = ended(progress)
    except WaitTimeout as exc:
        task_id = exc.task.id if exc.task is not None else "?"
        error(f"{exc.detail}; it goes on (stop it with: edgeplane task stop {task_id})")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        note(f"stopped waiting; {what} goes on (see: edgeplane task list)")
        raise typer.Exit(130) from None
    report(task, fmt)


def print_created(task: Task, fmt: Format) -> None:
    if fmt is Format.json:
        print_model(task)
    else:
        echo(task.id)


@app.command(context_settings=_PASS_THROUGH)
def run(
    ctx: typer.Context,
    args: ArgsArgument = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result and print it.")] = True,
    timeout: WaitTimeoutOption = None,
    mode: ModeOption = Mode.function,
    runtime: RuntimeOption = RuntimeName.wasm,
    image: ImageOption = None,
    export: ExportOption = None,
    name: NameOption = None,
    env: EnvOption = None,
    secret_env: SecretEnvOption = None,
    network: NetworkOption = None,
    port: PortOption = None,
    fuel: FuelOption = None,
    memory_mb: MemoryOption = None,
    time_limit: TimeLimitOption = None,
    retries: RetriesOption = None,
    priority: PriorityOption = None,
    label: LabelOption = None,
    worker: WorkerOption = None,
    cluster: ClusterOption = None,
    project: ProjectOption = None,
    schedule: ScheduleOption = None,
    timezone: TimezoneOption = None,
    output: OutputOption = None,
) -> None:
    """Run a task and print its results (values, or the program's stdout).

    Examples: `edgeplane task run add.wasm add 2 3` prints 5;
    `edgeplane task run --runtime host -- sh -c 'echo hi'` prints hi;
    `edgeplane task run --runtime container --image busybox -- echo hi` prints hi.
    With --no-wait it prints the task id. Exit 1 if the task fails.
    With --schedule it prints the id of the schedule that runs the task at each slot.
    """
    spec = task_spec(
        args,
        runtime=runtime,
        image=image,
        mode=mode,
        export=export,
        name=name,
        env=env,
        secret_env=secret_env,
        network=network,
        port=port,
        fuel=fuel,
        memory_mb=memory_mb,
        time_limit=time_limit,
        retries=retries,
        priority=priority,
        label=label,
        worker=worker,
        cluster=cluster,
        project=project,
    )
    if timezone is not None and schedule is None:
        raise typer.BadParameter("only with --schedule", param_hint="--timezone")
    s = session(ctx)
    fmt = s.format(output)
    client = s.client()
    if schedule is not None:
        from edgeplane.cli.schedules import print_schedule

        timing = {"schedule": schedule} | ({"timezone": timezone} if timezone else {})
        print_schedule(client.schedule_task({**spec, **timing, "start": True}), fmt)
        return
    if wait:  # created and waited for in one request (POST /tasks?wait=)
        _report_when_done(
            lambda progress: client.run(**spec, timeout=timeout, progress=progress),
            "the task",
            fmt,
        )
    else:
        print_created(client.create_task({**spec, "start": True}), fmt)


@app.command(context_settings=_PASS_THROUGH)
def create(
    ctx: typer.Context,
    args: ArgsArgument = None,
    mode: ModeOption = Mode.function,
    runtime: RuntimeOption = RuntimeName.wasm,
    image: ImageOption = None,
    export: ExportOption = None,
    name: NameOption = None,
    env: EnvOption = None,
    secret_env: SecretEnvOption = None,
    network: NetworkOption = None,
    port: PortOption = None,
    fuel: FuelOption = None,
    memory_mb: MemoryOption = None,
    time_limit: TimeLimitOption = None,
    retries: RetriesOption = None,
    priority: PriorityOption = None,
    label: LabelOption = None,
    worker: WorkerOption = None,
    cluster: ClusterOption = None,
    project: ProjectOption = None,
    output: OutputOption = None,
) -> None:
    """Create a task without starting it and print its id (start it with `task start ID`)."""
    spec = task_spec(
        args,
        runtime=runtime,
        image=image,
        mode=mode,
        export=export,
        name=name,
        env=env,
        secret_env=secret_env,
        network=network,
        port=port,
        fuel=fuel,
        memory_mb=memory_mb,
        time_limit=time_limit,
        retries=retries,
        priority=priority,
        label=label,
        worker=worker,
        cluster=cluster,
        project=project,
    )
    s = session(ctx)
    print_created(s.client().create_task({**spec, "start": False}), s.format(output))


def _print_state(task: Task, fmt: Format) -> None:
    if fmt is Format.json:
        print_model(task)
    else:
        echo(f"{task.id} {task.state}")


@app.command()
def start(ctx: typer.Context, task_id: IdArgument, output: OutputOption = None) -> None:
    """Schedule a created task."""
    s = session(ctx)
    _print_state(s.client().start(task_id), s.format(output))


@app.command()
def stop(ctx: typer.Context, task_id: IdArgument, output: OutputOption = None) -> None:
    """Stop a task (cancel it if it has not run yet)."""
    s = session(ctx)
    _print_state(s.client().stop(task_id), s.format(output))


@app.command()
def retry(ctx: typer.Context, task_id: IdArgument, output: OutputOption = None) -> None:
    """Run an ended task again: prints the new task's id (its retry_of is ID)."""
    s = session(ctx)
    task = s.client().retry(task_id)
    if s.format(output) is Format.json:
        print_model(task)
        return
    echo(task.id)
    note(f"task {task.id} retries {task_id}")


@app.command()
def wait(
    ctx: typer.Context,
    task_id: IdArgument,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Wait for a task to finish and print its results, as `task run` does."""
    s = session(ctx)
    wait_and_report(s.client(), task_id, timeout, s.format(output))


@app.command()
def get(ctx: typer.Context, task_id: IdArgument, output: OutputOption = None) -> None:
    """Show a task."""
    s = session(ctx)
    task = s.client().get(task_id)
    if s.format(output) is Format.json:
        print_model(task)
        return
    print_fields(
        [
            ("id", task.id),
            ("name", task.name),
            ("state", task.state),
            ("reason", task.reason),
            ("runtime", task.runtime),
            ("mode", task.mode if task.runtime == "wasm" else None),
            ("command", " ".join(task.command or [])),
            ("image", task.image_url or task.image),
            ("network", task.network if task.runtime == "container" else None),
            ("endpoints", [str(e) for e in task.endpoints] or None),
            ("inputs", task.inputs),
            ("priority", task.priority),
            ("worker", task.worker_id),
            ("cluster", task.cluster_id),
            ("attempt", task.attempt),
            ("results", _scalar(task.results) if task.results is not None else None),
            ("error", task.error),
            ("exit code", task.exit_code),
            ("job", task.job_id),
            ("workflow", task.workflow_id),
            ("retry of", task.retry_of),
            ("created", when(task.created_at)),
            ("started", when(task.started_at)),
            ("finished", when(task.finished_at)),
        ]
    )


class StateName(StrEnum):
    pending = "pending"
    scheduled = "scheduled"
    running = "running"
    completed = "completed"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    state: Annotated[StateName | None, typer.Option(help="Only tasks in this state.")] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Only tasks whose name starts with this."),
    ] = None,
    worker: Annotated[str | None, typer.Option(help="Only tasks of this worker (id).")] = None,
    job: Annotated[str | None, typer.Option(help="Only tasks of this job.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only tasks of this workflow.")] = None,
    newest: Annotated[bool, typer.Option("--newest", help="Newest first.")] = False,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    cursor: Annotated[
        str | None,
        typer.Option(help="Continue after a page (the cursor it printed)."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """List tasks, oldest first (--newest: newest first), a page at a time."""
    if cursor is not None and offset:
        raise Invalid("page with --cursor or --offset, not both", field="cursor")
    s = session(ctx)
    page = s.client().list_tasks(
        state=None if state is None else state.value,
        name=name,
        worker_id=worker,
        job_id=job,
        workflow_id=workflow,
        order="newest" if newest else None,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )
    if s.format(output) is Format.json:
        print_model(page)
        return
    print_table(
        ["id", "name", "state", "runtime", "worker", "attempt", "created"],
        (
            [t.id, t.name, t.state, t.runtime, t.worker_id, t.attempt, when(t.created_at)]
            for t in page.items
        ),
    )
    shown = f"{len(page.items)} of {page.total} tasks shown"
    if page.next is not None:
        note(f"{shown}; more with --cursor {page.next}" + (" --newest" if newest else ""))
    elif cursor is None and page.total > offset + len(page.items):  # a server without cursors
        note(f"{shown}; more with --offset/--limit")


@app.command()
def results(ctx: typer.Context, task_id: IdArgument, output: OutputOption = None) -> None:
    """Print a task's results (exit 1 if it failed); does not wait (see `task wait`)."""
    s = session(ctx)
    doc = s.client().results(task_id)
    if s.format(output) is Format.json:
        print_model(doc)
    else:
        _show_output(doc.results, "")
    if doc.state in ("failed", "cancelled", "skipped"):
        raise_failed(doc.task_id, doc.state, doc.error)
    if doc.state != "completed" and s.format(output) is Format.table:
        note(f"task {doc.task_id} is {doc.state}: no results yet")


@app.command()
def logs(
    ctx: typer.Context,
    task_id: IdArgument,
    output: OutputOption = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Print what the task prints as it prints it, until it ends."
        ),
    ] = False,
) -> None:
    """Print a task's stdout (on stdout) and stderr (on stderr)."""
    s = session(ctx)
    if follow:
        for name, text in s.client().follow_logs(task_id):
            if s.format(output) is Format.json:
                echo(orjson.dumps({"event": name, "data": text}).decode())
            elif name == "stdout":
                sys.stdout.write(text)
                sys.stdout.flush()
            elif name == "stderr":
                sys.stderr.write(text)
                sys.stderr.flush()
            elif name == "gap":
                note(f"(output lost: {text})")
        return
    doc = s.client().logs(task_id)
    if s.format(output) is Format.json:
        print_model(doc)
    else:
        echo(doc.stdout)
        raw_stderr(doc.stderr)


@app.command()
def delete(ctx: typer.Context, task_id: IdArgument) -> None:
    """Delete a task."""
    session(ctx).client().delete(task_id)
    note(f"deleted task {task_id}")
