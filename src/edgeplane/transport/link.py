"""One resilient MQTT connection shared by every edgeplane role.

Reconnecting, resubscribing, TCP_NODELAY and at-least-once publishing are solved here once
(DESIGN §4, §8), so managers, workers, the root and the proxy only see
``publish(topic, payload)`` and an ``on_message(topic, payload)`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from edgeplane.errors import Invalid, Unavailable
from edgeplane.tls import client_context

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]
DisconnectHook = Callable[[], None]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
OUTBOX_SIZE = 100_000
MAX_PAYLOAD = 268_435_455  # the MQTT 3.1.1 limit on a remaining length

# Without TCP_NODELAY a request/response round trip costs ~88 ms (Nagle vs delayed ACK),
# with it ~0.4 ms on a broker that sets it too (DESIGN §8).
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

# aiomqtt's publish() awaits its QoS 1 PUBACK, so one sender coroutine means one message
# per round trip. SENDERS coroutines keep that many publishes in flight (paho's own
# in-flight window is raised to match). Measured on the 2-core dev box, one link
# publishing 20k QoS 1 messages of 100 B to a nodelay Mosquitto (noisy, shared box):
# 1 sender ~2.1-2.8k msgs/s; 8, 16 and 32 senders ~4.4-7.5k (a plateau: the cost is
# then paho/asyncio CPU per message, not waiting); 64 no better; 128 worse (~2.7-3.3k).
# 16 sits on the plateau. More throughput comes from batching logical messages into one
# MQTT message (DESIGN §8). Wire order is kept: a sender takes a message from the outbox
# and hands it to paho without yielding in between.
SENDERS = 16

#: the file in a data dir that keeps a persistent session's client id (kept_client_id)
CLIENT_ID_FILE = "mqtt-client-id"

FIRST_BACKOFF_S = 0.1
#: Longest wait between two attempts to reconnect (jittered down to half of it).
MAX_BACKOFF_S = 5.0
# A broker that took the connection but acknowledges nothing for this long is treated as
# gone (CONNACK, SUBACK, PUBACK): the session is dropped and rebuilt.
ACK_TIMEOUT_S = 30.0
# The backoff starts over only after a session that lasted this long. A broker that takes
# the connection and then drops it at once, again and again, is refusing something the
# link does on every session (RabbitMQ and NATS close the connection of a client that
# publishes or subscribes where it may not, or sends a message over their size limit):
# reconnecting at once each time would hammer it ~15 times a second.
STABLE_SESSION_S = 10.0
# A node that took the connection but has not answered the CONNECT this long is skipped
# for the next one. A NATS node whose JetStream lost its leader (another node died) holds
# CONNECTs unanswered; a healthy one answers within ~1 s even when it creates the session.
CONNACK_TIMEOUT_S = 10.0
# A subscription the broker refuses is asked for again this many times, after these
# pauses, before the session goes on without it: NATS refuses one for seconds while its
# JetStream elects new leaders (longer on a busy machine); an ACL's refusal (Mosquitto)
# stays one. The session then asks again in the background, every RESUBSCRIBE_S
# doubling up to RESUBSCRIBE_MAX_S, and runs ``on_connect`` again once all are granted.
SUBSCRIBE_RETRY_S = (0.5, 1.0, 2.0)
RESUBSCRIBE_S = 1.0
RESUBSCRIBE_MAX_S = 30.0


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us if we vanish without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: ``mqtts://``: TLS, the broker's certificate verified
    tls: bool = False

    def __str__(self) -> str:
        """``host:port`` only: safe to log, never carries credentials."""
        return f"{self.host}:{self.port}"


def parse_broker_urls(urls: str) -> tuple[BrokerAddress, ...]:
    """``URL[,URL…]`` → the addresses of a broker's nodes, in the order given.

    A clustered broker (NATS, a RabbitMQ cluster, bridged Mosquittos) is several nodes
    serving the same topics: a link dials the first and moves on to the next when its
    node goes away (docs/brokers.md)."""
    parts = [part.strip() for part in urls.split(",")]
    if not all(parts):
        raise Invalid("broker URL list has an empty entry", field="broker")
    return tuple(parse_broker_url(part) for part in parts)


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt[s]://[user:pass@]host[:port]`` → address; anything else is ``Invalid``."""
    if "," in url:
        raise Invalid("one broker URL expected here, not a list", field="broker")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid(f"bad broker URL: {exc}", field="broker") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise Invalid("broker URL must start with mqtt:// or mqtts://", field="broker")
    if not parts.hostname:
        raise Invalid("broker URL has no host", field="broker")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid("broker URL must be mqtt[s]://[user:pass@]host[:port]", field="broker")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=(DEFAULT_TLS_PORT if tls else DEFAULT_PORT) if port is None else port,
        tls=tls,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


def without_credentials(url: str) -> str:
    """``url`` without its ``user:pass@``: what may be shown or sent on (a log, a startup
    line, a worker's welcome, a root's cluster document) of a broker URL that carries a
    password. A clustered broker's nodes (comma-separated) each lose theirs."""
    if "," in url:
        return ",".join(without_credentials(node.strip()) for node in url.split(","))
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def write_promptly(client: aiomqtt.Client) -> None:
    """Send what paho queues on the loop's next turn instead of through aiomqtt's writer.

    For every packet paho queues, aiomqtt does ``call_soon_threadsafe(add_writer)`` (a
    self-pipe write and an ``epoll_ctl``), waits for epoll to say the socket is writable,
    writes, then removes the writer: every hop of a task pays that. Measured with two
    aiomqtt clients ping-ponging through a nodelay Mosquitto on this machine, the round
    trip went from 0.53 to 0.33 ms at QoS 0 and from 0.87 to 0.58 ms at QoS 1. Once
    connected, paho queues packets on the loop's thread (publish, acks in ``loop_read``,
    pings in ``loop_misc``), so a plain ``call_soon`` is safe; anything the socket does not
    take at once, a write that fails, or a call from another thread (``connect`` runs in
    an executor) goes back to aiomqtt's own hook, which also reports a broken connection.
    aiomqtt keeps its paho client private, hence the one private access.
    """
    paho = client._client
    loop = asyncio.get_running_loop()
    thread = threading.get_ident()
    aiomqtt_hook = paho.on_socket_register_write
    if aiomqtt_hook is None:  # not aiomqtt's usual wiring: leave it alone
        return

    def write_now() -> None:
        with contextlib.suppress(Exception):  # aiomqtt's writer retries it and reports it
            paho.loop_write()
        sock = paho.socket()
        if paho.want_write() and sock is not None:
            aiomqtt_hook(paho, None, sock)

    def register_write(client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        if threading.get_ident() == thread:
            loop.call_soon(write_now)
        else:
            aiomqtt_hook(client, userdata, sock)

    paho.on_socket_register_write = register_write


def fail_fast_on_close(client: aiomqtt.Client) -> None:
    """Make a connection the broker closes before its CONNACK fail the connect at once.

    aiomqtt waits for the CONNACK until its timeout even when the socket is already
    closed. A NATS node does close it when it cannot load the client's session (its
    JetStream electing new leaders after another node died): without this a link sat out
    CONNACK_TIMEOUT_S there instead of trying the next node. The same private access as
    :func:`write_promptly`; aiomqtt's own hook still runs (and does nothing before a
    CONNACK)."""
    paho = client._client
    loop = asyncio.get_running_loop()
    # paho types it as any of its callback API versions; aiomqtt's is version 2's
    aiomqtt_hook: Callable[..., None] | None = paho.on_disconnect
    if aiomqtt_hook is None:  # not aiomqtt's usual wiring: leave it alone
        return

    def fail(reason: str) -> None:
        waiting = client._connected
        if not waiting.done():
            waiting.set_exception(
                aiomqtt.MqttError(f"the broker closed the connection before CONNACK ({reason})")
            )

    def on_disconnect(
        paho_client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any = None,
    ) -> None:
        loop.call_soon_threadsafe(fail, str(reason_code))
        aiomqtt_hook(paho_client, userdata, flags, reason_code, properties)

    paho.on_disconnect = on_disconnect


def unique_client_id(name: str) -> str:
    """``name`` with a random suffix: the MQTT client id of one link of one process.

    A broker disconnects a client when another connects with its client id, and each then
    reconnects and kicks the other: two processes given the same name (workers sharing an
    id, two managers of one cluster) would fight forever, each seeing only reconnects. So
    no two links ever share one; ``name`` only says, in the broker's logs, whose it is.
    """
    return f"{name}-{secrets.token_hex(4)}"


def kept_client_id(name: str, directory: Path) -> str:
    """``name`` with a random suffix chosen once and kept in ``directory``: the client id
    of a link with a persistent session (``clean_session=False``), which the next process
    on that directory takes over with whatever the broker queued for it meanwhile. Unique
    as long as one process at a time runs on a directory (``roles/lock.py``) and no two
    directories are copies; a suffix that cannot be read or kept is made anew."""
    path = directory / CLIENT_ID_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        suffix = path.read_text().strip()
        if len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix):
            return f"{name}-{suffix}"
    suffix = secrets.token_hex(4)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{suffix}\n")
    except OSError as exc:
        log.warning(
            "cannot keep the MQTT client id: the next start begins a new broker session",
            extra={"path": str(path), "error": str(exc)},
        )
    return f"{name}-{suffix}"


def backoff_delay(attempt: int, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter, so a fleet does not reconnect in lockstep."""
    cap = min(max_s, FIRST_BACKOFF_S * 2 ** min(attempt, 30))
    return rng.uniform(cap / 2, cap)


@dataclass
class LinkStats:
    published: int = 0
    received: int = 0
    handler_errors: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _describe(exc: BaseException) -> str:
    """The error and its direct cause: aiomqtt wraps the socket error that says why."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    return f"{text} ({_describe(cause)})" if cause is not None else text


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails. paho (2.2) lets a refused handshake's
    socket go without closing it, so every attempt against a broker whose certificate
    does not verify left a descriptor for the garbage collector (and a ResourceWarning)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _tls_context(ca: Path | None) -> ssl.SSLContext:
    context = client_context(ca)
    context.sslsocket_class = _ClosingSSLSocket
    return context


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise Invalid(f"cannot publish to topic {topic!r}", field="topic")


class MqttLink:
    """A connection that keeps itself up.

    Publishes go through an outbox and are sent (again, after a reconnect, if the
    connection dropped before the broker acknowledged them) while connected, so
    ``publish`` never fails because the broker is briefly away: delivery is at least
    once and receivers are idempotent (DESIGN §4). Incoming messages are handed to
    ``on_message`` one at a time, in order, by a task that outlives reconnects, so a
    connection drop never cancels a handler halfway. ``on_connect`` runs after every
    (re)connect once subscribed; ``on_disconnect`` when a connection that was up ends.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        will: Will | None = None,
        clean_session: bool = True,
        on_connect: ConnectHook | None = None,
        on_disconnect: DisconnectHook | None = None,
        keepalive: int = 30,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        max_backoff_s: float = MAX_BACKOFF_S,
        connect_timeout_s: float = 10.0,
        rng: random.Random | None = None,
        ca: Path | None = None,
    ) -> None:
        """``ca``: the CA an ``mqtts://`` broker's certificate must chain to (None: the
        system's trust store); see ``edgeplane.security.tls``."""
        addresses = parse_broker_urls(url)
        if qos not in (0, 1, 2):
            raise Invalid(f"qos must be 0, 1 or 2, not {qos}", field="qos")
        #: the broker's nodes; the link is on ``_addresses[_node]`` or about to dial it
        self._addresses = tuple(
            BrokerAddress(
                host=address.host,
                port=address.port,
                username=username if username is not None else address.username,
                password=password if password is not None else address.password,
                tls=address.tls,
            )
            for address in addresses
        )
        self._node = 0
        # made once: loading a CA file again for every reconnect costs milliseconds
        tls = any(address.tls for address in addresses)
        self._tls = _tls_context(ca) if tls else None
        self.client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._will = will
        self._clean_session = clean_session
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._keepalive = keepalive
        self._qos = qos
        self._max_backoff_s = max_backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._rng = rng or random.Random()

        self.connected = asyncio.Event()
        self.stats = LinkStats()
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue(OUTBOX_SIZE)
        self._retry: deque[_Outgoing] = deque()
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._unsent = 0
        self._all_sent = asyncio.Event()
        self._all_sent.set()
        self._sessions = 0
        self._last_error = "no connection attempt yet"
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def _address(self) -> BrokerAddress:
        return self._addresses[self._node]

    @property
    def broker(self) -> str:
        """``host:port`` of the broker node the link is on (or dials next), for logs."""
        return str(self._address)

    @property
    def brokers(self) -> str:
        """Every node's ``host:port``, comma-separated, for errors."""
        return ",".join(str(address) for address in self._addresses)

    async def start(self) -> None:
        """Connect; return once subscribed and ``on_connect`` ran, else ``Unavailable``."""
        if self._tasks:
            raise RuntimeError("MqttLink already started")
        run = asyncio.create_task(self._run(), name=f"mqtt-link:{self.client_id}")
        dispatch = asyncio.create_task(self._dispatch(), name=f"mqtt-dispatch:{self.client_id}")
        self._tasks = [run, dispatch]
        up = asyncio.create_task(self.connected.wait())
        ready = False
        try:
            await asyncio.wait(
                {up, run}, timeout=self._connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            ready = self.connected.is_set()
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            if not ready:
                await self._cancel_tasks()
        if not ready:
            raise Unavailable(
                f"cannot reach MQTT broker {self.brokers} within {self._connect_timeout_s:g} s: "
                f"{self._last_error}",
                field="broker",
            )

    async def stop(self, drain_timeout_s: float = 2.0) -> None:
        """Send what is still queued (if connected, for a bounded time), then disconnect."""
        if not self._tasks:
            return
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), drain_timeout_s)
        await self._cancel_tasks()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False
    ) -> None:
        """Queue a message; waits only while the outbox is full."""
        await self._outbox.put(self._outgoing(topic, payload, qos, retain))
        self._queued()

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False
    ) -> None:
        """Queue a message from sync code; ``Unavailable`` if the outbox is full."""
        try:
            self._outbox.put_nowait(self._outgoing(topic, payload, qos, retain))
        except asyncio.QueueFull:
            raise Unavailable(
                f"MQTT outbox full ({OUTBOX_SIZE} messages unsent to {self.broker})"
            ) from None
        self._queued()

    async def flush(self) -> None:
        """Wait until the broker has acknowledged everything published so far."""
        await self._all_sent.wait()

    def _outgoing(self, topic: str, payload: bytes, qos: int | None, retain: bool) -> _Outgoing:
        _check_topic(topic)
        qos = self._qos if qos is None else qos
        if qos not in (0, 1, 2):
            raise Invalid(f"qos must be 0, 1 or 2, not {qos}", field="qos")
        if len(payload) > MAX_PAYLOAD:
            raise Invalid(f"payload of {len(payload)} bytes is too large", field="payload")
        return _Outgoing(topic, payload, qos, retain)

    def _queued(self) -> None:
        self._unsent += 1
        self._all_sent.clear()

    def _sent(self) -> None:
        self.stats.published += 1
        self._unsent -= 1
        if self._unsent == 0:
            self._all_sent.set()

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error(
                    "mqtt link task failed",
                    exc_info=result,
                    extra={"client_id": self.client_id, "broker": self.broker},
                )
        self.connected.clear()

    def _new_client(self) -> aiomqtt.Client:
        will = None
        if self._will is not None:
            w = self._will
            will = aiomqtt.Will(w.topic, w.payload, w.qos, w.retain)
        client = aiomqtt.Client(
            self._address.host,
            self._address.port,
            identifier=self.client_id,
            username=self._address.username,
            password=self._address.password,
            will=will,
            clean_session=self._clean_session,
            keepalive=self._keepalive,
            # the CONNECT's; SUBSCRIBE and PUBLISH are given ACK_TIMEOUT_S each
            timeout=CONNACK_TIMEOUT_S,
            max_inflight_messages=SENDERS,
            socket_options=[NODELAY],
            tls_context=self._tls if self._address.tls else None,
        )
        fail_fast_on_close(client)
        # SENDERS publishes awaiting their PUBACK are normal here, not a warning sign.
        client.pending_calls_threshold = SENDERS + len(self._subscriptions) + 1
        return client

    async def _run(self) -> None:
        """Connect, serve the session, back off, repeat, until cancelled by ``stop``.

        A link given several nodes moves to the next one after each failure and backs
        off only once it has tried them all: a node that died costs one attempt, not a
        backoff, while a broker that is down entirely is not hammered."""
        loop = asyncio.get_running_loop()
        attempt = 0
        tried = 0  # nodes tried in a row without getting a session
        while True:
            was_up = False
            up_at = 0.0
            client = self._new_client()
            try:
                async with client:
                    was_up = True
                    up_at = loop.time()
                    tried = 0
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                self._last_error = _describe(group.exceptions[0])
            except* Exception as group:
                # A bug rather than the network; keep the link alive all the same.
                self._last_error = _describe(group.exceptions[0])
                log.error(
                    "mqtt link %s session failed",
                    self.client_id,
                    exc_info=group,
                    extra={"client_id": self.client_id, "broker": self.broker},
                )
            finally:
                self.connected.clear()
                if was_up and self._on_disconnect is not None:
                    self._on_disconnect()
            if was_up and loop.time() - up_at >= STABLE_SESSION_S:
                attempt = 0  # it held: this drop is news, not the same fault again
            failed = self.broker
            tried += 1
            self._node = (self._node + 1) % len(self._addresses)
            if tried < len(self._addresses):
                delay = 0.0  # another node may be up: try it at once
            else:
                delay = backoff_delay(attempt, self._max_backoff_s, self._rng)
                attempt += 1
                tried = 0
            log.warning(
                "mqtt link %s %s %s: %s; retrying %s in %.2f s",
                self.client_id,
                "lost" if was_up else "cannot reach",
                failed,
                self._last_error,
                self.broker,
                delay,
                extra={
                    "client_id": self.client_id,
                    "broker": failed,
                    "next_broker": self.broker,
                    "error": self._last_error,
                    "was_connected": was_up,
                    "attempt": attempt,
                    "retry_in_s": round(delay, 3),
                },
            )
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: subscribe, run receiver and senders until it drops."""
        write_promptly(client)
        async with asyncio.TaskGroup() as tasks:
            # The receiver runs first: it is what notices the connection dropping, which
            # aiomqtt does not tell a SUBSCRIBE awaiting its SUBACK (it would wait out
            # ACK_TIMEOUT_S). RabbitMQ answers a subscription it refuses that way.
            tasks.create_task(self._receive(client))
            refused: list[str] = []
            if self._subscriptions:
                refused = await self._subscribe(client, self._subscriptions)
                for pause in SUBSCRIBE_RETRY_S:
                    if not refused:
                        break
                    await asyncio.sleep(pause)
                    refused = await self._subscribe(client, refused)
                if refused:
                    # An ACL, most likely (nothing arrives on them), or a broker still busy.
                    log.warning(
                        "mqtt broker %s refused subscriptions %s; asking again in the background",
                        self.broker,
                        refused,
                        extra={
                            "client_id": self.client_id,
                            "broker": self.broker,
                            "topics": refused,
                        },
                    )
            for _ in range(SENDERS):
                tasks.create_task(self._send(client))
            if refused:
                tasks.create_task(self._resubscribe(client, refused))
            await self._connect_hook()
            self._sessions += 1
            if self._sessions > 1:
                self.stats.reconnects += 1
            log.info(
                "mqtt link %s connected to %s",
                self.client_id,
                self.broker,
                extra={"client_id": self.client_id, "broker": self.broker},
            )
            self.connected.set()

    async def _connect_hook(self) -> None:
        if self._on_connect is not None:
            try:
                await self._on_connect()
            except Exception:
                self.stats.handler_errors += 1
                log.exception(
                    "mqtt on_connect hook failed",
                    extra={"client_id": self.client_id, "broker": self.broker},
                )

    async def _resubscribe(self, client: aiomqtt.Client, refused: list[str]) -> None:
        """Ask for refused subscriptions until the broker grants them (or the session
        ends), then run ``on_connect`` again: what was published on them meanwhile never
        arrived, and the hook is what makes a member (a manager) catch up after a
        reconnect (a worker's hello, a manager's reregister)."""
        pause = RESUBSCRIBE_S
        while refused:
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESUBSCRIBE_MAX_S)
            refused = await self._subscribe(client, refused)
        log.info(
            "mqtt broker %s granted the subscriptions it had refused",
            self.broker,
            extra={"client_id": self.client_id, "broker": self.broker},
        )
        await self._connect_hook()

    async def _subscribe(self, client: aiomqtt.Client, topics: Sequence[str]) -> list[str]:
        """Subscribe to ``topics`` at QoS 1; the ones the broker refused."""
        codes = await client.subscribe([(topic, 1) for topic in topics], timeout=ACK_TIMEOUT_S)
        return [
            topic
            for topic, code in zip(topics, codes, strict=False)
            if isinstance(code, ReasonCode) and code.is_failure
        ]

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            # paho hands every received payload over as bytes.
            assert isinstance(payload, bytes)
            self._inbox.put_nowait((message.topic.value, payload))

    async def _dispatch(self) -> None:
        """Run the handler for each message in order; its failures never stop the link."""
        while True:
            topic, payload = await self._inbox.get()
            self.stats.received += 1
            try:
                await self._on_message(topic, payload)
            except Exception:
                self.stats.handler_errors += 1
                log.exception(
                    "mqtt message handler failed on %s",
                    topic,
                    extra={"client_id": self.client_id, "topic": topic},
                )

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            item = self._retry.popleft() if self._retry else await self._outbox.get()
            sent = False
            try:
                await client.publish(
                    item.topic,
                    item.payload,
                    qos=item.qos,
                    retain=item.retain,
                    timeout=ACK_TIMEOUT_S,
                )
                sent = True
            finally:
                if not sent:
                    # Dropped connection or cancelled session: send it again next time.
                    self._retry.append(item)
            self._sent()
