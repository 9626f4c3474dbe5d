"""MqttLink and EmbeddedBroker against real brokers: system Mosquitto, a nodelay Mosquitto,
and amqtt."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edgeplane.errors import Invalid, Unavailable
from edgeplane.transport import (
    EmbeddedBroker,
    MqttLink,
    Will,
    free_port,
    parse_broker_url,
    parse_broker_urls,
    without_credentials,
)
from edgeplane.transport import link as link_module
from edgeplane.transport.broker import MosquittoProcess

WAIT_S = 10.0

Inbox = asyncio.Queue[tuple[str, bytes]]


def collector() -> tuple[Inbox, Callable[[str, bytes], Awaitable[None]]]:
    inbox: Inbox = asyncio.Queue()

    async def on_message(topic: str, payload: bytes) -> None:
        inbox.put_nowait((topic, payload))

    return inbox, on_message


async def next_message(inbox: Inbox) -> tuple[str, bytes]:
    return await asyncio.wait_for(inbox.get(), WAIT_S)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 -- some conditions have no event to await
            await asyncio.sleep(0.01)


async def echo_once(url: str, domain: str) -> None:
    inbox, on_message = collector()
    topic = f"{domain}/echo/1"
    async with MqttLink(
        url, client_id=f"{domain}-echo", subscriptions=[f"{domain}/echo/#"], on_message=on_message
    ) as link:
        assert link.connected.is_set()
        await link.publish(topic, b"ping")
        assert await next_message(inbox) == (topic, b"ping")
        link.publish_nowait(topic, b"pong", qos=0)
        assert await next_message(inbox) == (topic, b"pong")
        await link.flush()
    assert not link.connected.is_set()
    assert (link.stats.published, link.stats.received, link.stats.handler_errors) == (2, 2, 0)


async def test_round_trip_on_system_mosquitto(mosquitto_url: str, unique_domain: str) -> None:
    await echo_once(mosquitto_url, unique_domain)


async def test_round_trip_on_nodelay_mosquitto(fast_broker_url: str, unique_domain: str) -> None:
    await echo_once(fast_broker_url, unique_domain)


async def test_round_trip_on_amqtt(embedded_broker_url: str, unique_domain: str) -> None:
    await echo_once(embedded_broker_url, unique_domain)


async def test_big_and_small_messages_arrive_whole_and_in_order(
    fast_broker_url: str, unique_domain: str
) -> None:
    """Packets go out on the loop's next turn (``write_promptly``); one bigger than the
    socket takes at once is finished by aiomqtt's writer, and nothing overtakes it."""
    inbox, on_message = collector()
    topic = f"{unique_domain}/bulk/1"
    big = os.urandom(24 * 2**20)
    sent = [b"first", big, *(b"small-%d" % n for n in range(200)), big[::-1], b"last"]
    async with MqttLink(
        fast_broker_url,
        client_id=f"{unique_domain}-bulk",
        subscriptions=[f"{unique_domain}/bulk/#"],
        on_message=on_message,
    ) as link:
        for n, payload in enumerate(sent):
            await link.publish(topic, payload, qos=n % 2)
        received = [(await next_message(inbox))[1] for _ in sent]
        await link.flush()
    assert received == sent
    assert link.stats.published == len(sent)


async def test_stop_leaves_no_tasks_behind(fast_broker_url: str, unique_domain: str) -> None:
    _, on_message = collector()
    link = MqttLink(
        fast_broker_url, client_id=unique_domain, subscriptions=[], on_message=on_message
    )
    await link.start()
    await link.stop()
    await link.stop()  # idempotent
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), WAIT_S)


@pytest.mark.parametrize("prefer_mosquitto", [True, False], ids=["mosquitto", "amqtt"])
async def test_reconnects_resubscribes_and_sends_what_was_published_while_down(
    tmp_path: Path, unique_domain: str, prefer_mosquitto: bool
) -> None:
    broker = EmbeddedBroker(tmp_path, prefer_mosquitto=prefer_mosquitto)
    url = await broker.start()
    connects = 0

    async def on_connect() -> None:
        nonlocal connects
        connects += 1

    inbox, on_message = collector()
    topic = f"{unique_domain}/r/x"
    link = MqttLink(
        url,
        client_id=f"{unique_domain}-r",
        subscriptions=[f"{unique_domain}/r/#"],
        on_message=on_message,
        on_connect=on_connect,
        max_backoff_s=0.2,
    )
    try:
        async with link:
            await broker.stop()
            await until(lambda: not link.connected.is_set())
            await link.publish(topic, b"sent while down")
            await broker.start()
            # Only delivered if the link reconnected, subscribed again and drained its outbox.
            assert await next_message(inbox) == (topic, b"sent while down")
            assert link.connected.is_set()
            assert link.stats.reconnects == 1
            assert connects == 2
    finally:
        await broker.stop()


async def test_messages_unacknowledged_when_the_broker_dies_are_sent_again(
    tmp_path: Path, unique_domain: str
) -> None:
    executable = shutil.which("mosquitto")
    if executable is None:
        pytest.skip("mosquitto is not installed")
    process = MosquittoProcess(tmp_path, free_port(), executable)
    url = await asyncio.to_thread(process.start)
    inbox, on_message = collector()
    topic = f"{unique_domain}/inflight"
    link = MqttLink(
        url,
        client_id=f"{unique_domain}-inflight",
        subscriptions=[topic],
        on_message=on_message,
        max_backoff_s=0.2,
    )
    try:
        async with link:
            pid = process.pid
            assert pid is not None
            os.killpg(pid, signal.SIGSTOP)  # receives our PUBLISHes, never acknowledges them
            sent = {f"m{i}".encode() for i in range(50)}
            for payload in sorted(sent):
                await link.publish(topic, payload)
            await asyncio.sleep(0.05)  # let the senders put them on the wire
            os.killpg(pid, signal.SIGKILL)
            await asyncio.to_thread(process.stop)
            await until(lambda: not link.connected.is_set())
            await asyncio.to_thread(process.start)
            got: set[bytes] = set()
            while got != sent:
                got.add((await next_message(inbox))[1])
            await asyncio.wait_for(link.flush(), WAIT_S)
            assert link.stats.published == len(sent)
    finally:
        await asyncio.to_thread(process.stop)


DYING_CLIENT = """
import asyncio, sys
from edgeplane.transport import MqttLink, Will

async def main() -> None:
    url, client_id, topic = sys.argv[1:4]
    async def ignore(topic: str, payload: bytes) -> None:
        pass
    link = MqttLink(url, client_id=client_id, subscriptions=[], on_message=ignore,
                    will=Will(topic, b"offline"))
    await link.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until the test kills this process

asyncio.run(main())
"""


async def test_last_will_is_published_when_a_client_is_killed(
    fast_broker_url: str, unique_domain: str
) -> None:
    inbox, on_message = collector()
    will_topic = f"{unique_domain}/workers/w1/alive"
    async with MqttLink(
        fast_broker_url,
        client_id=f"{unique_domain}-watch",
        subscriptions=[will_topic],
        on_message=on_message,
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DYING_CLIENT,
            fast_broker_url,
            f"{unique_domain}-w1",
            will_topic,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), WAIT_S) == b"ready\n"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.communicate()
        assert await next_message(inbox) == (will_topic, b"offline")


async def test_clean_stop_does_not_publish_the_will(
    fast_broker_url: str, unique_domain: str
) -> None:
    inbox, on_message = collector()
    will_topic = f"{unique_domain}/will"
    marker = f"{unique_domain}/marker"
    async with MqttLink(
        fast_broker_url,
        client_id=f"{unique_domain}-watch",
        subscriptions=[will_topic, marker],
        on_message=on_message,
    ) as watcher:
        async with MqttLink(
            fast_broker_url,
            client_id=f"{unique_domain}-leaver",
            subscriptions=[],
            on_message=on_message,
            will=Will(will_topic, b"offline"),
        ):
            pass
        await watcher.publish(marker, b"after stop")
        assert await next_message(inbox) == (marker, b"after stop")


async def test_a_failing_handler_does_not_stop_the_link(
    fast_broker_url: str, unique_domain: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbox: Inbox = asyncio.Queue()

    async def on_message(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        inbox.put_nowait((topic, payload))

    topic = f"{unique_domain}/h"
    with caplog.at_level(logging.ERROR, logger="edgeplane.transport.link"):
        async with MqttLink(
            fast_broker_url, client_id=unique_domain, subscriptions=[topic], on_message=on_message
        ) as link:
            await link.publish(topic, b"boom")
            await link.publish(topic, b"ok")
            assert await next_message(inbox) == (topic, b"ok")
            assert link.stats.handler_errors == 1
            assert link.connected.is_set()
    [record] = [r for r in caplog.records if r.exc_info]
    assert getattr(record, "topic") == topic  # noqa: B009
    assert "handler bug" in caplog.text


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1883", "mqtt://", "mqtt://h:99999", "mqtt://h:port", "mqtt://h/x", "h:1883"],
)
def test_bad_broker_url_is_invalid(url: str) -> None:
    with pytest.raises(Invalid) as raised:
        parse_broker_url(url)
    assert raised.value.field == "broker"


def test_broker_url_credentials_never_show_in_logs_or_repr() -> None:
    address = parse_broker_url("mqtt://edge:s%40cret@broker.local")
    assert (address.host, address.port, address.username) == ("broker.local", 1883, "edge")
    assert address.password == "s@cret"
    assert "s@cret" not in repr(address)
    assert str(address) == "broker.local:1883"


def test_the_broker_url_a_manager_tells_others_has_no_credentials() -> None:
    """It goes to every worker in its welcome and to the root in the cluster's
    registration: the user and password are the manager's own."""
    given = "mqtt://edgeplane%24manager:s3cret@n1:1883,mqtts://u:p@[::1]:8883,mqtt://n3"
    shown = without_credentials(given)
    assert shown == "mqtt://n1:1883,mqtts://[::1]:8883,mqtt://n3"
    assert [(a.host, a.port, a.username) for a in parse_broker_urls(shown)] == [
        ("n1", 1883, None),
        ("::1", 8883, None),
        ("n3", 1883, None),
    ]


async def test_publish_to_a_wildcard_is_invalid() -> None:
    _, on_message = collector()
    link = MqttLink("mqtt://127.0.0.1", client_id="x", subscriptions=[], on_message=on_message)
    with pytest.raises(Invalid) as raised:
        await link.publish("a/+/b", b"")
    assert raised.value.field == "topic"


async def test_unreachable_broker_is_unavailable() -> None:
    _, on_message = collector()
    link = MqttLink(
        f"mqtt://127.0.0.1:{free_port()}",
        client_id="nobody-home",
        subscriptions=[],
        on_message=on_message,
        connect_timeout_s=0.3,
        max_backoff_s=0.1,
    )
    with pytest.raises(Unavailable) as raised:
        await link.start()
    assert raised.value.field == "broker"
    assert not link.connected.is_set()


async def test_embedded_mosquitto_runs_with_nodelay(tmp_path: Path, unique_domain: str) -> None:
    broker = EmbeddedBroker(tmp_path)
    if broker.kind != "mosquitto":
        pytest.skip("mosquitto is not installed")
    url = await broker.start()
    try:
        assert url == f"mqtt://127.0.0.1:{broker.port}"
        config = (tmp_path / "mosquitto.conf").read_text().splitlines()
        assert "set_tcp_nodelay true" in config
        assert f"listener {broker.port} 127.0.0.1" in config
        await echo_once(url, unique_domain)
    finally:
        await broker.stop()
    assert "running" in (tmp_path / "mosquitto.log").read_text()


async def test_embedded_broker_falls_back_to_amqtt(tmp_path: Path, unique_domain: str) -> None:
    broker = EmbeddedBroker(tmp_path, prefer_mosquitto=False)
    assert broker.kind == "amqtt"
    url = await broker.start()
    try:
        await echo_once(url, unique_domain)
    finally:
        await broker.stop()


def test_mosquitto_that_exits_at_once_is_unavailable(tmp_path: Path) -> None:
    broker = MosquittoProcess(tmp_path, free_port(), executable="false")
    with pytest.raises(Unavailable, match="exited with code 1"):
        broker.start()


async def test_a_link_given_several_nodes_moves_on_to_one_that_answers(
    fast_broker_url: str, unique_domain: str
) -> None:
    """The first node refuses the connection, the second hangs up on the CONNECT (as a
    NATS node does that cannot load the session): the link goes on to the third, well
    within the CONNACK timeout the second would otherwise have cost."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    closing = server.sockets[0].getsockname()[1]
    url = f"mqtt://127.0.0.1:{free_port()},mqtt://127.0.0.1:{closing},{fast_broker_url}"
    inbox, on_message = collector()
    topic = f"{unique_domain}/nodes"
    async with server:
        link = MqttLink(
            url,
            client_id=f"{unique_domain}-nodes",
            subscriptions=[topic],
            on_message=on_message,
            connect_timeout_s=WAIT_S,
        )
        async with link:
            assert link.broker == fast_broker_url.removeprefix("mqtt://")
            await link.publish(topic, b"hi")
            assert await next_message(inbox) == (topic, b"hi")


class RefusingBroker:
    """Just enough of an MQTT 3.1.1 broker to refuse the first ``refusals`` SUBSCRIBEs
    (SUBACK 0x80 for every topic), as a NATS node does while its JetStream elects, and
    grant the later ones."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.subscribes: list[list[str]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                kind = (await reader.readexactly(1))[0] & 0xF0
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                if kind == 0x10:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 0x80:  # SUBSCRIBE: packet id, then (topic, qos) pairs
                    topics, at = [], 2
                    while at < len(body):
                        size = int.from_bytes(body[at : at + 2], "big")
                        topics.append(body[at + 2 : at + 2 + size].decode())
                        at += 2 + size + 1
                    self.subscribes.append(topics)
                    code = b"\x80" if len(self.subscribes) <= self.refusals else b"\x01"
                    writer.write(bytes([0x90, 2 + len(topics)]) + body[:2] + code * len(topics))
                elif kind == 0xC0:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 0xE0:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_refused_subscription_is_asked_for_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused once (NATS electing): granted on the next try before the session starts,
    no warning. Refused past the retries (NATS busier still, or an ACL): the session runs
    all the same, says so, keeps asking in the background and, once granted, runs
    ``on_connect`` again so the member catches up on what it missed."""
    monkeypatch.setattr(link_module, "SUBSCRIBE_RETRY_S", (0.01, 0.01, 0.01))
    monkeypatch.setattr(link_module, "RESUBSCRIBE_S", 0.01)
    for refusals, connects in ((1, 1), (6, 2)):
        caplog.clear()
        broker = RefusingBroker(refusals)
        server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, on_message = collector()
        hooks = 0

        async def on_connect() -> None:
            nonlocal hooks
            hooks += 1

        async with server:
            link = MqttLink(
                f"mqtt://127.0.0.1:{port}",
                client_id="refused",
                subscriptions=["a/b", "a/c"],
                on_message=on_message,
                on_connect=on_connect,
            )
            async with link:
                assert link.connected.is_set()
                await until(lambda: hooks == connects)  # noqa: B023 -- awaited in the loop
            assert broker.subscribes == [["a/b", "a/c"]] * (refusals + 1)
        assert ("refused subscriptions" in caplog.text) is (refusals > 1)
