"""The store interface. Backends: memory (tests), SQL (SQLite default, PostgreSQL)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgeplane.errors import Conflict, Invalid
from edgeplane.fl.state import Experiment
from edgeplane.model import Application, Schedule, Task, Worker, Workflow
from edgeplane.model.audit import AuditQuery, AuditRecord
from edgeplane.model.listing import Position
from edgeplane.store.leases import Claim, Lease

Kind = Literal["task", "workflow", "schedule", "application", "worker"]

#: The largest federated learning blob (a model version or an update, raw ``f32``): the
#: API's bound on an update's body (``api/fl.py``), 64M float32 parameters. A row of it
#: is read and written whole; the coordinator keeps models well under it.
MAX_FL_BLOB = 256 * 2**20
#: The most digests one :meth:`Store.missing_fl_blobs` call asks about.
MAX_FL_BLOB_BATCH = 1000
_HEX = frozenset("0123456789abcdef")


def fl_blob_digest(digest: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 lowercase hex digits; else Invalid."""
    algo, _, hexes = digest.partition(":")
    if algo != "sha256" or len(hexes) != 64 or not _HEX.issuperset(hexes):
        raise Invalid(f"not a sha256 digest: {digest[:80]!r}", field="digest")
    return digest


def fl_blob_batch(digests: Sequence[str]) -> None:
    """Invalid when one call asks about more than :data:`MAX_FL_BLOB_BATCH` digests."""
    if len(digests) > MAX_FL_BLOB_BATCH:
        raise Invalid(
            f"at most {MAX_FL_BLOB_BATCH} digests at once, not {len(digests)}", field="digests"
        )


def fl_blob_limit(limit: int) -> None:
    """Invalid unless ``limit`` is 1 to :data:`MAX_FL_BLOB_BATCH`."""
    if not 1 <= limit <= MAX_FL_BLOB_BATCH:
        raise Invalid(f"limit is 1 to {MAX_FL_BLOB_BATCH}, not {limit}", field="limit")


def fl_blob_fits(digest: str, data: bytes) -> None:
    """Invalid unless ``digest`` is well formed and ``data`` at most :data:`MAX_FL_BLOB`."""
    fl_blob_digest(digest)
    if len(data) > MAX_FL_BLOB:
        raise Invalid(
            f"a federated learning blob is at most {MAX_FL_BLOB} bytes, not {len(data)}",
            field="data",
        )


@dataclass
class Batch:
    """Changes the journal writes in one transaction: new documents (inserted, so an id
    that is taken makes the whole batch a :class:`Conflict`), then upserts, then deletes."""

    new_workflows: list[Workflow] = field(default_factory=list)
    new_tasks: list[Task] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    workflows: list[Workflow] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    applications: list[Application] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    deleted: list[tuple[Kind, str]] = field(default_factory=list)
    #: audit records to append (their ``id`` is given by the store)
    audit: list[AuditRecord] = field(default_factory=list)
    #: retention: drop audit records older than this, and all but the newest so many
    audit_prune: AuditPrune | None = None

    def __len__(self) -> int:
        return sum(
            len(part)
            for part in (
                self.new_workflows,
                self.new_tasks,
                self.tasks,
                self.workflows,
                self.schedules,
                self.applications,
                self.workers,
                self.deleted,
                self.audit,
            )
        ) + (self.audit_prune is not None)


@dataclass(frozen=True)
class AuditPrune:
    """Drop audit records written before ``before`` (seconds since the epoch), then all
    but the newest ``keep``."""

    before: float
    keep: int


@dataclass(frozen=True)
class TokenRecord:
    """A token; only the sha256 of the secret is stored.

    ``kind``: ``api`` (long-lived, made by ``POST /tokens``), ``access`` (short-lived, from
    a login or a refresh) or ``refresh`` (only good at ``/auth/refresh``). ``scopes`` narrow
    what it may do below its role (empty: all the role allows); ``projects`` are the
    projects it sees (its user's; ignored for admins, who see all). ``expires_at`` None:
    never expires.
    """

    id: str
    user: str
    role: str
    secret_hash: str
    created_at: float
    expires_at: float | None = None
    scopes: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    kind: str = "api"
    name: str = ""


@dataclass(frozen=True)
class UserRecord:
    """A user: a role, the projects they belong to, an argon2 hash of their password."""

    name: str
    role: str
    projects: tuple[str, ...]
    password_hash: str
    created_at: float


@dataclass(frozen=True)
class ChuteVersionRecord:
    """A version in the chute store (docs/chutes.md), written once and never changed. A
    deleted one keeps its name, version and digest (not its manifest): that pair is never
    published again with other content."""

    name: str
    version: str
    #: its chute's (the name's) project
    project: str
    description: str
    #: ``sha256:`` of the manifest's canonical JSON (``edgeplane.chutes.catalog``)
    digest: str
    published_at: float
    published_by: str
    deleted: bool = False


@dataclass(frozen=True)
class StoreChuteRecord:
    """A chute name in the store: the project it belongs to (its first version's, for
    good) and its live versions, in no order."""

    name: str
    project: str
    created_at: float
    versions: tuple[ChuteVersionRecord, ...] = ()


def name_taken(name: str) -> Conflict:
    """A chute name is another project's (the store says no more: who asks may not see it)."""
    return Conflict(f"the chute name {name!r} is taken by another project", field="name")


def too_many_versions(name: str, most: int) -> Conflict:
    return Conflict(
        f"chute {name!r} has {most} versions, the most it may: delete old ones first",
        field="version",
    )


class Store(ABC):
    """Durable state of a manager. All methods are safe to call concurrently."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return when the store answers; :class:`Unavailable` when it does not."""

    @abstractmethod
    async def apply(self, batch: Batch) -> None:
        """Write a batch in one transaction, all or nothing. :class:`Conflict` (nothing
        written) when a new document's id is taken; :class:`Unavailable` when the store
        cannot be reached; :class:`Fenced` (nothing written) when :meth:`fence` was
        called and the lease's term has moved on."""

    def fence(self, lease: str, term: int) -> None:
        """From now on :meth:`apply` writes only while lease ``lease`` is in ``term``: the
        check and the write are one transaction (``edgeplane.store.leases``)."""
        self.fenced_by = (lease, term)

    #: (lease name, term) every :meth:`apply` checks, or None
    fenced_by: tuple[str, int] | None = None

    # leases (edgeplane.store.leases): each call is one transaction
    @abstractmethod
    async def claim_lease(self, name: str, claim: Claim, now: float) -> Lease:
        """Claim lease ``name`` (see ``leases.claimed``); the lease as it is afterwards,
        the claimant's or still another's."""

    @abstractmethod
    async def renew_lease(
        self, name: str, holder: str, term: int, now: float, ttl_s: float
    ) -> bool:
        """Extend the holder's lease; False when ``holder`` no longer holds it in ``term``."""

    @abstractmethod
    async def release_lease(self, name: str, holder: str, term: int) -> None:
        """Give the lease up (it expires now) if ``holder`` holds it in ``term``."""

    @abstractmethod
    async def get_lease(self, name: str) -> Lease | None: ...

    # artifacts (content-addressed module bytes)
    @abstractmethod
    async def put_artifact(self, digest: str, data: bytes) -> None:
        """Idempotent: storing the same digest twice is a no-op."""

    @abstractmethod
    async def get_artifact(self, digest: str) -> bytes | None: ...

    # tasks
    @abstractmethod
    async def add_tasks(self, tasks: Sequence[Task]) -> None:
        """Insert new tasks in one transaction (all or none)."""

    @abstractmethod
    async def save_tasks(self, tasks: Sequence[Task]) -> None:
        """Upsert full task documents in one transaction."""

    @abstractmethod
    async def get_task(self, task_id: str) -> Task | None: ...

    @abstractmethod
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
        """A page of tasks, oldest first (``newest_first``: newest first), and the total
        matching the filters. ``name`` is a prefix (empty: any name); ``after`` a position
        (``created_at``, ``id``) the page starts after, in the page's order (not counted in
        the total); ``projects``: only theirs (None: all)."""

    @abstractmethod
    async def count_tasks(self, *, projects: Sequence[str] | None = None) -> dict[str, int]:
        """How many tasks are in each state (states with none left out), in one read;
        ``projects``: only theirs (None: all)."""

    @abstractmethod
    async def delete_task(self, task_id: str) -> bool: ...

    @abstractmethod
    async def unfinished_tasks(self) -> list[Task]:
        """Every task not in a terminal state (for a manager restart)."""

    # workflows and jobs (one table; ``kind`` tells them apart; ``tasks`` is never stored)
    @abstractmethod
    async def add_workflow(self, workflow: Workflow, tasks: Sequence[Task]) -> None:
        """Insert a workflow and its tasks in one transaction; :class:`Conflict` (nothing
        inserted) when the workflow id or a task id exists — how a cron slot fires once."""

    @abstractmethod
    async def save_workflows(self, workflows: Sequence[Workflow]) -> None:
        """Upsert workflow documents in one transaction."""

    @abstractmethod
    async def get_workflow(self, workflow_id: str) -> Workflow | None: ...

    @abstractmethod
    async def list_workflows(
        self,
        *,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        projects: Sequence[str] | None = None,
    ) -> tuple[list[Workflow], int]:
        """A page, oldest first, and the total of that kind."""

    @abstractmethod
    async def unfinished_workflows(self) -> list[Workflow]:
        """Workflows not completed, failed or cancelled (for a manager restart)."""

    # schedules
    @abstractmethod
    async def save_schedule(self, schedule: Schedule) -> None:
        """Upsert."""

    @abstractmethod
    async def get_schedule(self, schedule_id: str) -> Schedule | None: ...

    @abstractmethod
    async def list_schedules(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[Schedule], int]: ...

    @abstractmethod
    async def delete_schedule(self, schedule_id: str) -> bool: ...

    # federated learning experiments (written by the coordinator, outside the journal)
    @abstractmethod
    async def save_fl_experiment(
        self, experiment: Experiment, blobs: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Upsert; ``blobs`` (``(digest, data)``, as :meth:`put_fl_blob` takes them, what
        the document references) are stored no later than it, in its transaction when
        small. Fenced; :class:`Invalid` (nothing written) for a blob put_fl_blob refuses."""

    @abstractmethod
    async def get_fl_experiment(self, experiment_id: str) -> Experiment | None: ...

    @abstractmethod
    async def list_fl_experiments(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Experiment], int]:
        """A page, oldest first, and the total."""

    @abstractmethod
    async def live_fl_experiment_ids(self) -> list[str]:
        """Ids of the experiments not ended (completed, failed, stopped), oldest first:
        what the coordinator steps, without reading every experiment ever run."""

    # their blobs (edgeplane.fl.registry): model versions and accepted updates, by the
    # sha256 of their bytes, written once; any manager on the store reads them
    @abstractmethod
    async def put_fl_blob(self, digest: str, data: bytes) -> None:
        """Store ``data`` as ``digest`` (the caller's ``sha256:<hex>`` of it); a no-op when
        the digest is stored (the first bytes stay). :class:`Invalid` (nothing written)
        for a malformed digest or more than :data:`MAX_FL_BLOB` bytes. Not fenced: a
        blob is only ever reachable through a fenced experiment write."""

    @abstractmethod
    async def get_fl_blob(self, digest: str) -> bytes | None:
        """The bytes of ``digest``; None when it is not stored (or not a digest)."""

    @abstractmethod
    async def missing_fl_blobs(self, digests: Sequence[str]) -> set[str]:
        """Which of ``digests`` (at most :data:`MAX_FL_BLOB_BATCH`) are not stored."""

    @abstractmethod
    async def fl_blob_digests(self, after: str = "", limit: int = MAX_FL_BLOB_BATCH) -> list[str]:
        """The stored digests after ``after``, in order, at most ``limit`` (1 to
        :data:`MAX_FL_BLOB_BATCH`): a full prune pages through them for blobs no
        experiment references (a put whose referencing write then failed)."""

    @abstractmethod
    async def delete_fl_blobs(self, digests: Sequence[str]) -> int:
        """Delete ``digests`` (at most :data:`MAX_FL_BLOB_BATCH`; those not stored are
        skipped), in one transaction, fenced like the journal's writes: a manager that no
        longer leads deletes nothing (:class:`Fenced`). How many were deleted. The
        caller (``fl/prune.py``) decides that no experiment references them."""

    @abstractmethod
    async def delete_fl_experiment(self, experiment_id: str) -> bool:
        """Delete the experiment's document (its blobs: ``delete_fl_blobs``); whether
        there was one."""

    # the chute store (docs/chutes.md): published manifests, immutable by name and version
    @abstractmethod
    async def publish_chute(
        self, record: ChuteVersionRecord, manifest: str, *, max_versions: int
    ) -> tuple[ChuteVersionRecord, bool]:
        """In one transaction: claim the name for ``record.project`` if it is new, then
        write the version (``manifest``: its canonical JSON) unless ``name@version``
        exists. A deleted version is written again only with the same digest. Returns
        the version as stored and whether this call wrote it (False: the stored one,
        which the caller compares). :class:`Conflict`, nothing written, naming ``name``
        when the name is another project's, ``version`` when it has ``max_versions``
        live versions already."""

    @abstractmethod
    async def get_store_chute(self, name: str) -> StoreChuteRecord | None:
        """The name with its live versions; None when it was never published."""

    @abstractmethod
    async def list_store_chutes(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[StoreChuteRecord], int]:
        """A page of the names with a live version, by name, and their total
        (``projects``: only theirs; None: all)."""

    @abstractmethod
    async def get_chute_version(
        self, name: str, version: str
    ) -> tuple[ChuteVersionRecord, str] | None:
        """A live version and its manifest's canonical JSON."""

    @abstractmethod
    async def delete_chute_version(self, name: str, version: str) -> bool:
        """Mark a live version deleted (its manifest is dropped, its digest kept); False
        when there is no such live version."""

    # applications
    @abstractmethod
    async def save_application(self, app: Application) -> None:
        """Insert, or replace the whole document of the application with this id. Ids are
        unique, names are not: two applications may share a name."""

    @abstractmethod
    async def get_application(self, app_id: str) -> Application | None: ...

    @abstractmethod
    async def list_applications(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Application], int]:
        """A page, oldest first (ties by id), and the total."""

    @abstractmethod
    async def delete_application(self, app_id: str) -> bool: ...

    # workers
    @abstractmethod
    async def save_workers(self, workers: Sequence[Worker]) -> None:
        """Insert or replace workers by id, in one transaction."""

    @abstractmethod
    async def get_worker(self, worker_id: str) -> Worker | None: ...

    @abstractmethod
    async def list_workers(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[Worker], int]: ...

    @abstractmethod
    async def delete_worker(self, worker_id: str) -> bool: ...

    # tokens
    @abstractmethod
    async def save_token(self, token: TokenRecord) -> None: ...

    @abstractmethod
    async def find_token(self, secret_hash: str) -> TokenRecord | None: ...

    @abstractmethod
    async def delete_token(self, token_id: str) -> bool: ...

    @abstractmethod
    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abstractmethod
    async def list_tokens(self, *, user: str | None = None) -> list[TokenRecord]:
        """Tokens, oldest first: every user's, or ``user``'s."""

    # users
    @abstractmethod
    async def add_user(self, user: UserRecord) -> None:
        """Insert; :class:`Conflict` naming ``name`` when the name is taken."""

    @abstractmethod
    async def get_user(self, name: str) -> UserRecord | None: ...

    @abstractmethod
    async def list_users(self) -> list[UserRecord]:
        """Every user, by name."""

    @abstractmethod
    async def delete_user(self, name: str) -> bool:
        """Delete the user and every token of theirs, in one transaction."""

    # the audit log (written only through :meth:`apply`: ``Batch.audit``)
    @abstractmethod
    async def list_audit(self, query: AuditQuery) -> list[AuditRecord]:
        """At most ``query.limit`` records matching it, newest (highest ``id``) first."""
