"""The digits example's client: ``python -m edgeplane.fl.client``, run as a host task.

It reads the env the coordinator gives each training task (docs/fl.md): fetches the
round's global model (``MODEL_URI``) and its shard (``DATA_STORE_URL``), trains the
softmax model with ``HYPERPARAMS``, and posts its update (``f32`` full weights, with
``num_samples`` and its local metrics) to ``COORDINATOR_URL``, with the task's own
credential (``FL_TOKEN``), which lets it do only that. When the coordinator cannot be
reached for the post, it publishes the update over MQTT instead (``FL_MQTT_URL``,
``FL_MQTT_TOPIC`` and, on a broker edgeplane secures, ``FL_MQTT_USERNAME`` and
``FL_MQTT_PASSWORD``: an identity that may publish on that one topic and read the
answer to it), again until the coordinator answers it.

A long-lived client (``client_tasks: persistent``; its env has ``FL_ASSIGNMENT_URL``)
runs for the whole experiment instead: it asks for its next round (held open by the
coordinator until there is one), trains each round it is selected for with the shard and
imports it already has, and exits 0 when the experiment ended (:class:`Session`).
"""

from __future__ import annotations

import base64
import io
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson

from edgeplane.fl import mqtt, updates
from edgeplane.fl.model import evaluate, fits, train
from edgeplane.fl.updates import RAW
from edgeplane.protocol.topics import fl_ack_of
from edgeplane.transport import BrokerAddress

#: Seconds to wait for the broker to take the update (its PUBACK).
MQTT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
#: An update over MQTT is sent again until the coordinator answers it (on
#: ``FL_MQTT_TOPIC`` with ``acks`` for ``updates``): a manager that took over from a dead
#: one subscribes only once it leads, and what was published before is not kept for it.
#: After the first send the client waits this long, then twice as long, up to
#: ``RESEND_MAX_S``, for ``ANSWER_TIMEOUT_S`` in all.
RESEND_FIRST_S = 2.0
RESEND_MAX_S = 10.0
ANSWER_TIMEOUT_S = 60.0
#: How often a client whose broker went away looks whether paho reconnected, s.
RECONNECT_POLL_S = 0.1
#: What ``post_over_mqtt`` returns when the coordinator answered with a refusal (late,
#: say): told on stderr; a long-lived client goes on to its next round as over HTTP.
REFUSED = 3
#: The coordinator's answers that mean the update is on record.
TAKEN = frozenset({"accepted", "duplicate"})
#: Answers that mean the API is there but cannot take the update now: try MQTT.
UNREACHABLE = frozenset({502, 503, 504})
#: How long the coordinator holds an ask for the next round open, s (it answers sooner
#: when there is one); the request's own timeout is this and a margin
WAIT_S = 20.0
#: Waits between asks while the coordinator cannot be reached (a manager restarting):
#: doubling from the first to the last
RETRY_S = (0.1, 2.0)


class Stop(Exception):
    """Ends the client: ``message`` on stderr, ``code`` its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main() -> int:
    env = os.environ
    try:
        if env.get("FL_ASSIGNMENT_URL"):
            return Session(env).serve()
        return send_update(env, train_update(env))
    except Stop as stop:
        return _fail(str(stop), stop.code)


@dataclass(frozen=True)
class Work:
    """One round a long-lived client was given (the coordinator's ``assignment``)."""

    round: int
    attempt: int
    model_uri: str
    data_url: str
    shard: tuple[int, int]
    update_url: str
    mqtt_topic: str | None
    #: the model's bytes when the answer had them (a small model): not fetched then
    model: bytes | None = None


class Session:
    """A long-lived client: one HTTP connection, its shard and imports kept from round to
    round. ``serve`` is the whole loop; its steps are apart so a caller can run them in
    its own order (``tests/faults/test_fl_kill.py`` holds each client between them)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        try:
            self.url = env["FL_ASSIGNMENT_URL"]
            self.hp = orjson.loads(env.get("HYPERPARAMS", "{}"))
        except (KeyError, orjson.JSONDecodeError) as exc:
            raise Stop(f"the task's FL environment is incomplete: {exc}", 2) from None
        self.env = env
        self.http = _http(env, timeout=WAIT_S + 30)
        self.cursor = (0, 0)
        self.state = "running"
        #: the next round, when the coordinator told it with the last update's answer
        self._told: Work | None = None
        self._shard: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def serve(self) -> int:
        """Every round this client is given, until the experiment ends: 0."""
        with self.http:
            while (work := self.next()) is not None:
                self.send(work, self.train(work))
        return 0

    def next(self) -> Work | None:
        """The next round this client is selected for; None once the experiment ended.
        Waits (asking again) while the coordinator cannot be reached."""
        if self._told is not None or self.state != "running":
            told, self._told = self._told, None
            return told
        pause = RETRY_S[0]
        while True:
            round_no, attempt = self.cursor
            params: dict[str, str | int | float] = {
                "round": round_no,
                "attempt": attempt,
                "wait": WAIT_S,
                "model": "inline",
            }
            try:
                got = self.http.get(self.url, params=params)
            except httpx.TransportError:
                got = None
            if got is None or got.status_code in UNREACHABLE:
                time.sleep(pause)  # the manager restarting: ask again
                pause = min(pause * 2, RETRY_S[1])
                continue
            if got.status_code >= 400:  # the credential expired with the task, or refused
                raise Stop(f"the coordinator refused the ask for a round: {got.text}", 1)
            pause = RETRY_S[0]
            work = self._take(got.json())
            if work is not None or self.state != "running":
                return work

    def _take(self, answer: dict[str, Any]) -> Work | None:
        """The round an assignment answer gives (None: none yet, or the experiment
        ended: ``state``)."""
        if answer["state"] != "running":
            self.state = answer["state"]
            return None
        if answer.get("round") is None:
            return None
        work = Work(
            round=answer["round"],
            attempt=answer["attempt"],
            model_uri=answer["model_uri"],
            data_url=answer["data_url"],
            shard=(answer["shard"][0], answer["shard"][1]),
            update_url=answer["update_url"],
            mqtt_topic=answer.get("mqtt_topic"),
            model=base64.b64decode(answer["model"]) if answer.get("model") else None,
        )
        self.cursor = (work.round, work.attempt)
        return work

    def train(self, work: Work) -> bytes:
        """The round's model from the coordinator, trained on the shard: the update."""
        try:
            model = work.model
            if model is None:  # too large to come with the round
                got = self.http.get(work.model_uri)
                got.raise_for_status()
                model = got.content
            glob = updates.decode(model).arrays
            wrong = fits(glob)
            if wrong is not None:
                raise Stop(f"the global model does not fit this client: {wrong}", 2)
            if self._shard is None or self._shard[0] != work.shard:
                # the same shard while the round's selection is: fetched once, not per round
                data = self.http.get(work.data_url)
                data.raise_for_status()
                with np.load(io.BytesIO(data.content), allow_pickle=False) as shard:
                    x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
                self._shard = (work.shard, x, y)
        except httpx.HTTPError as exc:  # nothing to train without them
            raise Stop(f"cannot fetch the round's model and data: {exc}", 1) from None
        _, x, y = self._shard
        return _train(glob, x, y, self.hp, work.round)

    def send(self, work: Work, body: bytes) -> None:
        """POST the update; over MQTT when the coordinator cannot be reached. A refused
        update (late, say) is told on stderr: the client goes on to the next round. The
        answer tells the next round too (``then=assignment``, docs/fl.md): one call a
        round, not two (the coordinator's CPU per round 0.007 -> 0.005 s, bench/fl.py).
        Its first line says the update was taken: a connection lost after it loses
        nothing, and the client asks for its round (``next``)."""
        ask: dict[str, str | float] = {"then": "assignment", "wait": WAIT_S, "model": "inline"}
        url = httpx.URL(work.update_url).copy_merge_params(ask)  # (params= drops ?attempt)
        taken = False
        sent: httpx.Response | None = None
        try:
            with self.http.stream("POST", url, content=body, headers={"Content-Type": RAW}) as sent:
                if sent.status_code == 202:
                    lines = sent.iter_lines()
                    taken = next(lines, None) is not None
                    told = next(lines, None)
                    for _ in lines:  # to its end: an answer left unread closes the
                        pass  # connection, and each round opened a new one
                    if told:
                        self._told = self._take(orjson.loads(told))
                    return
                sent.read()
        except httpx.TransportError as exc:
            if taken:
                return
            print(f"edgeplane.fl.client: round {work.round}: {exc}; over MQTT", file=sys.stderr)
            sent = None
        if sent is None or sent.status_code in UNREACHABLE:
            if sent is not None:
                print(f"edgeplane.fl.client: {sent.status_code}; over MQTT", file=sys.stderr)
            env = {**self.env, "FL_MQTT_TOPIC": work.mqtt_topic or ""}
            code = post_over_mqtt(env, self.env.get("FL_TOKEN", ""), body, work.attempt)
            if code not in (0, REFUSED):
                raise Stop(f"round {work.round}: the update was not sent", code)
        elif sent.status_code == 401:
            raise Stop(f"update refused: {sent.text}", 1)
        else:
            print(f"edgeplane.fl.client: round {work.round}: refused: {sent.text}", file=sys.stderr)


def _http(env: Mapping[str, str], timeout: float = 60) -> httpx.Client:
    try:
        headers = {"Authorization": f"Bearer {env['FL_TOKEN']}"}
    except KeyError as exc:
        raise Stop(f"the task's FL environment is incomplete: {exc}", 2) from None
    return httpx.Client(headers=headers, timeout=timeout, verify=env.get("FL_CA_FILE") or True)


def train_update(env: Mapping[str, str]) -> bytes:
    """Fetch the round's model and this client's shard, train: the update to send."""
    try:
        hp = orjson.loads(env.get("HYPERPARAMS", "{}"))
        model_uri, data_url = env["MODEL_URI"], env["DATA_STORE_URL"]
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise Stop(f"the task's FL environment is incomplete: {exc}", 2) from None
    with _http(env) as http:
        try:
            got = http.get(model_uri)
            got.raise_for_status()
            glob = updates.decode(got.content).arrays
            wrong = fits(glob)
            if wrong is not None:  # an initial model of another shape than this one trains
                raise Stop(f"the global model does not fit this client: {wrong}", 2)
            got = http.get(data_url)
            got.raise_for_status()
        except httpx.HTTPError as exc:  # nothing to train without them
            raise Stop(f"cannot fetch the round's model and data: {exc}", 1) from None
    with np.load(io.BytesIO(got.content), allow_pickle=False) as shard:
        x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
    return _train(glob, x, y, hp, int(env.get("ROUND_ID", "0") or 0))


def _train(
    glob: updates.Arrays, x: np.ndarray, y: np.ndarray, hp: Mapping[str, Any], round_no: int
) -> bytes:
    local = train(
        glob,
        x,
        y,
        lr=float(hp.get("lr", 0.1)),
        epochs=int(hp.get("epochs", 1)),
        batch=int(hp.get("batch", 32)),
        mu=float(hp.get("mu", 0.0)),
        seed=round_no,
    )
    return updates.encode_raw(
        local, format="f32", num_samples=len(y), metrics=evaluate(local, x, y)
    )


def send_update(env: Mapping[str, str], body: bytes) -> int:
    """POST the update to ``COORDINATOR_URL``; over MQTT when that cannot be reached."""
    try:
        post_url, token = env["COORDINATOR_URL"], env["FL_TOKEN"]
    except KeyError as exc:
        raise Stop(f"the task's FL environment is incomplete: {exc}", 2) from None
    with _http(env) as http:
        try:
            sent = http.post(post_url, content=body, headers={"Content-Type": RAW})
        except httpx.TransportError as exc:
            print(
                f"edgeplane.fl.client: {post_url} unreachable ({exc}); over MQTT", file=sys.stderr
            )
            return _exit_code(post_over_mqtt(env, token, body))
    if sent.status_code in UNREACHABLE:
        print(f"edgeplane.fl.client: {sent.status_code}; over MQTT", file=sys.stderr)
        return _exit_code(post_over_mqtt(env, token, body))
    if sent.status_code >= 400:
        return _fail(f"update refused: {sent.text}", 1)
    return 0


def _exit_code(code: int) -> int:
    """A per-round client's exit code: a refused update is a failed task, as over HTTP."""
    return 1 if code == REFUSED else code


def post_over_mqtt(
    env: Mapping[str, str], token: str, body: bytes, attempt: int | None = None
) -> int:
    """Publish the update on ``FL_MQTT_TOPIC`` (QoS 1), again until the coordinator
    answers: 0 once it took it (or, with no answer, once the broker has it), ``REFUSED``
    when it refused it, 1 or 2 when it could not be sent."""
    from edgeplane.errors import Invalid
    from edgeplane.transport import parse_broker_urls

    url, topic = env.get("FL_MQTT_URL", ""), env.get("FL_MQTT_TOPIC", "")
    if not url or not topic:
        return _fail("no MQTT fallback in the task's environment (FL_MQTT_URL, FL_MQTT_TOPIC)", 1)
    try:
        brokers = parse_broker_urls(url)
    except Invalid as exc:
        return _fail(f"FL_MQTT_URL: {exc.detail}", 2)
    payload = mqtt.frame(token, body, attempt=attempt)

    def again(sends: int) -> bytes:  # says it was sent before: not counted as a duplicate
        return mqtt.frame(token, body, attempt=attempt, resend=sends)

    errors: list[str] = []
    for broker in brokers:  # a clustered broker's nodes, in turn
        taken, why = publish(broker, env, topic, payload, again)
        if taken:
            return 0
        if taken is False:  # refused: another node would refuse it too
            if why.startswith(ANSWERED):
                return _fail(why, REFUSED)
            return _fail(f"the broker refused the update: {why}", 1)
        errors.append(f"{broker}: {why}")
    return _fail(f"the update could not be published over MQTT: {'; '.join(errors)}", 1)


def publish(
    broker: BrokerAddress,
    env: Mapping[str, str],
    topic: str,
    payload: bytes,
    again: Callable[[int], bytes] | None = None,
) -> tuple[bool | None, str]:
    """(True, "") once the broker acknowledged it; (False, why) when it refused it (MQTT 5:
    a broker whose ACL denies the publish says so in its PUBACK); (None, why) when it could
    not be asked."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    connected, subscribed = threading.Event(), threading.Event()
    answers: dict[str, Any] = {}
    told: queue.Queue[bytes] = queue.Queue()
    ack = _ack_topic(topic)

    def on_connect(client: Any, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        answers["connect"] = code
        if ack is not None and not code.is_failure:
            # at every connect: a broker that restarted meanwhile forgot the subscription
            # (paho reconnects by itself), and the answer would never come
            client.subscribe(ack, qos=1)
        connected.set()

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        answers["subscribe"] = codes[0] if codes else None
        subscribed.set()

    def on_publish(_c: Any, _u: Any, _mid: int, code: Any, _p: Any) -> None:
        answers["publish"] = code

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        told.put(message.payload)

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    if env.get("FL_MQTT_USERNAME"):
        client.username_pw_set(env["FL_MQTT_USERNAME"], env.get("FL_MQTT_PASSWORD"))
    if broker.tls:
        client.tls_set(ca_certs=env.get("FL_CA_FILE") or None)
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as exc:
        return None, str(exc)
    client.loop_start()
    try:
        if not connected.wait(CONNECT_TIMEOUT_S):
            return None, f"no answer to CONNECT within {CONNECT_TIMEOUT_S:g} s"
        if answers["connect"].is_failure:
            return False, str(answers["connect"])
        code = None
        if ack is not None and subscribed.wait(CONNECT_TIMEOUT_S):
            code = answers.get("subscribe")
        # a broker whose ACL does not let it read the answer (a --broker one, say): sent
        # once, as the broker has it
        answerable = code is not None and not code.is_failure
        return _until_answered(client, answers, told, topic, payload, answerable, again)
    except (RuntimeError, ValueError) as exc:  # the connection dropped, or too large
        return None, str(exc)
    finally:
        client.disconnect()
        client.loop_stop()


def _ack_topic(topic: str) -> str | None:
    from edgeplane.errors import Invalid

    try:
        return fl_ack_of(topic)
    except Invalid:  # not an update topic: nobody answers on it
        return None


def _reconnected(client: Any, deadline: float) -> bool:
    """Whether paho's own reconnection is back before ``deadline``."""
    while not client.is_connected():
        if time.monotonic() >= deadline:
            return False
        time.sleep(RECONNECT_POLL_S)
    return True


#: How a refusal the coordinator answered begins (``publish``'s reason).
ANSWERED = "the coordinator refused the update"


def _until_answered(
    client: Any,
    answers: dict[str, Any],
    told: queue.Queue[bytes],
    topic: str,
    payload: bytes,
    answerable: bool,
    again: Callable[[int], bytes] | None = None,
) -> tuple[bool | None, str]:
    """Publish, wait for the answer, publish again while none comes (``RESEND_*``): the
    ``sends``-th time ``again(sends)`` when given, else the same payload."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    pause, sends = RESEND_FIRST_S, 0
    while True:
        answers.pop("publish", None)
        sending = payload if sends == 0 or again is None else again(sends)
        try:
            client.publish(topic, sending, qos=1).wait_for_publish(MQTT_TIMEOUT_S)
        except RuntimeError:  # not connected: the broker restarting, say
            if sends == 0:
                raise  # nothing sent yet: the caller tells why (or tries the next node)
            if not _reconnected(client, deadline):  # paho reconnects by itself
                return True, ""  # the broker had it once
            continue
        code = answers.get("publish")
        if code is None:
            return None, f"no PUBACK within {MQTT_TIMEOUT_S:g} s"
        if code.is_failure:
            return False, str(code)
        sends += 1
        remaining = deadline - time.monotonic()
        if not answerable or remaining <= 0:
            if answerable:
                print(
                    f"edgeplane.fl.client: sent {sends} times, no answer in "
                    f"{ANSWER_TIMEOUT_S:g} s; the broker has it",
                    file=sys.stderr,
                )
            return True, ""
        try:
            answer = orjson.loads(told.get(timeout=min(pause, remaining)))
        except queue.Empty:
            print(
                f"edgeplane.fl.client: no answer in {pause:g} s; sending it again",
                file=sys.stderr,
            )
            pause = min(pause * 2, RESEND_MAX_S)
            continue
        except orjson.JSONDecodeError:
            return True, ""  # not the coordinator's: the broker has the update
        outcome = answer.get("outcome") if isinstance(answer, dict) else None
        if outcome in TAKEN:
            return True, ""
        return False, f"{ANSWERED}: {outcome}: {answer.get('detail', '')}"


def _fail(message: str, code: int) -> int:
    print(f"edgeplane.fl.client: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
