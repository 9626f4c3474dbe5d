"""kill -9 of a worker running host tasks, with a real manager, real workers and the
tasks' own processes (docs/architecture.md, "Delivery guarantees").

Every task appends one line (its label) to a shared file, writes its pid, then waits for
a "go" file of its own attempt, which the test creates when it wants that attempt to end:
the n-th attempt of a task is the one that sees n lines of its label. So the file counts
how many times each task ran, and the test decides, by condition rather than by time,
which attempts end while their worker is dead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeplane.transport import free_port
from faults.procs import Lab, Role, alive, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(180)]

TASKS = 6


class Scene:
    """A manager on the lab's broker with a grace period of ``grace_s``, its API, its
    workers, and the host tasks' files."""

    def __init__(self, lab: Lab, grace_s: float) -> None:
        self.lab = lab
        self.files = lab.root / "files"
        self.files.mkdir()
        port = free_port()
        self.manager = lab.manager(port, "--lost-grace-s", str(grace_s)).start()
        self.api = lab.api(port)
        self.api.wait_healthy(self.manager)
        self.http = self.api.http
        self.workers: dict[str, Role] = {}
        self.ids: dict[int, str] = {}  # label -> task id

    def worker(self, worker_id: str) -> Role:
        """Start worker ``worker_id``, or start it again (same id, same data dir)."""
        role = self.workers.get(worker_id)
        if role is None:  # a slot for every task; prefetch: the workers' default
            role = self.workers[worker_id] = self.lab.worker(worker_id, slots=TASKS, prefetch=4)
        role.start()
        self.until_worker(worker_id, "online")
        return role

    def until_worker(self, worker_id: str, state: str) -> dict[str, Any]:
        return wait_until(
            lambda: (doc := self.api.worker(worker_id)) and doc["state"] == state and doc,
            f"worker {worker_id} to be {state}",
            watch=[self.manager],
        )

    def handles(self, worker_id: str) -> list[Path]:
        directory = self.lab.root / worker_id / "worker" / "handles"
        return list(directory.iterdir()) if directory.is_dir() else []

    def submit(self, retries: int) -> None:
        f = self.files
        specs = []
        for label in range(TASKS):
            script = (
                f"echo {label} >> {f}/lines; n=$(grep -cx {label} {f}/lines); "
                f"echo $$ > {f}/pid-{label}-$n; "
                f"while [ ! -e {f}/go-{label}-$n ]; do sleep 0.05; done"
            )
            specs.append(
                {
                    "runtime": "host",
                    "command": ["sh", "-c", script],
                    "retries": retries,
                    "start": True,
                }
            )
        created = self.http.post("/tasks/batch", json={"tasks": specs})
        assert created.status_code == 201, created.text
        self.ids = {label: t["id"] for label, t in enumerate(created.json()["items"])}

    def running_on(self, worker_id: str, *, retries: int) -> Role:
        """Start ``worker_id`` and submit the tasks; the worker, once every task runs and
        every command started."""
        worker = self.worker(worker_id)
        self.submit(retries=retries)
        self.until_tasks(f"every task to run on {worker_id}", lambda t: t["state"] == "running")
        wait_until(lambda: sum(self.lines().values()) == TASKS, "every command to start")
        return worker

    def tasks(self) -> dict[int, dict[str, Any]]:
        return {label: self.http.get(f"/tasks/{tid}").json() for label, tid in self.ids.items()}

    def until_tasks(self, what: str, ok: Any) -> dict[int, dict[str, Any]]:
        try:
            return wait_until(
                lambda: (tasks := self.tasks()) and all(ok(t) for t in tasks.values()) and tasks,
                what,
            )
        except AssertionError:
            seen = [
                (t["state"], t["attempt"], t["worker_id"], t["reason"], t["error"])
                for t in self.tasks().values()
            ]
            raise AssertionError(f"timed out waiting for {what}: {seen}") from None

    def lines(self) -> dict[int, int]:
        """How many times each task's command ran (its label's lines)."""
        text = (self.files / "lines").read_text() if (self.files / "lines").exists() else ""
        written = text.split()
        return {label: written.count(str(label)) for label in range(TASKS)}

    def pid(self, label: int, attempt: int) -> int:
        return int((self.files / f"pid-{label}-{attempt}").read_text())

    def go(self, labels: range | list[int], attempt: int) -> None:
        for label in labels:
            (self.files / f"go-{label}-{attempt}").touch()


#: A grace period no test outlasts: what happens with it cannot be its end.
FOREVER = 600.0
#: A grace period the test sees end.
GRACE_S = 10.0


@pytest.fixture
def scene(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Scene]:
    """``indirect`` parameter: the manager's grace period (default :data:`FOREVER`)."""
    yielded = Scene(lab, getattr(request, "param", FOREVER))
    try:
        yield yielded
    finally:  # before the lab stops the processes
        yielded.go(range(TASKS), 1)  # nothing left waiting, whatever happened
        yielded.go(range(TASKS), 2)


def test_restarted_within_the_grace_period(scene: Scene) -> None:
    """The restarted worker re-attaches: every task runs once, as attempt 1, and ends
    completed, whether it ended while the worker was dead or after it was back. (The
    grace period is longer than the test may run, so the restart is within it.)"""
    # retries: the manager would have some to spend, it must not
    w1 = scene.running_on("w1", retries=2)
    assert len(scene.handles("w1")) == TASKS  # on disk before they were reported running

    w1.kill9()
    scene.until_worker("w1", "offline")
    assert all(alive(scene.pid(label, 1)) for label in range(TASKS))  # not killed with it
    early = range(TASKS // 2)
    scene.go(early, 1)  # these end while their worker is dead
    wait_until(lambda: not any(alive(scene.pid(label, 1)) for label in early), "early ends")
    during = scene.tasks()
    assert all((t["state"], t["worker_id"], t["attempt"]) == ("running", "w1", 1)
               for t in during.values()), during  # fmt: skip

    scene.worker("w1")  # same id, same data dir
    scene.go(range(TASKS), 1)
    done = scene.until_tasks("every task to end", lambda t: t["finished_at"] is not None)
    assert {
        label: (t["state"], t["attempt"], t["worker_id"], t["exit_code"])
        for label, t in done.items()
    } == {label: ("completed", 1, "w1", 0) for label in range(TASKS)}
    assert scene.lines() == {label: 1 for label in range(TASKS)}  # each ran exactly once
    wait_until(lambda: not scene.handles("w1"), "the worker to drop its acked handles")


@pytest.mark.parametrize("scene", [GRACE_S], indirect=True)
def test_not_restarted_the_tasks_run_elsewhere_only_after_the_grace_period(
    scene: Scene,
) -> None:
    w1 = scene.running_on("w1", retries=1)
    scene.worker("w2")

    w1.kill9()
    lost = scene.until_worker("w1", "offline")
    # Within the grace period: still w1's, and nothing ran a second time.
    during = scene.tasks()
    assert all((t["state"], t["worker_id"], t["attempt"]) == ("running", "w1", 1)
               for t in during.values()), during  # fmt: skip
    assert scene.lines() == {label: 1 for label in range(TASKS)}

    moved = scene.until_tasks(
        "every task to run again on w2",
        lambda t: (t["state"], t["worker_id"], t["attempt"]) == ("running", "w2", 2),
    )
    # Placed again only once the grace period was over: w1 went silent at `last_seen`
    # (the manager's clock), so no second attempt may have started before that + grace.
    assert all(t["started_at"] >= lost["last_seen"] + GRACE_S for t in moved.values()), (
        lost["last_seen"],
        [t["started_at"] for t in moved.values()],
    )

    # The old worker comes back late: half of its attempts ended while it was dead (it
    # reports them completed), the others still run (it re-attaches and reports them):
    # the manager ignores the results of the old attempt and has it stop the others.
    ended, running = list(range(TASKS // 2)), list(range(TASKS // 2, TASKS))
    scene.go(ended, 1)
    wait_until(lambda: not any(alive(scene.pid(label, 1)) for label in ended), "early ends")
    scene.worker("w1")
    wait_until(
        lambda: not any(alive(scene.pid(label, 1)) for label in running),
        "the manager to have w1 stop the attempts that are no longer its own",
    )
    wait_until(lambda: not scene.handles("w1"), "the manager to ack w1's late results")
    after = scene.tasks()
    assert all((t["state"], t["worker_id"], t["attempt"]) == ("running", "w2", 2)
               for t in after.values()), after  # fmt: skip

    scene.go(range(TASKS), 2)
    done = scene.until_tasks("every task to end", lambda t: t["finished_at"] is not None)
    assert {label: (t["state"], t["attempt"], t["worker_id"]) for label, t in done.items()} == {
        label: ("completed", 2, "w2") for label in range(TASKS)
    }
    assert scene.lines() == {label: 2 for label in range(TASKS)}


def test_a_worker_that_leaves_on_purpose_has_its_tasks_placed_again_at_once(
    scene: Scene,
) -> None:
    """It stopped its tasks as it left: nothing to wait for. (The grace period is longer
    than the test may run: the tasks moving at all shows they did not wait for it.)"""
    w1 = scene.running_on("w1", retries=1)
    scene.worker("w2")
    w1.stop()
    assert not any(alive(scene.pid(label, 1)) for label in range(TASKS))
    assert not scene.handles("w1")
    scene.until_worker("w1", "offline")
    scene.until_tasks(
        "every task to run again on w2",
        lambda t: (t["state"], t["worker_id"], t["attempt"]) == ("running", "w2", 2),
    )
