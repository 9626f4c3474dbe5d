"""SQLAlchemy Core tables of the SQL store.

Documents are kept whole as JSON text (``doc``) so the schema does not chase every model
field; the columns beside it exist only to filter and order without parsing JSON. Text
beats a JSON column type here: pydantic writes and reads JSON text in Rust, skipping the
dict round trip a JSON type costs (measured: 10 µs dump + 15 µs parse per task against
33 µs + 20 µs). Strings are unbounded so SQLite and PostgreSQL accept the same ids.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

#: Names compare by code point on both backends (SQLite's default ``BINARY``; PostgreSQL's
#: ``"C"``, whatever the database's collation), so a name prefix is one index range
#: (``edgeplane.model.listing.prefix_end``).
CodePointString = String().with_variant(String(collation="C"), "postgresql")

#: The list filters (``GET /tasks``) each have an index that also gives the list order
#: (``created_at``, ``id``), so a page of 50 newest failed tasks reads 50 index entries.
tasks = Table(
    "tasks",
    metadata,
    Column("id", String, primary_key=True),
    Column("state", String, nullable=False),
    Column("job_id", String, nullable=True),
    Column("workflow_id", String, nullable=True),
    Column("project", String, nullable=False, server_default="default"),
    Column("created_at", Float, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("name", CodePointString, nullable=False, server_default=""),
    Column("worker_id", String, nullable=True),
    Column("doc", Text, nullable=False),
    Index("ix_tasks_state", "state", "created_at", "id"),
    Index("ix_tasks_name", "name", "created_at", "id"),
    Index("ix_tasks_worker_id", "worker_id", "created_at", "id"),
    Index("ix_tasks_job_id", "job_id", "created_at", "id"),
    Index("ix_tasks_workflow_id", "workflow_id", "created_at", "id"),
    Index("ix_tasks_created_at", "created_at", "id"),
    Index("ix_tasks_priority", "priority"),
    Index("ix_tasks_project", "project", "created_at", "id"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("digest", String, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String, primary_key=True),
    Column("doc", Text, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String, primary_key=True),
    Column("secret_hash", String, nullable=False),
    Column("user", String, nullable=False),
    Column("role", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    #: space-separated (scopes and project names hold no spaces)
    Column("scopes", String, nullable=False, server_default=""),
    Column("projects", String, nullable=False, server_default=""),
    Column("kind", String, nullable=False, server_default="api"),
    Column("name", String, nullable=False, server_default=""),
    Index("ix_tokens_secret_hash", "secret_hash", unique=True),
    Index("ix_tokens_user", "user"),
)

users = Table(
    "users",
    metadata,
    Column("name", String, primary_key=True),
    Column("role", String, nullable=False),
    Column("projects", String, nullable=False),
    Column("password_hash", String, nullable=False),
    Column("created_at", Float, nullable=False),
)

#: Jobs and workflows; ``doc`` leaves out the ``tasks`` list (those rows live in ``tasks``).
workflows = Table(
    "workflows",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("state", String, nullable=False),
    Column("project", String, nullable=False, server_default="default"),
    Column("created_at", Float, nullable=False),
    Column("doc", Text, nullable=False),
    Index("ix_workflows_kind", "kind"),
    Index("ix_workflows_state", "state"),
    Index("ix_workflows_created_at", "created_at", "id"),
    Index("ix_workflows_project", "project", "created_at", "id"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String, primary_key=True),
    Column("next_run", Float, nullable=True),
    Column("project", String, nullable=False, server_default="default"),
    Column("created_at", Float, nullable=False),
    Column("doc", Text, nullable=False),
    Index("ix_schedules_next_run", "next_run"),
    Index("ix_schedules_project", "project", "created_at", "id"),
)

#: Federated learning experiments (edgeplane.fl.state): written by the coordinator only
fl_experiments = Table(
    "fl_experiments",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("state", String, nullable=False),
    Column("project", String, nullable=False, server_default="default"),
    Column("created_at", Float, nullable=False),
    Column("doc", Text, nullable=False),
    Index("ix_fl_experiments_created_at", "created_at", "id"),
)

#: Their model versions and accepted updates (``edgeplane.fl.registry``): each blob once by
#: its ``sha256:`` digest, written once and never changed; ``size`` is ``len(data)``
fl_blobs = Table(
    "fl_blobs",
    metadata,
    Column("digest", String, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

#: Ids are unique, names are not: two applications may share a name (like two tasks), so
#: a descriptor applied twice is two deployments; callers that want a name to be unique
#: look it up first.
applications = Table(
    "applications",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("project", String, nullable=False, server_default="default"),
    Column("created_at", Float, nullable=False),
    Column("doc", Text, nullable=False),
    Index("ix_applications_created_at", "created_at", "id"),
    Index("ix_applications_project", "project", "created_at", "id"),
)

#: The audit log (docs/security.md): appended by the journal's writer, read newest first
#: by ``id`` (the paging cursor; on SQLite an AUTOINCREMENT rowid, so ids are never
#: reused after pruning), pruned by age and count (``AuditPrune``).
audit = Table(
    "audit",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", Float, nullable=False),
    Column("actor", String, nullable=False),
    Column("token_id", String, nullable=True),
    Column("client", String, nullable=True),
    Column("action", String, nullable=False),
    Column("path", String, nullable=True),
    Column("route", String, nullable=True),
    Column("resource", String, nullable=True),
    Column("resource_id", String, nullable=True),
    Column("project", String, nullable=True),
    Column("status", Integer, nullable=True),
    Column("request_id", String, nullable=True),
    Column("detail", String, nullable=True),
    Index("ix_audit_at", "at"),
    Index("ix_audit_actor", "actor", "id"),
    Index("ix_audit_resource", "resource", "resource_id", "id"),
    sqlite_autoincrement=True,
)

#: edgeplane.store.leases: one row per cluster (or root) several processes may lead
leases = Table(
    "leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("holder", String, nullable=False),
    Column("home", String, nullable=False),
    Column("term", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("url", String, nullable=False, server_default=""),
    Column("lineage", String, nullable=False, server_default=""),
)

#: The chute store (docs/chutes.md): a name belongs to one project, its first version's
store_chutes = Table(
    "store_chutes",
    metadata,
    Column("name", String, primary_key=True),
    Column("project", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_store_chutes_project", "project", "name"),
)

#: Its versions, written once: ``doc`` is the manifest's canonical JSON (empty once the
#: version is deleted, when ``digest`` is all that is kept of it)
store_chute_versions = Table(
    "store_chute_versions",
    metadata,
    Column("name", String, primary_key=True),
    Column("version", String, primary_key=True),
    Column("digest", String, nullable=False),
    Column("description", String, nullable=False, server_default=""),
    Column("published_at", Float, nullable=False),
    Column("published_by", String, nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=false()),
    Column("doc", Text, nullable=False),
)
