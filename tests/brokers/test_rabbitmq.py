"""RabbitMQ's MQTT plugin as edgeplane's broker: what differs from Mosquitto and what the
docs promise about it (docs/brokers.md, "RabbitMQ (MQTT plugin)"). The protocol itself
(tasks, a workflow, a worker lost) runs on it in the broker matrix (test_matrix.py).

Each node is a private one (``bench/brokers/rabbitmq.py``) on the documented config; the
machine's RabbitMQ is never touched. A node takes ~8-15 s to boot, so one serves the module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil
import pytest
from bench.brokers import BrokerUnavailable, rabbitmq

from edgeplane.errors import Unavailable
from edgeplane.transport import MqttLink, kept_client_id, parse_broker_url
from faults.procs import Lab, Role, alive, check_exactly_once, check_lines, host_tasks, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One node for the module: its directory and URL."""
    directory = tmp_path_factory.mktemp("rabbitmq")
    try:
        with rabbitmq.launch(directory) as url:
            yield directory, url
    except BrokerUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture
def rabbitmq_url(rabbitmq_node: tuple[Path, str]) -> str:
    return rabbitmq_node[1]


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return unquote(password)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self.changed.set()

    async def wait_for(self, n: int) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(30):
            while len(self.messages) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.messages


def test_only_the_configured_user_gets_in(rabbitmq_url: str) -> None:
    address = parse_broker_url(rabbitmq_url)
    assert address.username == rabbitmq.USER != "guest"
    assert rabbitmq.mqtt_accepts(address.port, address.username, address.password)
    assert not rabbitmq.mqtt_accepts(address.port, address.username, "not-the-password")
    assert not rabbitmq.mqtt_accepts(address.port, "guest", "guest")
    assert not rabbitmq.mqtt_accepts(address.port, None, None)  # anonymous


async def test_a_persistent_session_gets_what_was_sent_while_it_was_away(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    """The manager's link keeps its session (clean_session=False, a kept client id): on
    RabbitMQ that is a durable queue, which holds what its workers said meanwhile."""
    domain = f"t{uuid.uuid4().hex[:10]}"
    client_id = kept_client_id("manager", tmp_path)
    inbox = Inbox()

    def manager() -> MqttLink:
        return MqttLink(
            rabbitmq_url,
            client_id=client_id,
            subscriptions=[f"{domain}/+/events"],
            on_message=inbox,
            clean_session=False,
        )

    async with manager():
        pass
    async with MqttLink(
        rabbitmq_url, client_id="worker", subscriptions=[], on_message=Inbox()
    ) as worker:
        for n in range(3):
            await worker.publish(f"{domain}/w{n}/events", f"{n}".encode())
        await worker.flush()
    async with manager():
        got = await inbox.wait_for(3)
    assert sorted(got) == [(f"{domain}/w{n}/events", f"{n}".encode()) for n in range(3)]


async def test_a_dot_in_a_topic_level_splits_it(rabbitmq_url: str) -> None:
    """Why ids and domains may hold no '.' (docs/brokers.md): the plugin turns '/' into
    '.' in its routing keys and back, so a dotted level becomes two on the way."""
    domain = f"t{uuid.uuid4().hex[:10]}"
    inbox = Inbox()
    subscriptions = [f"{domain}/+/events", f"{domain}/w.1/cmd"]
    async with (
        MqttLink(rabbitmq_url, client_id="s", subscriptions=subscriptions, on_message=inbox),
        MqttLink(rabbitmq_url, client_id="p", subscriptions=[], on_message=Inbox()) as sender,
    ):
        await sender.publish(f"{domain}/w.1/events", b"missed")  # `+` matches one level
        await sender.publish(f"{domain}/w.1/cmd", b"renamed")
        await sender.publish(f"{domain}/w1/events", b"plain")
        got = await inbox.wait_for(2)
    assert sorted(got) == [(f"{domain}/w/1/cmd", b"renamed"), (f"{domain}/w1/events", b"plain")]


def test_a_worker_shows_its_broker_without_the_credentials(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    """The URL comes in the environment (not on a command line every local user can
    read); what the worker prints of it leaves the credentials out."""
    env = {
        **os.environ,
        "EDGEPLANE_BROKER": rabbitmq_url,
        "EDGEPLANE_DOMAIN": f"t{uuid.uuid4().hex[:10]}",
    }
    worker = Role(
        "worker",
        ["worker", "--worker-id", "w1", "--no-containers", "--data-dir", str(tmp_path / "w1")],
        env,
        tmp_path / "worker.log",
    ).start()
    try:
        wait_until(lambda: "worker w1 connected to" in worker.tail(), "the worker", watch=[worker])
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert password_of(rabbitmq_url) not in log
    assert f"connected to mqtt://127.0.0.1:{parse_broker_url(rabbitmq_url).port}\n" in log


def test_a_node_leaves_no_process_behind(tmp_path: Path) -> None:
    if rabbitmq.server_script() is None:
        pytest.skip("rabbitmq-server is not installed (scripts/system-deps.sh installs it)")
    with rabbitmq.launch(tmp_path) as url:
        node = [p for p in psutil.Process().children() if str(tmp_path) in " ".join(p.cmdline())]
        assert [p.name() for p in node] == ["beam.smp"], "the VM is this process's own child"
        processes = [*node, *node[0].children(recursive=True)]
        port = parse_broker_url(url).port
    assert not any(alive(process) for process in processes)
    assert not rabbitmq.mqtt_accepts(port, rabbitmq.USER, password_of(url))


async def test_the_documented_rabbitmqctl_setup_lets_a_user_in_by_vhost(
    rabbitmq_node: tuple[Path, str],
) -> None:
    """docs/brokers.md: a node that already runs gets the vhost, user and permissions
    with rabbitmqctl; a user of another vhost than mqtt.vhost logs in as VHOST:USER,
    written VHOST%3AUSER in a broker URL."""
    directory, url = rabbitmq_node
    port = parse_broker_url(url).port
    rabbitmq.rabbitmqctl(directory, "add_vhost", "site-b")
    rabbitmq.rabbitmqctl(directory, "add_user", "edge-b", stdin="pass-b\n")
    rabbitmq.rabbitmqctl(
        directory, "set_permissions", "-p", "site-b", "edge-b",
        "^mqtt-subscription-", r"^(amq\.topic|mqtt-subscription-.*)$",
        r"^(amq\.topic|mqtt-subscription-.*)$",
    )  # fmt: skip
    assert not rabbitmq.mqtt_accepts(port, "edge-b", "pass-b")  # not in vhost edgeplane
    inbox = Inbox()
    site_b = f"mqtt://site-b%3Aedge-b:pass-b@127.0.0.1:{port}"
    async with MqttLink(site_b, client_id="b", subscriptions=["t/+/x"], on_message=inbox) as link:
        await link.publish("t/1/x", b"in site-b")
        assert await inbox.wait_for(1) == [("t/1/x", b"in site-b")]


def test_the_docs_show_the_config_the_nodes_run() -> None:
    """docs/brokers.md shows deploy/brokers/rabbitmq/rabbitmq.conf as the launcher fills it
    (but for the file's header), with the docs' listener and password."""
    docs = (rabbitmq.ROOT / "docs" / "brokers.md").read_text()
    section = docs[docs.index("## RabbitMQ (MQTT plugin)") :]
    start = section.index("```ini\n") + len("```ini\n")
    shown = section[start : section.index("```", start)]
    tested = rabbitmq.render_config(1883, "CHANGE-ME", host="0.0.0.0")
    assert shown == tested.split("\n\n", 1)[1]
    assert "{" not in shown, "a placeholder the launcher fills is left in the docs"


class Losses(logging.Handler):
    """The ``attempt`` of each "lost" warning of one link (a session that was up ended)."""

    def __init__(self, client_id: str) -> None:
        super().__init__()
        self.client_id = client_id
        self.attempts: list[int] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        if fields.get("client_id") == self.client_id and fields.get("was_connected"):
            self.attempts.append(fields["attempt"])
            self.changed.set()


WORKER_PERMISSIONS = (
    r"^edgeplane\.site-a\.workers\.{username}\.(hello|alive|events|metrics|fetch)$",
    r"^edgeplane\.site-a\.workers\.{username}\.(cmd|welcome|chunks)$",
)


async def test_a_worker_kept_to_its_own_topics_and_a_link_refused_backs_off(
    rabbitmq_node: tuple[Path, str],
) -> None:
    """docs/brokers.md: a user per worker with topic permissions keeps each to its own
    topics. RabbitMQ refuses a publish elsewhere by closing the connection, so the same
    message sent again on the next session is refused again: the link backs off more
    each time (attempt 1, 2, 3, …) instead of reconnecting ~15 times a second."""
    directory, url = rabbitmq_node
    port = parse_broker_url(url).port
    queues = r"^(amq\.topic|mqtt-subscription-.*)$"
    rabbitmq.rabbitmqctl(directory, "add_user", "w1", stdin="pass-w1\n")
    rabbitmq.rabbitmqctl(
        directory, "set_permissions", "-p", "edgeplane", "w1",
        "^mqtt-subscription-", queues, queues,
    )  # fmt: skip
    rabbitmq.rabbitmqctl(
        directory, "set_topic_permissions", "-p", "edgeplane", "w1", "amq.topic",
        *WORKER_PERMISSIONS,
    )  # fmt: skip
    manager_inbox, worker_inbox = Inbox(), Inbox()
    own = "edgeplane/site-a/workers/w1"
    async with (
        MqttLink(
            url, client_id="m", subscriptions=["edgeplane/#"], on_message=manager_inbox
        ) as manager,
        MqttLink(
            f"mqtt://w1:pass-w1@127.0.0.1:{port}",
            client_id="w1-link",
            subscriptions=[f"{own}/cmd"],
            on_message=worker_inbox,
        ) as worker,
    ):
        await worker.publish(f"{own}/events", b"mine")
        assert await manager_inbox.wait_for(1) == [(f"{own}/events", b"mine")]
        await manager.publish(f"{own}/cmd", b"run")
        assert await worker_inbox.wait_for(1) == [(f"{own}/cmd", b"run")]
        losses = Losses("w1-link")
        logging.getLogger("edgeplane.transport.link").addHandler(losses)
        try:
            await worker.publish("edgeplane/site-a/workers/w2/events", b"forged")
            async with asyncio.timeout(30):
                while len(losses.attempts) < 4:
                    losses.changed.clear()
                    await losses.changed.wait()
        finally:
            logging.getLogger("edgeplane.transport.link").removeHandler(losses)
    assert losses.attempts[:4] == [1, 2, 3, 4]
    assert [topic for topic, _ in manager_inbox.messages if "w2" in topic] == []


@pytest.mark.parametrize("clean_session", [True, False])
async def test_long_client_ids_are_taken(rabbitmq_url: str, clean_session: bool) -> None:
    """A worker's client id carries the domain, the cluster id and its own id: RabbitMQ
    takes one of 1,000 characters, with a clean or a persistent session (the plugin names
    a queue after it)."""
    topic = f"t{uuid.uuid4().hex[:10]}/w/events"
    inbox = Inbox()
    client_id = ("p" if clean_session else "q") * 1000
    async with MqttLink(
        rabbitmq_url,
        client_id=client_id,
        subscriptions=[topic],
        on_message=inbox,
        clean_session=clean_session,
    ) as link:
        await link.publish(topic, b"x")
        assert await inbox.wait_for(1) == [(topic, b"x")]


def test_a_node_restart_is_ridden_out(lab: Lab, tmp_path: Path) -> None:
    """The node stops and starts again on its data (the manager's persistent session is
    a durable queue, the workers' sessions are gone): the roles reconnect by themselves
    and tasks before and after run exactly once."""
    node = rabbitmq.RabbitMQNode(tmp_path / "rabbitmq")
    try:
        lab.external_broker = node.start()
        manager, workers, api = lab.manager_and_workers()
        out = tmp_path / "out.txt"
        before, after = [f"b{n:02d}" for n in range(20)], [f"a{n:02d}" for n in range(20)]
        accepted = api.submit(host_tasks(before, out))
        api.wait_ended(20, watch=[manager, *workers])

        node.stop()
        wait_until(lambda: not (api.healthz() or {}).get("broker"), "the manager to see it go")
        node.start()
        api.wait_healthy(manager)
        accepted += api.submit(host_tasks(after, out))
        api.wait_ended(40, watch=[manager, *workers])
    finally:
        node.stop()
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in before + after}
    check_exactly_once(api.tasks(), accepted, expected)
    check_lines(out, before + after)


async def test_a_refused_subscription_is_said_at_once(rabbitmq_node: tuple[Path, str]) -> None:
    """RabbitMQ refuses a SUBSCRIBE by closing the connection: the link gives up the
    session then (it used to wait 30 s for the SUBACK), so a worker whose permissions
    lack one of its topics fails its start naming the drop, not "no connection attempt"."""
    directory, url = rabbitmq_node
    port = parse_broker_url(url).port
    queues = r"^(amq\.topic|mqtt-subscription-.*)$"
    rabbitmq.rabbitmqctl(directory, "add_user", "w2", stdin="pass-w2\n")
    rabbitmq.rabbitmqctl(
        directory, "set_permissions", "-p", "edgeplane", "w2",
        "^mqtt-subscription-", queues, queues,
    )  # fmt: skip
    rabbitmq.rabbitmqctl(
        directory, "set_topic_permissions", "-p", "edgeplane", "w2", "amq.topic",
        *WORKER_PERMISSIONS,
    )  # fmt: skip
    link = MqttLink(
        f"mqtt://w2:pass-w2@127.0.0.1:{port}",
        client_id="w2-link",
        subscriptions=["edgeplane/site-a/workers/w2/cmd", "edgeplane/site-a/workers/w1/cmd"],
        on_message=Inbox(),
    )
    with pytest.raises(Unavailable) as failed:
        await link.start()
    assert "Disconnected" in str(failed.value), failed.value
