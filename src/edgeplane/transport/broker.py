"""The broker `edgeplane up` brings along: a Mosquitto child if one is installed, else amqtt.

Mosquitto is preferred because it is far faster; it is started with ``set_tcp_nodelay``
because Nagle's algorithm otherwise adds ~88 ms to every round trip (DESIGN §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import psutil

from edgeplane.errors import Unavailable
from edgeplane.lifeline import die_with_parent
from edgeplane.tls import ServerTls

if TYPE_CHECKING:
    from amqtt.broker import Broker

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
#: How often a role looks whether its broker is still running (a poll of a child: cheap).
WATCH_S = 0.5
STOP_TIMEOUT_S = 5.0
LOG_TAIL_BYTES = 2000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def dial_host(host: str) -> str:
    """The address a process on this machine reaches a broker listening on ``host`` at."""
    return HOST if host in ("0.0.0.0", "::", "") else host


def broker_url(host: str, port: int, tls: ServerTls | None) -> str:
    return f"{'mqtts' if tls is not None else 'mqtt'}://{dial_host(host)}:{port}"


def tls_lines(tls: ServerTls | None) -> list[str]:
    """The listener's TLS settings: only what the certificate says, no client certificate
    asked (clients are told apart by their credentials, not their certificates)."""
    if tls is None:
        return []
    return [f"certfile {tls.cert}", f"keyfile {tls.key}"]


@dataclass(frozen=True)
class AuthFiles:
    """The password and ACL files a locked-down Mosquitto reads (and re-reads on SIGHUP);
    ``security/broker_auth.py`` writes them."""

    password_file: Path
    acl_file: Path


def mosquitto_config(
    port: int, auth: AuthFiles | None = None, host: str = HOST, tls: ServerTls | None = None
) -> str:
    """Config for a private, low-latency, memory-only Mosquitto (logs go to stderr).

    With ``auth`` only the identities in its files may do more than join (the ACL lets
    anonymous clients publish a join request and read its answer, nothing else)."""
    access = (
        ["allow_anonymous true"]
        if auth is None
        else [
            # Anonymous clients stay allowed to connect: the ACL lets them only join.
            "allow_anonymous true",
            f"password_file {auth.password_file}",
            f"acl_file {auth.acl_file}",
        ]
    )
    return "\n".join(
        [
            # Mosquitto started as root switches to its own user, and the kernel forgets a
            # process's parent-death signal when its credentials change (lifeline.py): it
            # stays the user of the role that starts it (no effect unless that is root).
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"listener {port} {host}",
            *tls_lines(tls),
            *access,
            "set_tcp_nodelay true",
            "persistence false",
            # Stock limits (1000 queued, 20 in flight per client) drop QoS 1 messages
            # under a burst of dispatches; edgeplane relies on them arriving.
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "",
        ]
    )


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now. SO_REUSEADDR as Mosquitto sets it:
    the connections a killed broker leaves in TIME_WAIT do not hold its port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((dial_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """A Mosquitto child in its own process group, killed by the kernel if this process
    dies without stopping it (``lifeline.py``: start it from a long-lived thread).

    Synchronous on purpose: it belongs to no event loop, so a test session can share one
    across many per-test loops.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        executable: str = "mosquitto",
        auth: AuthFiles | None = None,
        host: str = HOST,
        tls: ServerTls | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.tls = tls
        self.executable = executable
        self.auth = auth
        self.config_path = data_dir / "mosquitto.conf"
        self.log_path = data_dir / "mosquitto.log"
        #: the running broker's pid, so a later start finds one an earlier run left
        self.pid_path = data_dir / "mosquitto.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return broker_url(self.host, self.port, self.tls)

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id) while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> str:
        """Spawn and wait until the port accepts connections; ``Unavailable`` otherwise."""
        self.spawn()
        return self.ready()

    def reclaim(self) -> int | None:
        """Kill the Mosquitto an earlier run of this data dir left running (its pid file
        names it, and it runs this data dir's config), so that it frees the port: the
        kernel kills it with its role (``lifeline.py``), but not where there is no such
        thing, nor before it has noticed. The pid it killed, if any."""
        try:
            pid = int(self.pid_path.read_text().strip())
            found = psutil.Process(pid)
            ours = str(self.config_path) in found.cmdline()
        except (OSError, ValueError, psutil.Error):
            return None
        if not ours or pid == os.getpid():
            return None
        log.warning("stopping the broker an earlier run left behind", extra={"pid": pid})
        with contextlib.suppress(psutil.Error):
            found.kill()
            found.wait(STOP_TIMEOUT_S)
        return pid

    def spawn(self) -> None:
        """Start the process (fast: call it from the thread that must outlive it)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(mosquitto_config(self.port, self.auth, self.host, self.tls))
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [self.executable, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.pid_path.write_text(f"{self._proc.pid}\n")

    def ready(self) -> str:
        """Wait until the spawned broker accepts connections; ``Unavailable`` otherwise."""
        assert self._proc is not None, "spawn() first"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(self.port, self.host):
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                reason = f"exited with code {code}" if code is not None else "did not listen"
                raise Unavailable(
                    f"mosquitto on port {self.port} {reason}; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        return self.url

    @property
    def exited(self) -> bool:
        """The spawned broker has ended (killed, crashed) without :meth:`stop`."""
        return self._proc is not None and self._proc.poll() is not None

    def reload(self) -> None:
        """Make Mosquitto re-read its password and ACL files (SIGHUP): clients no longer
        in them are disconnected."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        """Terminate the whole process group; kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            else:
                proc.wait()
        if proc is not None:
            self.pid_path.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-LOG_TAIL_BYTES:].decode(errors="replace")


def amqtt_config(port: int, host: str = HOST, tls: ServerTls | None = None) -> dict[str, object]:
    """Only the anonymous-auth plugin: $SYS and packet logging cost time and log noise."""
    listener: dict[str, object] = {"type": "tcp", "bind": f"{host}:{port}"}
    if tls is not None:
        listener.update(ssl=True, certfile=str(tls.cert), keyfile=str(tls.key))
    return {
        "listeners": {"default": listener},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


class EmbeddedBroker:
    """A broker this process tree runs, on 127.0.0.1 unless given another ``host``; with
    ``tls`` it serves MQTTS only (``edgeplane.tls``: never plain off loopback)."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        prefer_mosquitto: bool = True,
        auth: AuthFiles | None = None,
        host: str = HOST,
        tls: ServerTls | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.tls = tls
        self.port = port or free_port()
        executable = shutil.which("mosquitto") if prefer_mosquitto else None
        self.kind: Literal["mosquitto", "amqtt"] = "mosquitto" if executable else "amqtt"
        self._mosquitto = (
            MosquittoProcess(data_dir, self.port, executable, auth, host, tls)
            if executable is not None
            else None
        )
        self.auth = auth
        self._amqtt: Broker | None = None
        self._watcher: asyncio.Task[None] | None = None

    def reclaim(self) -> None:
        """Stop a broker an earlier run of this data dir left running (Mosquitto only:
        amqtt runs inside this process)."""
        if self._mosquitto is not None:
            self._mosquitto.reclaim()

    @property
    def enforces_acls(self) -> bool:
        """Whether the broker checks identities and ACLs (Mosquitto with auth files)."""
        return self._mosquitto is not None and self.auth is not None

    def reload(self) -> None:
        """Apply changed identities (Mosquitto re-reads its files; amqtt has none)."""
        if self._mosquitto is not None:
            self._mosquitto.reload()

    @property
    def url(self) -> str:
        return broker_url(self.host, self.port, self.tls)

    async def start(self) -> str:
        """Start the broker and return its ``mqtt[s]://`` URL once it accepts connections."""
        if self._mosquitto is not None:
            # Spawned on the loop's thread: the kernel ties the broker's life to the thread
            # that forked it, and an executor's thread may end before this process does.
            self._mosquitto.spawn()
            url = await asyncio.to_thread(self._mosquitto.ready)
            self._watcher = asyncio.create_task(self._watch(self._mosquitto), name="broker")
            return url
        # Imported here: amqtt takes ~0.2 s to import and is unused when Mosquitto runs.
        from amqtt.broker import Broker

        host = self.host
        if self.auth is not None:
            log.warning(
                "Mosquitto is not installed: the amqtt broker enforces no identities or ACLs, "
                "so it listens on 127.0.0.1 only (commands are still signed)",
                extra={"port": self.port},
            )
            host = self.host = HOST
        broker = Broker(amqtt_config(self.port, host, self.tls))
        try:
            await broker.start()
        except Exception as exc:
            raise Unavailable(f"amqtt broker on port {self.port} failed to start: {exc}") from exc
        self._amqtt = broker
        return self.url

    async def _watch(self, mosquitto: MosquittoProcess) -> None:
        """Start the broker again, on its port, whenever it ends without :meth:`stop`
        (kill -9, a crash): the role's clients and its workers reconnect by themselves.
        Without this, a role whose broker died kept running with nothing to talk through."""
        delay, down = WATCH_S, False
        while True:
            await asyncio.sleep(delay)
            if not (down or mosquitto.exited):
                continue
            log.warning("the broker ended; starting it again", extra={"port": self.port})
            await asyncio.to_thread(mosquitto.stop)  # reaps it, closes its log
            mosquitto.spawn()  # on the loop's thread, as in start
            try:
                await asyncio.to_thread(mosquitto.ready)
                delay, down = WATCH_S, False
            except Unavailable as exc:  # e.g. its port taken meanwhile: again, slower
                log.error("the broker did not start again", extra={"why": str(exc)})
                delay, down = min(delay * 2, 30.0), True

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.stop)
            return
        broker, self._amqtt = self._amqtt, None
        if broker is not None:
            await broker.shutdown()
