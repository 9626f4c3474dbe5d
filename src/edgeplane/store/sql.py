"""The SQL store: SQLite (the default, one file) or PostgreSQL (production), async.

SQLAlchemy Core over aiosqlite / asyncpg. The schema is brought up to date by Alembic in
:meth:`SqlStore.open`, so every process that opens a store migrates it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from pydantic import ValidationError
from sqlalchemy import (
    Float,
    Row,
    String,
    Table,
    bindparam,
    event,
    func,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ClauseElement

from edgeplane.errors import Conflict, Invalid, Unavailable
from edgeplane.fl.state import TERMINAL as FL_TERMINAL
from edgeplane.fl.state import Experiment
from edgeplane.model import (
    TERMINAL_STATES,
    TERMINAL_WORKFLOW_STATES,
    Application,
    Schedule,
    Task,
    Worker,
    Workflow,
    task_json,
)
from edgeplane.model.audit import AuditQuery, AuditRecord, split_resource
from edgeplane.model.listing import Position, prefix_end
from edgeplane.model.secrets import REVEAL
from edgeplane.store import tables
from edgeplane.store.base import (
    MAX_FL_BLOB_BATCH,
    Batch,
    ChuteVersionRecord,
    Kind,
    Store,
    StoreChuteRecord,
    TokenRecord,
    UserRecord,
    fl_blob_batch,
    fl_blob_fits,
    fl_blob_limit,
    name_taken,
    too_many_versions,
)
from edgeplane.store.documents import M, read
from edgeplane.store.leases import Claim, Lease, check_term, claimed, released, renewed
from edgeplane.store.sqlite_direct import DirectSqlite, Guard

MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Serialises concurrent migrations of one PostgreSQL database (any constant will do).
_MIGRATION_LOCK = 0x65646765
_SQLITE_BUSY_MS = 5000
#: an FL blob at most this large is written on the event loop (SQLite): see put_fl_blob
INLINE_BLOB_BYTES = 64 * 1024


def _engine_url(url: str) -> tuple[URL, str | None]:
    """Translate a user URL to the async driver's, splitting off the PostgreSQL schema."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise Invalid(f"not a store URL: {url!r}", field="store") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite"), None
    if backend != "postgresql":
        raise Invalid(f"unsupported store URL scheme {parsed.drivername!r}", field="store")
    schema = parsed.query.get("schema")
    if isinstance(schema, tuple):
        raise Invalid("give the store schema once", field="store")
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise Invalid(f"bad PostgreSQL schema name {schema!r}", field="store")
    return parsed.set(drivername="postgresql+asyncpg").difference_update_query(["schema"]), schema


def _sqlite_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Driver-level autocommit so the "begin" hook below owns transactions: DDL becomes
    # transactional and a list page and its total read one snapshot.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def _migrate(conn: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


@dataclass(frozen=True)
class _DriverStatement:
    """A statement compiled once to the driver's SQL, so a batch of thousands of rows goes
    to ``executemany`` without Core building parameters per row (measured on SQLite:
    10,000 task upserts 0.29 s instead of 0.45 s)."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> _DriverStatement:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # a statement, not a DDL element
        return cls(str(compiled), tuple(compiled.positiontup or ()))

    def params(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        names = self.names
        return [tuple(row[n] for n in names) for row in rows]

    async def run(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        await conn.exec_driver_sql(self.sql, self.params(rows))


def _task_row(task: Task, doc: str | None = None) -> dict[str, Any]:
    """``doc``: its text when already made (``task_json.stored``)."""
    return {
        "id": task.id,
        "state": task.state,
        "job_id": task.job_id,
        "workflow_id": task.workflow_id,
        "project": task.project,
        "created_at": task.created_at,
        "priority": task.priority,
        "name": task.name,
        "worker_id": task.worker_id,
        "doc": task.model_dump_json(context=REVEAL) if doc is None else doc,
    }


def _workflow_row(workflow: Workflow) -> dict[str, Any]:
    return {
        "id": workflow.id,
        "kind": workflow.kind,
        "state": workflow.state,
        "project": workflow.project,
        "created_at": workflow.created_at,
        "doc": workflow.model_dump_json(exclude={"tasks"}),
    }


def _docs(model: type[M], rows: Sequence[Row[Any]]) -> list[M]:
    """The documents of ``rows`` (whole rows of a table), unreadable ones left out."""
    found = (_doc(model, row) for row in rows)
    return [doc for doc in found if doc is not None]


def _doc(model: type[M], row: Row[Any] | None) -> M | None:
    if row is None:
        return None
    columns = {key: value for key, value in row._mapping.items() if key != "doc"}
    return read(model, row.doc, columns)


def _unstorable(*values: str | None) -> bool:
    """Whether a key holds what PostgreSQL refuses in text (NUL): no row can have it, so
    it is "not found" on every backend instead of a driver error."""
    return any(value is not None and "\x00" in value for value in values)


def _schedule_row(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "next_run": schedule.next_run,
        "project": schedule.project,
        "created_at": schedule.created_at,
        "doc": schedule.model_dump_json(context=REVEAL),
    }


def _application_row(app: Application) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "project": app.project,
        "created_at": app.created_at,
        "doc": app.model_dump_json(context=REVEAL),
    }


def _worker_row(worker: Worker) -> dict[str, Any]:
    return {"id": worker.id, "doc": worker.model_dump_json()}


def _lease_term(name: str, term: int) -> Lease:
    """A lease that only says its term (all a fence checks)."""
    return Lease(name, "", "", term, 0.0)


def _fence_guard(name: str, term: int) -> Guard:
    """The fence as a first statement of a direct SQLite write."""

    def check(row: Any) -> None:
        check_term(None if row is None else _lease_term(name, row[0]), name, term)

    return ("SELECT term FROM leases WHERE name = ?", (name,), check)


_AUDIT_COLUMNS = tuple(c.name for c in tables.audit.c if c.name != "id")


def _audit_row(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _AUDIT_COLUMNS}


def _is_unreachable(exc: BaseException) -> bool:
    """Whether an error says the store cannot be reached (as opposed to refusing a write)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc, OSError | TimeoutError | OperationalError | InterfaceError | sqlite3.OperationalError
    )


@asynccontextmanager
async def _reachable(url: str) -> AsyncIterator[None]:
    """Turn "cannot reach the store" errors into :class:`Unavailable` (a 503 at the API)."""
    try:
        yield
    except Exception as exc:
        if _is_unreachable(exc):
            raise Unavailable(f"store {url} unavailable: {type(exc).__name__}") from exc
        raise


_TABLES: dict[Kind, Table] = {
    "task": tables.tasks,
    "workflow": tables.workflows,
    "schedule": tables.schedules,
    "application": tables.applications,
    "worker": tables.workers,
}


def _token(row: Row[Any]) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        user=row.user,
        role=row.role,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        scopes=tuple(row.scopes.split()),
        projects=tuple(row.projects.split()),
        kind=row.kind,
        name=row.name,
    )


def _chute_version(row: Row[Any], project: str) -> ChuteVersionRecord:
    return ChuteVersionRecord(
        name=row.name,
        version=row.version,
        project=project,
        description=row.description,
        digest=row.digest,
        published_at=row.published_at,
        published_by=row.published_by,
        deleted=bool(row.deleted),
    )


#: the columns of a version without its manifest (lists and shows never need it)
_VERSION_COLUMNS = [c for c in tables.store_chute_versions.c if c.name != "doc"]


def _user(row: Row[Any]) -> UserRecord:
    return UserRecord(
        name=row.name,
        role=row.role,
        projects=tuple(row.projects.split()),
        password_hash=row.password_hash,
        created_at=row.created_at,
    )


class SqlStore(Store):
    """A :class:`Store` on SQLite (``sqlite:///path``, ``sqlite://`` in memory) or
    PostgreSQL (``postgresql://host[:port]/db[?schema=NAME]``)."""

    def __init__(self, url: str, *, hold_s: float | None = None) -> None:
        """``hold_s`` (PostgreSQL): the longest a transaction may sit idle before the
        server ends it. Writes share-lock the lease row (``fence``), so a leader paused in
        the middle of one would keep a standby from ever taking over; past ``hold_s`` the
        server aborts that transaction, releasing the row (the paused process, resumed,
        finds its connection gone and its term over)."""
        self._hold_s = hold_s
        self._url, self._schema = _engine_url(url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        # SQLite has one writer: queueing writers here beats sleeping in its busy handler.
        self._write_lock = asyncio.Lock() if self._sqlite else None
        self._engine: AsyncEngine | None = None
        #: file databases take the one-hop path for task writes and reads by id (open)
        self._direct: DirectSqlite | None = None
        dialect = self._url.get_dialect()()
        self._insert_tasks = _DriverStatement.of(tables.tasks.insert(), dialect)
        self._upsert_tasks = _DriverStatement.of(self._upsert(tables.tasks), dialect)
        self._insert_workflows = _DriverStatement.of(tables.workflows.insert(), dialect)
        self._batch_upserts = {
            kind: _DriverStatement.of(self._upsert(table), dialect)
            for kind, table in _TABLES.items()
        }
        self._deletes = {
            kind: _DriverStatement.of(table.delete().where(table.c.id == bindparam("id")), dialect)
            for kind, table in _TABLES.items()
        }
        audit = tables.audit
        self._insert_audit = _DriverStatement.of(
            audit.insert().values({n: bindparam(n) for n in _AUDIT_COLUMNS}), dialect
        )
        self._prune_audit_age = _DriverStatement.of(
            audit.delete().where(audit.c.at < bindparam("before")), dialect
        )
        # By id, not OFFSET: an index lookup, where OFFSET would walk every kept row. A
        # PostgreSQL sequence may skip ids (a rolled-back insert), so "about" keep rows.
        newest = select(func.max(audit.c.id)).scalar_subquery()
        self._prune_audit_rows = _DriverStatement.of(
            audit.delete().where(audit.c.id <= newest - bindparam("keep")), dialect
        )
        self._upsert_workflows = self._upsert(tables.workflows)
        self._upsert_schedule = self._upsert(tables.schedules)
        self._upsert_fl_experiment = _DriverStatement.of(
            self._upsert(tables.fl_experiments), dialect
        )
        self._upsert_application = self._upsert(tables.applications)
        self._upsert_worker = self._upsert(tables.workers)
        self._upsert_token = self._upsert(tables.tokens)
        lease_insert = (sqlite.insert if self._sqlite else postgresql.insert)(tables.leases)
        self._upsert_lease = lease_insert.on_conflict_do_update(
            index_elements=[tables.leases.c.name],
            set_={
                c.name: lease_insert.excluded[c.name] for c in tables.leases.c if c.name != "name"
            },
        )
        ins = sqlite.insert if self._sqlite else postgresql.insert
        self._put_artifact: Insert = ins(tables.artifacts).on_conflict_do_nothing(
            index_elements=[tables.artifacts.c.digest]
        )
        # at the driver, on SQLite in one hop to its writer thread: a 4 MB blob (1M float32)
        # through Core and aiosqlite took 43 ms to put on SQLite and 81 ms on PostgreSQL,
        # this way 22 and 46 ms (medians of 20, this machine, docs/benchmarks.md)
        self._put_fl_blob = _DriverStatement.of(
            ins(tables.fl_blobs).on_conflict_do_nothing(index_elements=[tables.fl_blobs.c.digest]),
            dialect,
        )

    def _upsert(self, table: Table) -> Insert:
        """An insert of ``table`` that replaces every column of a row with the same id."""
        ins = (sqlite.insert if self._sqlite else postgresql.insert)(table)
        return ins.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={c.name: ins.excluded[c.name] for c in table.c if c.name != "id"},
        )

    @property
    def url(self) -> str:
        """The driver URL, password hidden (for logs)."""
        return self._url.render_as_string(hide_password=True)

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = self._create_engine()
        try:
            async with engine.begin() as conn:
                if not self._sqlite:
                    lock = text("SELECT pg_advisory_xact_lock(:key)")
                    await conn.execute(lock, {"key": _MIGRATION_LOCK})
                if self._schema is not None:
                    await self._create_schema(conn, self._schema)
                await conn.run_sync(_migrate)
        except (OSError, OperationalError, InterfaceError) as exc:
            await engine.dispose()
            raise Unavailable(f"cannot open store {self.url}: {exc}") from exc
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        database = self._url.database
        if self._sqlite and database not in (None, "", ":memory:"):
            self._direct = DirectSqlite(str(database), _SQLITE_BUSY_MS)

    async def ping(self) -> None:
        async with self._reading() as conn:
            await conn.execute(text("SELECT 1"))

    async def apply(self, batch: Batch) -> None:
        upserts = self._batch_upserts
        parts: list[tuple[_DriverStatement, list[dict[str, Any]]]] = [
            (self._insert_workflows, [_workflow_row(w) for w in batch.new_workflows]),
            # (a new task's text is kept for the API's answer: ``model/task_json.py``)
            (self._insert_tasks, [_task_row(t, task_json.stored(t)) for t in batch.new_tasks]),
            (upserts["task"], [_task_row(t) for t in batch.tasks]),
            (upserts["workflow"], [_workflow_row(w) for w in batch.workflows]),
            (upserts["schedule"], [_schedule_row(s) for s in batch.schedules]),
            (upserts["application"], [_application_row(a) for a in batch.applications]),
            (upserts["worker"], [_worker_row(w) for w in batch.workers]),
        ]
        for kind, doc_id in batch.deleted:
            parts.append((self._deletes[kind], [{"id": doc_id}]))
        parts.append((self._insert_audit, [_audit_row(r) for r in batch.audit]))
        if batch.audit_prune is not None:
            parts.append((self._prune_audit_age, [{"before": batch.audit_prune.before}]))
            parts.append((self._prune_audit_rows, [{"keep": batch.audit_prune.keep}]))
        parts = [(statement, rows) for statement, rows in parts if rows]
        if not parts:
            return
        fence = self.fenced_by
        try:
            async with _reachable(self.url):
                if self._direct is None:
                    async with self._writing() as conn:
                        if fence is not None:
                            await self._check_fence(conn, *fence)
                        for statement, rows in parts:
                            await statement.run(conn, rows)
                    return
                self._opened()
                assert self._write_lock is not None  # always set for SQLite
                guard = None if fence is None else _fence_guard(*fence)
                statements = [(st.sql, st.params(rows)) for st, rows in parts]
                # a prune may delete many rows: never on the event loop
                inline = batch.audit_prune is None
                async with self._write_lock:
                    await self._direct.write(statements, guard, inline=inline)
        except (IntegrityError, sqlite3.IntegrityError):
            raise Conflict(await self._conflict_detail(batch), field="id") from None

    async def _check_fence(self, conn: AsyncConnection, name: str, term: int) -> None:
        """In the write's own transaction: the lease row share-locked (a takeover, which
        updates it, waits for this write or this write sees its term), then checked."""
        query = select(tables.leases.c.term).where(tables.leases.c.name == name)
        if not self._sqlite:
            query = query.with_for_update(read=True)
        current = (await conn.execute(query)).scalar()
        check_term(None if current is None else _lease_term(name, current), name, term)

    # leases

    async def _locked_lease(self, conn: AsyncConnection, name: str) -> Lease | None:
        """The lease row, locked until the transaction ends (PostgreSQL: FOR UPDATE on a
        row made first if missing, so two first claims cannot both insert; SQLite: the
        store's write lock and the database's one writer)."""
        table = tables.leases
        if not self._sqlite:
            blank = postgresql.insert(table).values(
                name=name, holder="", home="", term=0, expires_at=0.0, url="", lineage=""
            )
            await conn.execute(blank.on_conflict_do_nothing(index_elements=[table.c.name]))
        query = select(table).where(table.c.name == name)
        if not self._sqlite:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            return None
        return Lease(row.name, row.holder, row.home, row.term, row.expires_at, row.url, row.lineage)

    async def _put_lease(self, conn: AsyncConnection, lease: Lease) -> None:
        await conn.execute(self._upsert_lease, asdict(lease))

    async def claim_lease(self, name: str, claim: Claim, now: float) -> Lease:
        async with self._writing() as conn:
            current = await self._locked_lease(conn, name)
            lease = claimed(current, name, claim, now)
            if lease != current:
                await self._put_lease(conn, lease)
            return lease

    async def renew_lease(
        self, name: str, holder: str, term: int, now: float, ttl_s: float
    ) -> bool:
        async with self._writing() as conn:
            lease = renewed(await self._locked_lease(conn, name), holder, term, now, ttl_s)
            if lease is not None:
                await self._put_lease(conn, lease)
            return lease is not None

    async def release_lease(self, name: str, holder: str, term: int) -> None:
        async with self._writing() as conn:
            lease = released(await self._locked_lease(conn, name), holder, term)
            if lease is not None:
                await self._put_lease(conn, lease)

    async def get_lease(self, name: str) -> Lease | None:
        table = tables.leases
        async with self._reading() as conn:
            row = (await conn.execute(select(table).where(table.c.name == name))).first()
        if row is None or row.term == 0:
            return None
        return Lease(row.name, row.holder, row.home, row.term, row.expires_at, row.url, row.lineage)

    async def _conflict_detail(self, batch: Batch) -> str:
        for workflow in batch.new_workflows:
            if await self._workflow_exists(workflow.id):
                return f"workflow id already exists: {workflow.id}"
        taken = await self._taken_ids(batch.new_tasks) if batch.new_tasks else []
        return f"task ids already exist: {', '.join(taken)}" if taken else "an id is taken"

    @staticmethod
    async def _create_schema(conn: AsyncConnection, schema: str) -> None:
        # Look first: CREATE needs a privilege a production role may rightly lack.
        exists = text("SELECT 1 FROM pg_namespace WHERE nspname = :name")
        if (await conn.execute(exists, {"name": schema})).first() is None:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

    def _create_engine(self) -> AsyncEngine:
        # hide_parameters: a statement's parameters hold documents, secret env included;
        # SQLAlchemy would put them in its log lines and in the text of its errors.
        if not self._sqlite:
            server_settings: dict[str, str] = {}
            if self._schema is not None:
                server_settings["search_path"] = f'"{self._schema}"'
            if self._hold_s is not None:
                held_ms = max(1, round(self._hold_s * 1000))
                server_settings["idle_in_transaction_session_timeout"] = str(held_ms)
            connect_args: dict[str, Any] = {"server_settings": server_settings}
            return create_async_engine(self._url, connect_args=connect_args, hide_parameters=True)
        database = self._url.database
        if database in (None, "", ":memory:"):
            # An in-memory database lives in one connection: keep exactly one and let the
            # pool queue coroutines for it (a StaticPool would interleave transactions).
            engine = create_async_engine(
                self._url,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=1,
                max_overflow=0,
                hide_parameters=True,
            )
        else:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self._url, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()
            if self._direct is not None:
                direct, self._direct = self._direct, None
                await direct.close()

    def _opened(self) -> AsyncEngine:
        if self._engine is None:
            raise Unavailable("the store is not open")
        return self._engine

    # Every statement goes through these two (or _reachable itself on the SQLite hot path):
    # a store that cannot be reached is Unavailable, a 503 at the API, never a 500.
    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with _reachable(self.url), self._opened().begin() as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        engine = self._opened()
        if self._write_lock is None:
            async with _reachable(self.url), engine.begin() as conn:
                yield conn
            return
        async with _reachable(self.url), self._write_lock, engine.begin() as conn:
            yield conn

    # artifacts

    async def put_artifact(self, digest: str, data: bytes) -> None:
        async with self._writing() as conn:
            await conn.execute(self._put_artifact, {"digest": digest, "data": data})

    async def get_artifact(self, digest: str) -> bytes | None:
        if _unstorable(digest):
            return None
        query = select(tables.artifacts.c.data).where(tables.artifacts.c.digest == digest)
        async with self._reading() as conn:
            data = (await conn.execute(query)).scalar_one_or_none()
        return None if data is None else bytes(data)

    # tasks

    async def add_tasks(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            return
        rows = [_task_row(task) for task in tasks]
        try:
            await self._write_tasks(self._insert_tasks, rows)
        except (IntegrityError, sqlite3.IntegrityError):
            taken = await self._taken_ids(tasks)
            detail = f"task ids already exist: {', '.join(taken)}" if taken else "task id taken"
            raise Conflict(detail, field="id") from None

    async def _taken_ids(self, tasks: Sequence[Task]) -> list[str]:
        """Ids of ``tasks`` that are stored already or repeated in the batch (for errors)."""
        seen: set[str] = set()
        taken: list[str] = []
        for task in tasks:
            if task.id in seen:
                taken.append(task.id)
            seen.add(task.id)
        ids = list(seen)
        async with self._reading() as conn:
            for start in range(0, len(ids), 500):
                query = select(tables.tasks.c.id).where(
                    tables.tasks.c.id.in_(ids[start : start + 500])
                )
                taken.extend((await conn.execute(query)).scalars())
        return sorted(set(taken))

    async def save_tasks(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            return
        await self._write_tasks(self._upsert_tasks, [_task_row(task) for task in tasks])

    async def _write_tasks(self, statement: _DriverStatement, rows: list[dict[str, Any]]) -> None:
        await self._write_all([(statement, rows)])

    async def _write_all(
        self, writes: Sequence[tuple[_DriverStatement, list[dict[str, Any]]]]
    ) -> None:
        """Each statement with its rows, in one transaction (SQLite: one round trip)."""
        if self._direct is None:
            async with self._writing() as conn:
                for statement, rows in writes:
                    await statement.run(conn, rows)
            return
        self._opened()
        assert self._write_lock is not None  # always set for SQLite
        async with _reachable(self.url), self._write_lock:
            await self._direct.write([(st.sql, st.params(rows)) for st, rows in writes])

    async def _write_fenced(
        self, writes: Sequence[tuple[_DriverStatement, list[dict[str, Any]]]]
    ) -> None:
        """:meth:`_write_all` checking the fence (:meth:`Store.fence`) in the same
        transaction: :class:`Fenced`, nothing written, once the lease's term moved on."""
        fence = self.fenced_by
        if fence is None:
            await self._write_all(writes)
            return
        async with _reachable(self.url):
            if self._direct is None:
                async with self._writing() as conn:
                    await self._check_fence(conn, *fence)
                    for statement, rows in writes:
                        await statement.run(conn, rows)
                return
            self._opened()
            assert self._write_lock is not None  # always set for SQLite
            async with self._write_lock:
                await self._direct.write(
                    [(st.sql, st.params(rows)) for st, rows in writes], _fence_guard(*fence)
                )

    async def get_task(self, task_id: str) -> Task | None:
        if _unstorable(task_id):
            return None
        if self._direct is not None:
            self._opened()
            async with _reachable(self.url):
                found = await self._direct.scalar("SELECT doc FROM tasks WHERE id = ?", (task_id,))
            if found is None:
                return None
            with contextlib.suppress(ValidationError):
                return Task.model_validate_json(found)
            # an older version's document: read it the long way, with its row's columns
        query = select(tables.tasks).where(tables.tasks.c.id == task_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return _doc(Task, row)

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        worker_id: str | None = None,
        name: str | None = None,
        after: Position | None = None,
        newest_first: bool = False,
        limit: int = 100,
        offset: int = 0,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Task], int]:
        keys = (state, job_id, workflow_id, worker_id, name, *(projects or ()))
        if _unstorable(*keys, None if after is None else after[1]):
            return [], 0
        t = tables.tasks
        filters = [
            column == value
            for column, value in (
                (t.c.state, state),
                (t.c.job_id, job_id),
                (t.c.workflow_id, workflow_id),
                (t.c.worker_id, worker_id),
            )
            if value is not None
        ]
        if name:
            filters.append(t.c.name >= name)
            end = prefix_end(name)
            if end is not None:
                filters.append(t.c.name < end)
        if projects is not None:
            filters.append(t.c.project.in_(projects))
        count = select(func.count()).select_from(t).where(*filters)
        if after is not None:
            # a row value: one index range on (created_at, id), on both backends
            position = tuple_(t.c.created_at, t.c.id)
            cursor = tuple_(literal(after[0], Float), literal(after[1], String))
            filters.append(position < cursor if newest_first else position > cursor)
        order = (t.c.created_at.desc(), t.c.id.desc()) if newest_first else (t.c.created_at, t.c.id)
        page = select(t).where(*filters).order_by(*order).limit(limit).offset(offset)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(count)).scalar_one()
        return _docs(Task, rows), total

    async def count_tasks(self, *, projects: Sequence[str] | None = None) -> dict[str, int]:
        t = tables.tasks
        # One scan for every state (ix_tasks_state covers it), where a count per state
        # was one scan each: docs/benchmarks.md, "Task counts by state".
        query = select(t.c.state, func.count()).group_by(t.c.state)
        if projects is not None:
            # a project name PostgreSQL refuses (a NUL) has no tasks on any backend
            query = query.where(t.c.project.in_([p for p in projects if not _unstorable(p)]))
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return {state: count for state, count in rows}

    async def delete_task(self, task_id: str) -> bool:
        if _unstorable(task_id):
            return False
        async with self._writing() as conn:
            result = await conn.execute(tables.tasks.delete().where(tables.tasks.c.id == task_id))
        return result.rowcount > 0

    async def unfinished_tasks(self) -> list[Task]:
        t = tables.tasks
        query = (
            select(t)
            .where(t.c.state.not_in(sorted(TERMINAL_STATES)))
            .order_by(t.c.created_at, t.c.id)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return _docs(Task, rows)

    # workflows and jobs

    async def add_workflow(self, workflow: Workflow, tasks: Sequence[Task]) -> None:
        # The primary keys decide a race: on PostgreSQL the loser's insert waits for the
        # winner's commit, then fails, and its whole transaction rolls back.
        rows = [_task_row(task) for task in tasks]
        try:
            async with self._writing() as conn:
                await conn.execute(tables.workflows.insert(), _workflow_row(workflow))
                if rows:
                    await self._insert_tasks.run(conn, rows)
        except IntegrityError:
            if await self._workflow_exists(workflow.id):
                raise Conflict(f"workflow id already exists: {workflow.id}", field="id") from None
            taken = await self._taken_ids(tasks)
            detail = f"task ids already exist: {', '.join(taken)}" if taken else "task id taken"
            raise Conflict(detail, field="id") from None

    async def _workflow_exists(self, workflow_id: str) -> bool:
        query = select(tables.workflows.c.id).where(tables.workflows.c.id == workflow_id)
        async with self._reading() as conn:
            return (await conn.execute(query)).first() is not None

    async def save_workflows(self, workflows: Sequence[Workflow]) -> None:
        if not workflows:
            return
        async with self._writing() as conn:
            await conn.execute(self._upsert_workflows, [_workflow_row(w) for w in workflows])

    async def get_workflow(self, workflow_id: str) -> Workflow | None:
        if _unstorable(workflow_id):
            return None
        query = select(tables.workflows).where(tables.workflows.c.id == workflow_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return _doc(Workflow, row)

    async def list_workflows(
        self,
        *,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Workflow], int]:
        if _unstorable(*(projects or ())):
            return [], 0
        w = tables.workflows
        filters = [] if kind is None else [w.c.kind == kind]
        if projects is not None:
            filters.append(w.c.project.in_(projects))
        page = (
            select(w).where(*filters).order_by(w.c.created_at, w.c.id).limit(limit).offset(offset)
        )
        count = select(func.count()).select_from(w).where(*filters)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(count)).scalar_one()
        return _docs(Workflow, rows), total

    async def unfinished_workflows(self) -> list[Workflow]:
        w = tables.workflows
        query = (
            select(w)
            .where(w.c.state.not_in(sorted(TERMINAL_WORKFLOW_STATES)))
            .order_by(w.c.created_at, w.c.id)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return _docs(Workflow, rows)

    # schedules

    async def save_schedule(self, schedule: Schedule) -> None:
        async with self._writing() as conn:
            await conn.execute(self._upsert_schedule, _schedule_row(schedule))

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        if _unstorable(schedule_id):
            return None
        query = select(tables.schedules).where(tables.schedules.c.id == schedule_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return _doc(Schedule, row)

    async def list_schedules(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[Schedule], int]:
        if _unstorable(*(projects or ())):
            return [], 0
        s = tables.schedules
        filters = [] if projects is None else [s.c.project.in_(projects)]
        page = (
            select(s).where(*filters).order_by(s.c.created_at, s.c.id).limit(limit).offset(offset)
        )
        count = select(func.count()).select_from(s).where(*filters)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(count)).scalar_one()
        return _docs(Schedule, rows), total

    async def delete_schedule(self, schedule_id: str) -> bool:
        if _unstorable(schedule_id):
            return False
        async with self._writing() as conn:
            result = await conn.execute(
                tables.schedules.delete().where(tables.schedules.c.id == schedule_id)
            )
        return result.rowcount > 0

    # federated learning experiments

    async def save_fl_experiment(
        self, experiment: Experiment, blobs: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        for digest, data in blobs:
            fl_blob_fits(digest, data)
        row = {
            "id": experiment.id,
            "name": experiment.name,
            "state": experiment.state,
            "project": experiment.project,
            "created_at": experiment.created_at,
            "doc": experiment.stored_json(),
        }
        # a running experiment is written at each update, round and score: on SQLite in
        # one round trip (a task write's path), where SQLAlchemy's async layer took four
        # (BEGIN, the statement, COMMIT, the pool's reset); 6.9 % of the coordinator
        # process's samples with long-lived clients (py-spy under bench/fl.py).
        # Fenced as apply() is: a leader paused past its lease must not write its stale
        # copy over the document its successor took the experiment on with.
        # an update's blob in the write that references it: a transaction less per
        # update (bench/fl.py); a larger one than INLINE_BLOB_BYTES on the thread first
        put = [{"digest": d, "size": len(b), "data": b} for d, b in blobs]
        if self._direct is not None and any(len(b) > INLINE_BLOB_BYTES for _, b in blobs):
            for digest, data in blobs:  # megabytes on the thread, before the document
                await self.put_fl_blob(digest, data)
            put = []
        writes = [(self._put_fl_blob, put)] if put else []
        await self._write_fenced([*writes, (self._upsert_fl_experiment, [row])])

    async def get_fl_experiment(self, experiment_id: str) -> Experiment | None:
        if _unstorable(experiment_id):
            return None
        if self._direct is not None:
            # as get_task: the coordinator reads its live experiments at every pass
            self._opened()
            async with _reachable(self.url):
                found = await self._direct.scalar(
                    "SELECT doc FROM fl_experiments WHERE id = ?", (experiment_id,)
                )
            if found is None:
                return None
            with contextlib.suppress(ValidationError):
                return Experiment.model_validate_json(found)
            # an older version's document: read it the long way, with its row's columns
        e = tables.fl_experiments
        async with self._reading() as conn:
            row = (await conn.execute(select(e).where(e.c.id == experiment_id))).one_or_none()
        return _doc(Experiment, row)

    async def list_fl_experiments(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Experiment], int]:
        e = tables.fl_experiments
        page = select(e).order_by(e.c.created_at, e.c.id).limit(limit).offset(offset)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(select(func.count()).select_from(e))).scalar_one()
        return _docs(Experiment, rows), total

    async def live_fl_experiment_ids(self) -> list[str]:
        e = tables.fl_experiments
        live = select(e.c.id).where(e.c.state.not_in(sorted(FL_TERMINAL)))
        async with self._reading() as conn:
            rows = (await conn.execute(live.order_by(e.c.created_at, e.c.id))).all()
        return [row.id for row in rows]

    # their blobs

    async def put_fl_blob(self, digest: str, data: bytes) -> None:
        fl_blob_fits(digest, data)
        rows = [{"digest": digest, "size": len(data), "data": data}]
        if self._direct is None:
            async with self._writing() as conn:
                await self._put_fl_blob.run(conn, rows)
            return
        self._opened()
        assert self._write_lock is not None  # always set for SQLite
        statement = [(self._put_fl_blob.sql, self._put_fl_blob.params(rows))]
        async with _reachable(self.url), self._write_lock:
            # megabytes are never written on the event loop: on the thread. A small one
            # (the digits model's update, 2.6 KB) inline: the hop to the thread and back
            # was most of its cost, four times a round (py-spy under bench/fl.py)
            await self._direct.write(statement, inline=len(data) <= INLINE_BLOB_BYTES)

    async def get_fl_blob(self, digest: str) -> bytes | None:
        if _unstorable(digest):
            return None
        b = tables.fl_blobs
        async with self._reading() as conn:
            data = (await conn.execute(select(b.c.data).where(b.c.digest == digest))).scalar()
        return None if data is None else bytes(data)

    async def missing_fl_blobs(self, digests: Sequence[str]) -> set[str]:
        fl_blob_batch(digests)
        wanted = {d for d in digests if not _unstorable(d)}
        if not wanted:
            return set(digests)
        b = tables.fl_blobs
        query = select(b.c.digest).where(b.c.digest.in_(sorted(wanted)))
        async with self._reading() as conn:
            stored = set((await conn.execute(query)).scalars())
        return set(digests) - stored

    async def fl_blob_digests(self, after: str = "", limit: int = MAX_FL_BLOB_BATCH) -> list[str]:
        fl_blob_limit(limit)
        b = tables.fl_blobs
        query = select(b.c.digest).where(b.c.digest > after).order_by(b.c.digest).limit(limit)
        async with self._reading() as conn:
            return list((await conn.execute(query)).scalars())

    async def delete_fl_blobs(self, digests: Sequence[str]) -> int:
        fl_blob_batch(digests)
        wanted = sorted({d for d in digests if not _unstorable(d)})
        if not wanted:
            return 0
        b = tables.fl_blobs
        fence = self.fenced_by
        if self._direct is not None:
            # SQLite in one round trip, as the writes of tasks: through SQLAlchemy's async
            # layer (BEGIN, the fence, the delete, COMMIT, each a hop to its thread) the
            # deletes of a round's updates were 9 % of the coordinator process's CPU with
            # long-lived clients (py-spy --gil under bench/fl.py, 100 rounds)
            self._opened()
            assert self._write_lock is not None  # always set for SQLite
            guard = None if fence is None else _fence_guard(*fence)
            rows = [(digest,) for digest in wanted]
            async with _reachable(self.url), self._write_lock:
                return await self._direct.write(
                    [("DELETE FROM fl_blobs WHERE digest = ?", rows)], guard, inline=False
                )
        async with _reachable(self.url), self._writing() as conn:
            if fence is not None:
                await self._check_fence(conn, *fence)
            result = await conn.execute(b.delete().where(b.c.digest.in_(wanted)))
        return int(result.rowcount or 0)

    async def delete_fl_experiment(self, experiment_id: str) -> bool:
        e = tables.fl_experiments
        async with self._writing() as conn:
            result = await conn.execute(e.delete().where(e.c.id == experiment_id))
        return bool(result.rowcount)

    # the chute store

    async def publish_chute(
        self, record: ChuteVersionRecord, manifest: str, *, max_versions: int
    ) -> tuple[ChuteVersionRecord, bool]:
        names, versions = tables.store_chutes, tables.store_chute_versions
        ins = sqlite.insert if self._sqlite else postgresql.insert
        claim = ins(names).values(
            name=record.name, project=record.project, created_at=record.published_at
        )
        owner = select(names.c.project).where(names.c.name == record.name)
        if not self._sqlite:  # one publication of a name at a time (SQLite: one writer)
            owner = owner.with_for_update()
        this = (versions.c.name == record.name) & (versions.c.version == record.version)
        live = select(func.count()).where(versions.c.name == record.name, ~versions.c.deleted)
        row_values = {
            "digest": record.digest,
            "description": record.description,
            "published_at": record.published_at,
            "published_by": record.published_by,
            "deleted": False,
            "doc": manifest,
        }
        async with self._writing() as conn:
            await conn.execute(claim.on_conflict_do_nothing(index_elements=[names.c.name]))
            if (await conn.execute(owner)).scalar_one() != record.project:
                raise name_taken(record.name)
            found = (await conn.execute(select(*_VERSION_COLUMNS).where(this))).first()
            if found is not None and not (found.deleted and found.digest == record.digest):
                return _chute_version(found, record.project), False
            if (await conn.execute(live)).scalar_one() >= max_versions:
                raise too_many_versions(record.name, max_versions)
            if found is None:
                await conn.execute(
                    versions.insert().values(name=record.name, version=record.version, **row_values)
                )
            else:  # deleted with this very content: published again
                await conn.execute(versions.update().where(this).values(**row_values))
        return replace(record, deleted=False), True

    async def get_store_chute(self, name: str) -> StoreChuteRecord | None:
        if _unstorable(name):
            return None
        names = tables.store_chutes
        async with self._reading() as conn:
            row = (await conn.execute(select(names).where(names.c.name == name))).first()
            if row is None:
                return None
            found = await self._live_versions(conn, [name], {name: row.project})
        return StoreChuteRecord(row.name, row.project, row.created_at, tuple(found[name]))

    @staticmethod
    async def _live_versions(
        conn: AsyncConnection, names: list[str], projects: dict[str, str]
    ) -> dict[str, list[ChuteVersionRecord]]:
        versions = tables.store_chute_versions
        query = select(*_VERSION_COLUMNS).where(versions.c.name.in_(names), ~versions.c.deleted)
        found: dict[str, list[ChuteVersionRecord]] = {name: [] for name in names}
        for row in (await conn.execute(query)).all():
            found[row.name].append(_chute_version(row, projects[row.name]))
        return found

    async def list_store_chutes(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[StoreChuteRecord], int]:
        names, versions = tables.store_chutes, tables.store_chute_versions
        has_live = (
            select(versions.c.name)
            .where(versions.c.name == names.c.name, ~versions.c.deleted)
            .exists()
        )
        where = [has_live] if projects is None else [has_live, names.c.project.in_(projects)]
        page = select(names).where(*where).order_by(names.c.name).limit(limit).offset(offset)
        total = select(func.count()).select_from(names).where(*where)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            count = (await conn.execute(total)).scalar_one()
            owners = {row.name: row.project for row in rows}
            found = await self._live_versions(conn, list(owners), owners)
        return [
            StoreChuteRecord(row.name, row.project, row.created_at, tuple(found[row.name]))
            for row in rows
        ], count

    async def get_chute_version(
        self, name: str, version: str
    ) -> tuple[ChuteVersionRecord, str] | None:
        if _unstorable(name, version):
            return None
        names, versions = tables.store_chutes, tables.store_chute_versions
        query = (
            select(versions, names.c.project)
            .join(names, names.c.name == versions.c.name)
            .where(versions.c.name == name, versions.c.version == version, ~versions.c.deleted)
        )
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (_chute_version(row, row.project), row.doc)

    async def delete_chute_version(self, name: str, version: str) -> bool:
        if _unstorable(name, version):
            return False
        versions = tables.store_chute_versions
        query = (
            versions.update()
            .where(versions.c.name == name, versions.c.version == version, ~versions.c.deleted)
            .values(deleted=True, doc="")
        )
        async with self._writing() as conn:
            result = await conn.execute(query)
        return result.rowcount > 0

    # applications

    async def save_application(self, app: Application) -> None:
        async with self._writing() as conn:
            await conn.execute(self._upsert_application, _application_row(app))

    async def get_application(self, app_id: str) -> Application | None:
        if _unstorable(app_id):
            return None
        query = select(tables.applications).where(tables.applications.c.id == app_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return _doc(Application, row)

    async def list_applications(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Application], int]:
        a = tables.applications
        page = select(a).order_by(a.c.created_at, a.c.id).limit(limit).offset(offset)
        count = select(func.count()).select_from(a)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(count)).scalar_one()
        return _docs(Application, rows), total

    async def delete_application(self, app_id: str) -> bool:
        if _unstorable(app_id):
            return False
        async with self._writing() as conn:
            result = await conn.execute(
                tables.applications.delete().where(tables.applications.c.id == app_id)
            )
        return result.rowcount > 0

    # workers

    async def save_workers(self, workers: Sequence[Worker]) -> None:
        if not workers:
            return
        async with self._writing() as conn:
            await conn.execute(self._upsert_worker, [_worker_row(w) for w in workers])

    async def get_worker(self, worker_id: str) -> Worker | None:
        if _unstorable(worker_id):
            return None
        query = select(tables.workers).where(tables.workers.c.id == worker_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return _doc(Worker, row)

    async def list_workers(self, *, limit: int = 100, offset: int = 0) -> tuple[list[Worker], int]:
        w = tables.workers
        page = select(w).order_by(w.c.id).limit(limit).offset(offset)
        count = select(func.count()).select_from(w)
        async with self._reading() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(count)).scalar_one()
        return _docs(Worker, rows), total

    async def delete_worker(self, worker_id: str) -> bool:
        if _unstorable(worker_id):
            return False
        async with self._writing() as conn:
            result = await conn.execute(
                tables.workers.delete().where(tables.workers.c.id == worker_id)
            )
        return result.rowcount > 0

    # tokens

    async def save_token(self, token: TokenRecord) -> None:
        row = {
            "id": token.id,
            "secret_hash": token.secret_hash,
            "user": token.user,
            "role": token.role,
            "created_at": token.created_at,
            "expires_at": token.expires_at,
            "scopes": " ".join(token.scopes),
            "projects": " ".join(token.projects),
            "kind": token.kind,
            "name": token.name,
        }
        try:
            async with self._writing() as conn:
                await conn.execute(self._upsert_token, row)
        except IntegrityError:
            raise Conflict("another token has the same secret", field="secret_hash") from None

    async def find_token(self, secret_hash: str) -> TokenRecord | None:
        if _unstorable(secret_hash):
            return None
        query = select(tables.tokens).where(tables.tokens.c.secret_hash == secret_hash)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else _token(row)

    async def delete_token(self, token_id: str) -> bool:
        if _unstorable(token_id):
            return False
        async with self._writing() as conn:
            result = await conn.execute(
                tables.tokens.delete().where(tables.tokens.c.id == token_id)
            )
        return result.rowcount > 0

    async def get_token(self, token_id: str) -> TokenRecord | None:
        if _unstorable(token_id):
            return None
        query = select(tables.tokens).where(tables.tokens.c.id == token_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else _token(row)

    async def list_tokens(self, *, user: str | None = None) -> list[TokenRecord]:
        query = select(tables.tokens).order_by(tables.tokens.c.created_at, tables.tokens.c.id)
        if user is not None:
            if _unstorable(user):
                return []
            query = query.where(tables.tokens.c.user == user)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_token(row) for row in rows]

    # users

    async def add_user(self, user: UserRecord) -> None:
        row = {
            "name": user.name,
            "role": user.role,
            "projects": " ".join(user.projects),
            "password_hash": user.password_hash,
            "created_at": user.created_at,
        }
        try:
            async with self._writing() as conn:
                await conn.execute(tables.users.insert(), row)
        except IntegrityError:
            raise Conflict(f"user {user.name!r} exists", field="name") from None

    async def get_user(self, name: str) -> UserRecord | None:
        if _unstorable(name):
            return None
        query = select(tables.users).where(tables.users.c.name == name)
        async with self._reading() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else _user(row)

    async def list_users(self) -> list[UserRecord]:
        async with self._reading() as conn:
            rows = (await conn.execute(select(tables.users).order_by(tables.users.c.name))).all()
        return [_user(row) for row in rows]

    async def delete_user(self, name: str) -> bool:
        if _unstorable(name):
            return False
        async with self._writing() as conn:
            await conn.execute(tables.tokens.delete().where(tables.tokens.c.user == name))
            result = await conn.execute(tables.users.delete().where(tables.users.c.name == name))
        return result.rowcount > 0

    # the audit log

    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        audit = tables.audit
        statement = select(audit).order_by(audit.c.id.desc()).limit(query.limit)
        texts = (query.actor, query.action, query.resource)
        if _unstorable(*texts):
            return []
        if query.before is not None:
            statement = statement.where(audit.c.id < query.before)
        if query.actor is not None:
            statement = statement.where(audit.c.actor == query.actor)
        if query.action is not None:
            statement = statement.where(audit.c.action == query.action)
        if query.since is not None:
            statement = statement.where(audit.c.at >= query.since)
        if query.until is not None:
            statement = statement.where(audit.c.at < query.until)
        if query.resource is not None:
            kind, resource_id = split_resource(query.resource)
            statement = statement.where(audit.c.resource == kind)
            if resource_id is not None:
                statement = statement.where(audit.c.resource_id == resource_id)
        async with self._reading() as conn:
            rows = (await conn.execute(statement)).all()
        return [AuditRecord(**row._mapping) for row in rows]
