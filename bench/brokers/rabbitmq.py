"""A private RabbitMQ 3.10 node with its MQTT plugin, for the broker matrix.

The node runs the configuration the docs show (``deploy/brokers/rabbitmq/rabbitmq.conf``,
docs/brokers.md) with its ports and paths filled in: everything it writes (mnesia, logs,
config, enabled-plugins file, Erlang cookie) lives under the given directory, its node name
is its own (``ep-<random>@localhost``) and its ports are free ones, so it never touches the
machine's RabbitMQ. Only epmd, the Erlang port mapper every node on a host registers with,
is shared: a node starts it if none runs, and it is left running.

The plugin is enabled by the node's enabled-plugins file (a copy of
``deploy/brokers/rabbitmq/enabled_plugins``), not ``rabbitmq-plugins enable`` (which would
change the machine's node). The user is the config's ``default_user``, made on the node's
first start with a random password, instead of guest.

    with launch(Path("/tmp/x")) as url:   # mqtt://USER:PASS@127.0.0.1:PORT
        ...

``RabbitMQNode`` is the same node with ``start``/``stop`` of its own, for a test that
restarts the broker on its data; ``rabbitmqctl(directory, …)`` runs the CLI against it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psutil

from bench.brokers.base import BrokerUnavailable
from edgeplane.lifeline import die_with_parent
from edgeplane.transport import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG_TEMPLATE = ROOT / "deploy" / "brokers" / "rabbitmq" / "rabbitmq.conf"
ENABLED_PLUGINS = CONFIG_TEMPLATE.with_name("enabled_plugins")
HOST = "127.0.0.1"
USER = "edgeplane"
#: The server script itself, not Debian's /usr/sbin wrapper: run as root, that wrapper
#: switches to the rabbitmq user and the machine's paths (/var/lib/rabbitmq).
SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
CTL_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmqctl"  # the same, for the same reason
#: rabbitmqctl boots an Erlang VM and Elixir for each command: ~2-5 s here.
CTL_TIMEOUT_S = 60.0
#: A cold boot of RabbitMQ (Erlang VM, mnesia schema, the plugin's Raft client-id
#: tracker, which first waits 5 s for cluster peers) took 7.6-12.5 s on the 2-core test
#: machine while other suites ran; the bound leaves room for a busier one.
START_TIMEOUT_S = 90.0
#: A node closes its connections and stops its stores on SIGTERM: ~1 s measured.
STOP_TIMEOUT_S = 30.0
#: erl_child_setup notices the VM is gone at once; this bounds a stuck one.
HELPER_EXIT_S = 5.0
POLL_S = 0.2
LOG_TAIL_BYTES = 4000


class RabbitMQFailed(RuntimeError):
    """The node did not start or take MQTT connections, or rabbitmqctl failed: a failure,
    never a reason to skip (that is ``BrokerUnavailable``: RabbitMQ is not installed)."""


def server_script() -> str | None:
    """The rabbitmq-server start script, None when RabbitMQ is not installed."""
    for path in SERVER_SCRIPTS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("rabbitmq-server")


def render_config(mqtt_port: int, password: str, user: str = USER, host: str = HOST) -> str:
    """The documented config with this node's listener and credentials."""
    template = CONFIG_TEMPLATE.read_text()
    # str.format would trip over the regex braces a reader may add; plain replacement.
    values = {"mqtt_host": host, "mqtt_port": str(mqtt_port), "user": user, "password": password}
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, user: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session, with credentials when given."""
    flags = 0b0000_0010 | (0b1000_0000 if user is not None else 0)
    flags |= 0b0100_0000 if password is not None else 0
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + _utf8(client_id)
    body += (_utf8(user) if user is not None else b"") + (
        _utf8(password) if password is not None else b""
    )
    length = bytearray()
    size = len(body)
    while True:
        byte, size = size % 128, size // 128
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([0x10]) + bytes(length) + body


def mqtt_accepts(port: int, user: str | None, password: str | None, host: str = HOST) -> bool:
    """Whether the broker answers a CONNECT with these credentials (None: anonymous) by
    CONNACK 0 (accepted)."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.sendall(connect_packet(f"ep-probe-{secrets.token_hex(4)}", user, password))
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return False
                answer += chunk
            accepted = answer[0] == 0x20 and answer[3] == 0
            if accepted:
                sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, no log line about a drop
            return accepted
    except OSError:
        return False


def rabbitmqctl(directory: Path, *args: str, stdin: str = "") -> str:
    """Run ``rabbitmqctl ARGS`` against the node ``launch(directory)`` runs (its name and
    Erlang cookie are in the directory); its output, or ``RabbitMQFailed``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(directory / "home"),
        "LANG": "C.UTF-8",
        "RABBITMQ_NODENAME": (directory / "nodename").read_text().strip(),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "ERL_EPMD_ADDRESS": HOST,
    }
    done = subprocess.run(
        [CTL_SCRIPT, *args],
        env=env,
        input=stdin.encode(),
        capture_output=True,
        timeout=CTL_TIMEOUT_S,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0:
        raise RabbitMQFailed(f"rabbitmqctl {args[0]} failed ({done.returncode}): {output}")
    return output


def _tail(path: Path) -> str:
    try:
        return path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the VM (it stops the node cleanly), SIGKILL it if it lingers; then make sure
    its helpers (erl_child_setup, inet_gethost: sessions of their own, which end with the
    VM) are gone too. epmd is not among them: it daemonizes, and other nodes use it."""
    try:
        helpers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        helpers = []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    _, left = psutil.wait_procs(helpers, timeout=HELPER_EXIT_S)
    for helper in left:
        with contextlib.suppress(psutil.Error):
            helper.kill()


class RabbitMQNode:
    """One node under ``directory``: its files, name, ports and password are chosen once,
    so :meth:`stop` then :meth:`start` restarts the same node on the same data (a broker
    restart, as an operator's would be)."""

    def __init__(self, directory: Path) -> None:
        script = server_script()
        if script is None:
            raise BrokerUnavailable(
                "rabbitmq-server is not installed (scripts/system-deps.sh installs it)"
            )
        self.script = script
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.mqtt_port, dist_port = free_port(), free_port()
        self.password = secrets.token_urlsafe(18)
        self.node = f"ep-{secrets.token_hex(4)}@localhost"
        (directory / "nodename").write_text(self.node)  # for rabbitmqctl() above
        config = directory / "rabbitmq.conf"
        config.write_text(render_config(self.mqtt_port, self.password))
        config.chmod(0o600)  # it holds the password
        plugins = directory / "enabled_plugins"
        shutil.copyfile(ENABLED_PLUGINS, plugins)
        env_file = directory / "rabbitmq-env.conf"  # empty: not the machine's /etc one
        env_file.write_text("")
        home = directory / "home"  # the node's .erlang.cookie goes here, not in ~
        home.mkdir(exist_ok=True)
        self.logs = directory / "log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.logs),
            "RABBITMQ_DIST_PORT": str(dist_port),
            # The script then execs the VM instead of keeping a shell in front of it that
            # relays signals: the VM itself is this process's child, so the kernel kills
            # it if this process dies (die_with_parent), and a SIGTERM stops it cleanly
            # (the VM handles it since 3.8). -noinput: no Erlang shell on stdin, as
            # without the flag.
            "RABBITMQ_ALLOW_INPUT": "1",
            # Erlang distribution on loopback only, as the machine's node has it.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}"
            ),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{USER}:{quote(self.password, safe='')}@{HOST}:{self.mqtt_port}"

    def start(self) -> str:
        """Start the node; its URL once an MQTT CONNECT with the user is accepted."""
        with (self.directory / "stdout.log").open("ab") as output:
            proc = self._proc = subprocess.Popen(
                [self.script],
                env=self.env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the test's terminal is not the node's
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not mqtt_accepts(self.mqtt_port, USER, self.password):
            code = proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                reason = (
                    f"exited with code {code}"
                    if code is not None
                    else f"took no MQTT connection within {START_TIMEOUT_S:g} s"
                )
                tail = _tail(self.logs / f"{self.node}.log") or _tail(self.directory / "stdout.log")
                raise RabbitMQFailed(f"RabbitMQ node {self.node} {reason}; log tail:\n{tail}")
            time.sleep(POLL_S)
        return self.url

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)


@contextmanager
def launch(directory: Path) -> Iterator[str]:
    """Run a RabbitMQ node under ``directory``; yield ``mqtt://USER:PASS@127.0.0.1:PORT``
    once an MQTT CONNECT with those credentials is accepted; stop the node on exit."""
    node = RabbitMQNode(directory)
    try:
        yield node.start()
    finally:
        node.stop()
