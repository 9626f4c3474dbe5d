"""Artifact delivery over a real Mosquitto (issue 15): start commands carry a module's
digest only; a worker that lacks it fetches it from the proxy in binary chunks, checks
it, keeps it on disk; nothing it did not verify ever runs.

The full stack (``running_stack``) for what users see; the worker's fetcher against a
scripted proxy for the faults a real proxy does not make on purpose (a spoiled chunk
set, a truncated delivery)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import wasm_fixtures
from edgeplane.artifacts import chunks
from edgeplane.artifacts.fetch import Fetcher
from edgeplane.config import Settings
from edgeplane.model import TaskSpec
from edgeplane.protocol import Topics, decode, parse_body
from edgeplane.protocol.messages import FetchArtifact
from edgeplane.roles.up import running_stack
from edgeplane.roles.worker import build_worker
from edgeplane.security.joining import Identity
from edgeplane.transport import MqttLink, unique_client_id
from edgeplane.worker import WorkerAgent

pytestmark = pytest.mark.timeout(90)

ADD = wasm_fixtures.add_wasm()
#: what a forger would have run instead: ``add`` answering 666 whatever it is given
FORGED = bytes(
    wasmtime.wat2wasm('(module (func (export "add") (param i32 i32) (result i32) i32.const 666))')
)


async def until(condition: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    """Wait for ``condition`` to hold (polled on the loop; fail naming ``what``)."""
    async with asyncio.timeout(timeout_s):
        while not (found := condition()):  # noqa: ASYNC110 -- counters have no event
            await asyncio.sleep(0.02)
    assert found, what
    return found


def add_spec(a: int, b: int) -> TaskSpec:
    import base64

    return TaskSpec(name="add", file=base64.b64encode(ADD).decode(), inputs=[a, b], start=True)


def stack_settings(tmp_path: Path, domain: str, broker: str = "") -> Settings:
    return Settings(
        data_dir=tmp_path / "up",
        broker=broker,
        store=f"sqlite:///{tmp_path / 'db.sqlite'}",
        port=0,
        workers=0,
        domain=domain,
        admin_token="t",
        heartbeat_s=1.0,
    )


def worker_for(stack: Any, settings: Settings, data_dir: Path, worker_id: str) -> WorkerAgent:
    auth = stack.control.auth
    identity = None
    if auth is not None:
        credentials = auth.add_member(worker_id)
        identity = Identity(
            worker_id, credentials.username, credentials.password, credentials.mac_key
        )
    agent = build_worker(
        settings.model_copy(update={"slots": 2}),
        broker_url=stack.broker_url,
        worker_id=worker_id,
        data_dir=data_dir,
        identity=identity,
    )
    agent.fetcher.retry_s = 0.5
    return agent


async def test_a_worker_fetches_a_module_it_lacks_once_and_a_restart_fetches_nothing(
    tmp_path: Path, unique_domain: str
) -> None:
    # no --broker: the embedded Mosquitto, with identities and the ACL (the proxy's own)
    settings = stack_settings(tmp_path, unique_domain)
    async with running_stack(settings) as stack:
        control = stack.control
        assert control.proxy is not None and control.manager.dispatcher.inline_artifacts is False
        data_dir = tmp_path / "w1"
        worker = worker_for(stack, settings, data_dir, "w1")
        await worker.start()
        try:
            await asyncio.wait_for(worker.registered.wait(), 20)
            tasks = await control.manager.submit([add_spec(n, 1) for n in range(5)])
            done = [await control.manager.wait(t.id, 30) for t in tasks]
            assert [t.state for t in done] == ["completed"] * 5, done
            assert [t.results for t in done] == [[n + 1] for n in range(5)]
            # five tasks, one module, one delivery
            assert worker.fetcher.stats.fetched == 1
            assert control.proxy.stats.served == 1
            assert (data_dir / "artifacts" / hashlib.sha256(ADD).hexdigest()).exists()
        finally:
            await worker.stop()

        again = worker_for(stack, settings, data_dir, "w1")
        await again.start()
        try:
            await asyncio.wait_for(again.registered.wait(), 20)
            task = (await control.manager.submit([add_spec(40, 2)]))[0]
            done = await control.manager.wait(task.id, 30)
            assert (done.state, done.results) == ("completed", [42]), done
            assert again.fetcher.stats.requests == 0  # found on disk
            assert control.proxy.stats.served == 1
        finally:
            await again.stop()


async def test_on_a_secured_broker_only_the_proxy_sends_chunks_and_a_big_module_is_refused(
    tmp_path: Path, unique_domain: str
) -> None:
    """Another worker's chunks never reach a worker (the ACL drops them); a module over
    the proxy's maximum is refused, counted, and fails its task saying why."""
    settings = stack_settings(tmp_path, unique_domain)
    topics = Topics(unique_domain, settings.cluster_id)
    async with running_stack(settings) as stack:
        control = stack.control
        assert control.proxy is not None and control.auth is not None
        worker = worker_for(stack, settings, tmp_path / "w1", "w1")
        intruder = control.auth.add_member("w2")
        await worker.start()
        try:
            await asyncio.wait_for(worker.registered.wait(), 20)
            async with MqttLink(
                stack.broker_url,
                client_id=unique_client_id("w2"),
                subscriptions=[],
                on_message=lambda topic, payload: asyncio.sleep(0),
                username=intruder.username,
                password=intruder.password,
            ) as link:
                await link.connected.wait()
                for _ in range(10):
                    junk = os.urandom(100)
                    for raw in chunks.frames(hashlib.sha256(junk).hexdigest(), junk):
                        await link.publish(topics.chunks("w1"), raw)
                await link.flush()  # the broker has them (and dropped them) before what follows
            task = (await control.manager.submit([add_spec(1, 1)]))[0]
            done = await control.manager.wait(task.id, 30)
            assert (done.state, done.results) == ("completed", [2]), done
            assert worker.fetcher.stats.unsolicited == 0
            assert worker.fetcher.stats.fetched == 1

            control.proxy.max_bytes = 100  # every other module is now too big to serve
            import base64

            hello = base64.b64encode(wasm_fixtures.wasi_hello_wasm()).decode()
            spec = TaskSpec(name="answer", file=hello, start=True)
            task = (await control.manager.submit([spec]))[0]
            done = await control.manager.wait(task.id, 30)
            assert done.state == "failed" and "artifact_too_large" in (done.error or ""), done
            assert done.reason == "artifact_too_large"  # not retried: it would not fit again
            assert control.proxy.stats.too_large == 1
            assert worker.fetcher.stats.too_large == 1
        finally:
            await worker.stop()


async def test_forged_chunks_on_an_open_broker_are_refused_and_never_run(
    tmp_path: Path, mosquitto_url: str, unique_domain: str
) -> None:
    """An anonymous broker: anyone may publish on a worker's chunks topic. A forger that
    answers every request first with another module, and floods chunks of blobs nobody
    asked for, gets nothing run: the task's result is the genuine module's."""
    settings = stack_settings(tmp_path, unique_domain, broker=mosquitto_url)
    topics = Topics(unique_domain, settings.cluster_id)
    forged = {"answered": 0}
    forger: MqttLink

    async def forge(topic: str, payload: bytes) -> None:
        member = topics.member_of(topic)
        assert member is not None
        body = parse_body("artifact.fetch", decode(payload).body)
        assert isinstance(body, FetchArtifact)
        target = topics.chunks(member[0])
        for _ in range(50):  # a flood of chunks of blobs nobody asked for
            junk = os.urandom(100)
            for raw in chunks.frames(hashlib.sha256(junk).hexdigest(), junk):
                await forger.publish(target, raw)
        if forged["answered"] == 0:  # then the other module, as if it were the one asked for
            request = bytes.fromhex(body.request)
            for raw in chunks.frames(body.digest, FORGED, request=request):
                await forger.publish(target, raw)
        forged["answered"] += 1

    forger = MqttLink(
        mosquitto_url,
        client_id=unique_client_id("forger"),
        subscriptions=[topics.all_members("fetch")],
        on_message=forge,
    )
    async with running_stack(settings) as stack, forger:
        await forger.connected.wait()
        control = stack.control
        worker = worker_for(stack, settings, tmp_path / "w1", "w1")
        await worker.start()
        try:
            await asyncio.wait_for(worker.registered.wait(), 20)
            task = (await control.manager.submit([add_spec(2, 3)]))[0]
            done = await control.manager.wait(task.id, 30)
            assert (done.state, done.results) == ("completed", [5]), done
            stats = worker.fetcher.stats
            await until(lambda: stats.unsolicited >= 50, "the flood refused and counted")
            # the forged module came before the proxy's (rejected, fetched again) or after
            # it (nobody was asking any more): either way refused
            await until(lambda: forged["answered"] >= 1, "the forger answered")
            assert stats.rejected + stats.unsolicited >= 51
            assert worker.artifacts.blobs.has(hashlib.sha256(ADD).hexdigest())
            assert not worker.artifacts.blobs.has(hashlib.sha256(FORGED).hexdigest())
        finally:
            await worker.stop()


class ScriptedProxy:
    """Answers the fetches of one worker on the real broker as a test says: round n gets
    ``script[n](request)``, a list of frames to publish."""

    def __init__(
        self,
        url: str,
        topics: Topics,
        worker_id: str,
        script: list[Callable[[FetchArtifact], list[bytes]]],
    ) -> None:
        self.requests: list[FetchArtifact] = []
        self.script = script
        self.target = topics.chunks(worker_id)
        self.link = MqttLink(
            url,
            client_id=unique_client_id("scripted-proxy"),
            subscriptions=[topics.fetch(worker_id)],
            on_message=self._on_message,
        )

    async def _on_message(self, topic: str, payload: bytes) -> None:
        body = parse_body("artifact.fetch", decode(payload).body)
        assert isinstance(body, FetchArtifact)
        self.requests.append(body)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        for raw in step(body):
            await self.link.publish(self.target, raw)


async def fetcher_on(
    url: str, topics: Topics, worker_id: str
) -> tuple[Fetcher, MqttLink, Callable[[], Awaitable[None]]]:
    fetcher: Fetcher

    async def on_message(topic: str, payload: bytes) -> None:
        fetcher.on_chunk(payload)

    link = MqttLink(
        url,
        client_id=unique_client_id("fetching-worker"),
        subscriptions=[topics.chunks(worker_id)],
        on_message=on_message,
    )
    fetch_topic = topics.fetch(worker_id)
    fetcher = Fetcher(
        lambda request: link.publish(fetch_topic, request), max_bytes=1 << 20, retry_s=0.5
    )
    await link.start()
    await link.connected.wait()
    return fetcher, link, link.stop


BLOB = os.urandom(10_000)
DIGEST = hashlib.sha256(BLOB).hexdigest()


def all_chunks(body: FetchArtifact, data: bytes = BLOB) -> list[bytes]:
    request = bytes.fromhex(body.request)
    return list(
        chunks.frames(
            body.digest, data, request=request, chunk_size=1000, indices=body.missing or None
        )
    )


async def test_a_chunk_set_of_the_wrong_digest_is_rejected_and_fetched_again(
    mosquitto_url: str, unique_domain: str
) -> None:
    topics = Topics(unique_domain)
    spoiled = bytearray(BLOB)
    spoiled[4321] ^= 0xFF
    proxy = ScriptedProxy(
        mosquitto_url,
        topics,
        "w1",
        [lambda body: all_chunks(body, bytes(spoiled)), all_chunks],
    )
    async with proxy.link:
        await proxy.link.connected.wait()
        fetcher, _, stop = await fetcher_on(mosquitto_url, topics, "w1")
        try:
            assert await asyncio.wait_for(fetcher.fetch(DIGEST), 20) == BLOB
        finally:
            await stop()
    assert fetcher.stats.rejected == 1 and fetcher.stats.fetched == 1
    assert len(proxy.requests) == 2 and proxy.requests[1].missing == []
    assert proxy.requests[0].request != proxy.requests[1].request  # a new nonce


async def test_a_truncated_delivery_asks_for_the_missing_chunks_only(
    mosquitto_url: str, unique_domain: str
) -> None:
    topics = Topics(unique_domain)

    def lossy(body: FetchArtifact) -> list[bytes]:
        sent = all_chunks(body)
        return [raw for i, raw in enumerate(sent) if i not in (3, 7)]

    proxy = ScriptedProxy(mosquitto_url, topics, "w1", [lossy, all_chunks])
    async with proxy.link:
        await proxy.link.connected.wait()
        fetcher, _, stop = await fetcher_on(mosquitto_url, topics, "w1")
        try:
            assert await asyncio.wait_for(fetcher.fetch(DIGEST), 20) == BLOB
        finally:
            await stop()
    assert [r.missing for r in proxy.requests] == [[], [3, 7]]
    assert fetcher.stats.rejected == 0 and fetcher.stats.chunks == 10


async def test_duplicated_and_cut_chunks_are_refused_and_fetched_again(
    mosquitto_url: str, unique_domain: str
) -> None:
    """Every chunk sent twice, and one cut short on the way: the duplicates are kept once
    and counted, the cut one is refused (``bad``) and asked for again, the blob arrives
    whole."""
    topics = Topics(unique_domain)

    def doubled_and_cut(body: FetchArtifact) -> list[bytes]:
        sent = all_chunks(body)
        sent[5] = sent[5][:-10]  # truncated: its header says more than it holds
        return [raw for frame in sent for raw in (frame, frame)]

    proxy = ScriptedProxy(mosquitto_url, topics, "w1", [doubled_and_cut, all_chunks])
    async with proxy.link:
        await proxy.link.connected.wait()
        fetcher, _, stop = await fetcher_on(mosquitto_url, topics, "w1")
        try:
            assert await asyncio.wait_for(fetcher.fetch(DIGEST), 20) == BLOB
        finally:
            await stop()
    assert [r.missing for r in proxy.requests] == [[], [5]]
    assert fetcher.stats.bad == 2 and fetcher.stats.duplicates == 9
    assert fetcher.stats.rejected == 0 and fetcher.stats.fetched == 1


async def test_a_lost_tail_is_asked_for_again_after_the_wait_and_an_unknown_digest_fails(
    mosquitto_url: str, unique_domain: str
) -> None:
    topics = Topics(unique_domain)

    def headless(body: FetchArtifact) -> list[bytes]:
        return all_chunks(body)[:4]  # the last chunks never come

    def not_found(body: FetchArtifact) -> list[bytes]:
        frame = chunks.Frame(
            body.digest, 0, 0, 0, request=bytes.fromhex(body.request), status=chunks.NOT_FOUND
        )
        return [chunks.encode(frame)]

    proxy = ScriptedProxy(mosquitto_url, topics, "w1", [headless, all_chunks])
    async with proxy.link:
        await proxy.link.connected.wait()
        fetcher, _, stop = await fetcher_on(mosquitto_url, topics, "w1")
        try:
            assert await asyncio.wait_for(fetcher.fetch(DIGEST), 20) == BLOB
            assert proxy.requests[1].missing == list(range(4, 10))
            proxy.script = [not_found]
            with pytest.raises(Exception, match="artifact_not_found"):
                await asyncio.wait_for(fetcher.fetch(hashlib.sha256(b"none").hexdigest()), 20)
        finally:
            await stop()


async def test_the_proxy_role_serves_what_a_store_holds(
    tmp_path: Path, mosquitto_url: str, unique_domain: str
) -> None:
    """``edgeplane proxy`` on its own (a process), reading a store a manager wrote."""
    import sys

    from edgeplane.store import open_store

    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(store_url)
    await store.open()
    await store.put_artifact(DIGEST, BLOB)
    await store.close()
    argv = [sys.executable, "-m", "edgeplane", "proxy", "--broker", mosquitto_url]
    argv += ["--store", store_url, "--domain", unique_domain, "--data-dir", str(tmp_path)]
    child = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert b"artifact proxy of cluster local" in line, line
        fetcher, _, stop = await fetcher_on(mosquitto_url, Topics(unique_domain), "w1")
        try:
            assert await asyncio.wait_for(fetcher.fetch(DIGEST), 20) == BLOB
            with pytest.raises(Exception, match="artifact_not_found"):
                await asyncio.wait_for(fetcher.fetch(hashlib.sha256(b"none").hexdigest()), 20)
        finally:
            await stop()
    finally:
        child.terminate()
        assert await asyncio.wait_for(child.wait(), 15) is not None
