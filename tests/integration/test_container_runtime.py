"""The container runtime with real runc and real OCI image layouts (built offline), and one
container task end to end through the API of a real manager and worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.config import Settings
from edgeplane.errors import TaskFailure
from edgeplane.model import Limits
from edgeplane.roles.up import running_stack
from edgeplane.runtimes import MAX_LOG_CHARS, ContainerRuntime, Outcome, RunSpec, available_runtimes
from edgeplane.runtimes.cgroups import io_controller
from edgeplane.runtimes.container import find_runc
from edgeplane.runtimes.supervised import process_alive
from oci_fixtures import (
    BUSYBOX_CONFIG,
    Entry,
    busybox_containers_unavailable,
    busybox_layer,
    images_with_busybox,
    tar_layer,
    write_image,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return images_with_busybox(tmp_path / "images")


@pytest.fixture
async def runtime(tmp_path: Path, images: Path) -> AsyncIterator[ContainerRuntime]:
    rt = ContainerRuntime(tmp_path / "worker", images, grace_s=0.3)
    yield rt
    await rt.close()


def task(
    command: list[str] | None,
    *,
    image: str = "busybox",
    task_id: str = "t1",
    env: dict[str, str] | None = None,
    **limits: Any,
) -> RunSpec:
    return RunSpec(
        task_id=task_id,
        attempt=1,
        runtime="container",
        image=image,
        command=command,
        env=env or {},
        limits=Limits(**limits),
    )


async def run(rt: ContainerRuntime, spec: RunSpec) -> Outcome:
    """Start, wait, and release as the worker does (the bundle is removed then)."""
    handle = await rt.start(spec, None)
    outcome = await rt.wait(handle)
    await rt.release(handle)
    return outcome


def runc_list(rt: ContainerRuntime) -> list[Any]:
    runc = find_runc()
    assert runc is not None
    argv = [runc, "--root", str(rt.state_dir), "list", "--format", "json"]
    said = subprocess.run(argv, capture_output=True, text=True, check=True)
    return list(json.loads(said.stdout) or [])


async def until_running(rt: ContainerRuntime) -> None:
    """Until runc lists a running container (``runc run`` creates it after ``start``)."""
    for _ in range(250):
        if any(c["status"] == "running" for c in runc_list(rt)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no container came up")


def assert_clean(rt: ContainerRuntime) -> None:
    assert runc_list(rt) == []
    assert not rt.bundles.exists() or list(rt.bundles.iterdir()) == []


# --- images -------------------------------------------------------------------------------


async def test_image_defaults_and_task_env(runtime: ContainerRuntime) -> None:
    outcome = await run(runtime, task(None))
    assert outcome.state == "completed", outcome
    assert outcome.results == {"stdout": "hello from busybox\n", "exit_code": 0}
    script = 'echo "$IMAGE|$FOO|$PATH|$(pwd)|$(id -u)"'
    env = {"FOO": "bar baz", "IMAGE": "mine"}
    outcome = await run(runtime, task(["sh", "-c", script], env=env))
    assert outcome.stdout == "mine|bar baz|/bin|/|0\n"


async def test_tags_pick_the_annotated_manifest(tmp_path: Path, images: Path) -> None:
    layer = busybox_layer()
    for tag in ("1.0", "2.0"):
        config = {**BUSYBOX_CONFIG, "Env": ["PATH=/bin", f"VERSION={tag}"]}
        write_image(images / "multi", [layer], config, tag=tag)
    write_image(images / "untagged", [layer], dict(BUSYBOX_CONFIG), tag=None)
    rt = ContainerRuntime(tmp_path / "worker", images, grace_s=0.3)
    try:
        for tag in ("1.0", "2.0"):
            outcome = await run(rt, task(["sh", "-c", "echo $VERSION"], image=f"multi:{tag}"))
            assert outcome.stdout == f"{tag}\n"
        with pytest.raises(TaskFailure, match="no manifest tagged 'latest'"):
            await rt.start(task(["true"], image="multi"), None)
        for ref in ("untagged", "untagged:anything"):
            assert (await run(rt, task(["true"], image=ref))).state == "completed"
        assert rt.fingerprint() == {
            "engine": "runc",
            "version": rt.fingerprint()["version"],  # type: ignore[index]
            "images": ["busybox", "multi", "untagged"],
        }
    finally:
        await rt.close()


async def test_whiteouts_of_a_two_layer_image(tmp_path: Path, images: Path) -> None:
    lower = tar_layer(
        [
            Entry("etc"),
            Entry("etc/gone", b"1"),
            Entry("etc/kept", b"2"),
            Entry("data"),
            Entry("data/old", b"3"),
            Entry("data/sub"),
            Entry("data/sub/deep", b"4"),
        ]
    )
    upper = tar_layer(
        [
            Entry("etc/.wh.gone", b""),
            Entry("data/.wh..wh..opq", b""),
            Entry("data/new", b"5"),
        ],
        compress=False,  # a plain tar layer on top of gzip ones
    )
    write_image(images / "layered", [busybox_layer(), lower, upper], dict(BUSYBOX_CONFIG))
    rt = ContainerRuntime(tmp_path / "worker", images, grace_s=0.3)
    try:
        outcome = await run(rt, task(["sh", "-c", "ls /etc; echo -; ls /data"], image="layered"))
    finally:
        await rt.close()
    assert outcome.stdout == "kept\n-\nnew\n", outcome


async def test_the_rootfs_is_unpacked_once_and_stays_untouched(
    runtime: ContainerRuntime, tmp_path: Path
) -> None:
    first = await run(runtime, task(["sh", "-c", "echo x > /tmp/mine && cat /tmp/mine"]))
    assert first.stdout == "x\n"
    second = await run(runtime, task(["sh", "-c", "ls -A /tmp; touch /bin/new"]))
    assert second.state == "failed"
    assert second.stdout == ""  # a fresh /tmp for every task
    assert "Read-only file system" in second.stderr
    (rootfs,) = runtime.images.cache_dir.iterdir()
    assert sorted(p.name for p in rootfs.iterdir()) == ["bin", "dev", "proc", "sys", "tmp"]
    assert not (rootfs / "bin" / "new").exists()


async def test_corrupt_blob_is_refused(runtime: ContainerRuntime, images: Path) -> None:
    blobs = sorted(
        (images / "busybox" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size
    )
    layer = blobs[-1]  # the biggest blob is the layer
    layer.write_bytes(layer.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(TaskFailure, match=r"does not match its digest|cannot unpack layer"):
        await runtime.start(task(["true"]), None)
    assert list(runtime.images.cache_dir.iterdir()) == []  # no half rootfs left behind


@pytest.mark.parametrize("ref", ["../busybox", "a/b", "", ".hidden", "busybox:../x", "/etc"])
async def test_bad_image_names_are_refused(runtime: ContainerRuntime, ref: str) -> None:
    with pytest.raises(TaskFailure) as info:
        await runtime.start(task(["true"], image=ref), None)
    assert info.value.field == "image"


async def test_unknown_image_is_named(runtime: ContainerRuntime) -> None:
    with pytest.raises(TaskFailure, match="image 'alpine:3': no such image"):
        await runtime.start(task(["true"], image="alpine:3"), None)


# --- running ------------------------------------------------------------------------------


async def test_failures_and_logs(runtime: ContainerRuntime) -> None:
    outcome = await run(runtime, task(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert (outcome.state, outcome.error, outcome.exit_code) == ("failed", "exit code 3", 3)
    assert outcome.results == {"stdout": "out\n", "exit_code": 3}
    assert outcome.stderr == "err\n"
    missing = await run(runtime, task(["nosuch"]))
    assert missing.state == "failed"
    assert missing.error is not None
    assert missing.error.startswith("cannot start the container:")
    assert '"nosuch": executable file not found' in missing.error
    long = await run(runtime, task(["sh", "-c", "yes x | head -c 200000; echo END"]))
    assert len(long.stdout) == MAX_LOG_CHARS
    assert long.stdout.endswith("x\nEND\n")


async def test_no_network_but_loopback(runtime: ContainerRuntime) -> None:
    outcome = await run(runtime, task(["ls", "/sys/class/net"]))
    assert outcome.stdout.split() == ["lo"]


CGROUP_V1 = Path("/sys/fs/cgroup/memory").is_dir()


async def test_limits_reach_the_cgroup(runtime: ContainerRuntime) -> None:
    v1 = CGROUP_V1
    files = (
        ["memory/memory.limit_in_bytes", "pids/pids.max", "cpu/cpu.shares"]
        if v1
        else ["memory.max", "pids.max", "cpu.weight"]
    )
    script = "cat " + " ".join(f"/sys/fs/cgroup/{f}" for f in files)
    outcome = await run(runtime, task(["sh", "-c", script], memory_mb=32, pids=8, cpu_shares=512))
    assert outcome.state == "completed", outcome
    memory, pids, cpu = outcome.stdout.split()
    assert (int(memory), pids) == (32 * 2**20, "8")
    assert int(cpu) == (512 if v1 else 20)  # runc maps shares 512 to weight 20 on v2


async def test_the_pids_limit_stops_a_fork_bomb(runtime: ContainerRuntime) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait"
    outcome = await run(runtime, task(["sh", "-c", script], pids=4, timeout_s=20))
    assert "can't fork" in outcome.stderr


async def test_timeout_and_cleanup(runtime: ContainerRuntime) -> None:
    script = "trap '' TERM; sleep 30 & sleep 30"  # ignores SIGTERM: SIGKILL ends it
    handle = await runtime.start(task(["sh", "-c", script], timeout_s=0.5), None)
    await until_running(runtime)
    outcome = await runtime.wait(handle)
    assert (outcome.state, outcome.error) == ("failed", "timeout after 0.5s")
    await runtime.release(handle)
    assert_clean(runtime)


async def test_stats_and_stop(runtime: ContainerRuntime) -> None:
    handle = await runtime.start(task(["sh", "-c", "sleep 30 & sleep 30"]), None)
    await until_running(runtime)
    first = await runtime.stats(handle)
    io = {"io_read_bytes", "io_write_bytes"} if io_controller() is None else set()
    assert set(first) == {"cpu_percent", "memory_mb", "processes", *io}
    assert first["memory_mb"] > 0
    assert first["processes"] >= 1
    assert (await runtime.stats(handle))["cpu_percent"] >= 0
    await runtime.stop(handle)
    assert (await runtime.wait(handle)).state == "cancelled"
    assert await runtime.stats(handle) == {}
    await runtime.release(handle)
    assert_clean(runtime)


#: A worker that starts a container, prints its handle's state and waits to be killed.
CRASHING_WORKER = """
import asyncio, json, sys
from pathlib import Path
from edgeplane.runtimes import ContainerRuntime, RunSpec

async def main():
    rt = ContainerRuntime(Path(sys.argv[1]), Path(sys.argv[2]))
    script = sys.argv[3] if len(sys.argv) > 3 else "echo up; sleep 30"
    spec = RunSpec(task_id="t1", attempt=1, runtime="container", image="busybox",
                   command=["sh", "-c", script])
    handle = await rt.start(spec, None)
    print(json.dumps(handle.state), flush=True)
    await asyncio.Event().wait()  # until the test kills this process

asyncio.run(main())
"""


async def test_recover_after_a_worker_crash(tmp_path: Path, images: Path) -> None:
    """A worker killed with SIGKILL leaves its container running; the next one re-attaches,
    still reads the output (files in the bundle, not pipes) and can stop it."""
    crashing = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_WORKER,
        str(tmp_path / "worker"),
        str(images),
        stdout=asyncio.subprocess.PIPE,
    )
    assert crashing.stdout is not None
    state = json.loads(await crashing.stdout.readline())
    crashing.kill()
    await crashing.wait()
    rt = ContainerRuntime(tmp_path / "worker", images, grace_s=0.3, poll_s=0.05)
    try:
        await until_running(rt)
        recovered = await rt.recover(state)
        assert recovered is not None
        assert rt.inspect(recovered)["running"] is True
        await rt.stop(recovered)
        outcome = await rt.wait(recovered)
        assert (outcome.state, outcome.stdout) == ("cancelled", "up\n")
        for _ in range(100):  # the orphaned `runc run` deletes its container as it exits
            if not runc_list(rt):
                break
            await asyncio.sleep(0.02)
        await rt.release(recovered)
        assert_clean(rt)
        assert await rt.recover(state) is None  # gone now
    finally:
        await rt.close()


async def test_recover_of_an_ended_attempt(runtime: ContainerRuntime) -> None:
    """Its bundle left without an exit status: failed, saying the status is unknown, and
    cleaned up; with nothing left at all, None."""
    handle = await runtime.start(task(["true"]), None)
    await runtime.wait(handle)
    await runtime.release(handle)
    assert await runtime.recover(handle.state) is None
    (runtime.bundles / handle.state["container"]).mkdir()
    recovered = await runtime.recover(handle.state)
    assert recovered is not None
    outcome = await runtime.wait(recovered)
    assert outcome.state == "failed"
    assert "exit status unknown" in (outcome.error or "")
    await runtime.release(recovered)
    assert_clean(runtime)
    assert await runtime.recover({"container": "x"}) is None


async def test_a_container_that_ended_while_its_worker_was_down(
    tmp_path: Path, images: Path
) -> None:
    """The exit status written next to the bundle tells the restarted worker how it ended."""
    crashing = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_WORKER, str(tmp_path / "worker"), str(images),
        "echo up; exit 3",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert crashing.stdout is not None
    state = json.loads(await crashing.stdout.readline())
    crashing.kill()
    await crashing.wait()
    while process_alive(state["pid"], state["create_time"]):  # noqa: ASYNC110 - not our child
        await asyncio.sleep(0.02)
    rt = ContainerRuntime(tmp_path / "worker", images, grace_s=0.3, poll_s=0.05)
    try:
        recovered = await rt.recover(state)
        assert recovered is not None
        outcome = await rt.wait(recovered)
        assert (outcome.state, outcome.exit_code, outcome.stdout) == ("failed", 3, "up\n")
        await rt.release(recovered)
        assert_clean(rt)
    finally:
        await rt.close()


async def test_close_cleans_up_everything(tmp_path: Path, images: Path) -> None:
    rt = ContainerRuntime(tmp_path / "worker", images, grace_s=0.3)
    handles = [await rt.start(task(["sleep", "30"], task_id=f"t{i}"), None) for i in range(3)]
    await rt.close()
    assert all(rt.inspect(h)["running"] is False for h in handles)
    assert_clean(rt)


async def test_available_runtimes(tmp_path: Path, images: Path) -> None:
    found = available_runtimes(
        allow_host=False,
        cache_dir=None,
        data_dir=tmp_path / "worker",
        allow_containers=True,
        images_dir=images,
    )
    off = available_runtimes(
        allow_host=False, cache_dir=None, data_dir=tmp_path / "worker", allow_containers=False
    )
    try:
        assert set(found) == {"wasm", "container"}
        assert set(off) == {"wasm"}
    finally:
        for rt in [*found.values(), *off.values()]:
            await rt.close()


# --- end to end ---------------------------------------------------------------------------


async def test_a_container_task_through_the_api(
    tmp_path: Path, images: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """REST → manager → MQTT → worker → runc → results, as `edgeplane up` runs it."""
    token = "test-admin-token"
    settings = Settings(
        data_dir=tmp_path / "up",
        broker=fast_broker_url,
        store=f"sqlite:///{tmp_path / 'db.sqlite'}",
        port=0,
        workers=1,
        heartbeat_s=0.3,
        domain=unique_domain,
        admin_token=token,
        images_dir=images,
    )
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(
            base_url=stack.control.url + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as http,
    ):
        assert "container" in stack.workers[0].runtimes
        body = {
            "name": "hello",
            "runtime": "container",
            "image": "busybox",
            "command": ["sh", "-c", "echo hi $WHO; echo e >&2"],
            "env": {"WHO": "there"},
            "limits": {"timeout_s": 20, "memory_mb": 64},
            "start": True,
        }
        done = await http.post("/tasks", json=body, params={"wait": 20})
        assert done.status_code == 201, done.text
        got = done.json()
        assert got["state"] == "completed", got
        assert got["results"] == {"stdout": "hi there\n", "exit_code": 0}
        logs = (await http.get(f"/tasks/{got['id']}/logs")).json()
        assert logs["stderr"] == "e\n"
        unknown = await http.post("/tasks", json={**body, "image": "nope"}, params={"wait": 20})
        assert unknown.json()["state"] == "failed"
        assert "image 'nope': no such image" in unknown.json()["error"]
        bad = await http.post("/tasks", json={**body, "image": "../etc"})
        assert (bad.status_code, bad.json()["field"]) == (422, "image")
        no_image = await http.post("/tasks", json={**body, "image": None})
        assert (no_image.status_code, no_image.json()["field"]) == (422, "image")
