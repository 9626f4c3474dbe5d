"""The digits example's client: ``python -m edgeplane.fl.client``, run as a host task.

It reads the env the coordinator gives each training task (docs/fl.md): fetches the
round's global model (``MODEL_URI``) and its shard (``DATA_STORE_URL``), trains the
softmax model with ``HYPERPARAMS``, and posts its update (``f32`` full weights, with
``num_samples`` and its local metrics) to ``COORDINATOR_URL``, with the task's own
credential (``FL_TOKEN``), which lets it do only that. When the coordinator cannot be
reached for the post, it publishes the update over MQTT instead (``FL_MQTT_URL``,
``FL_MQTT_TOPIC`` and, on a broker edgeplane secures, ``FL_MQTT_USERNAME`` and
``FL_MQTT_PASSWORD``: an identity that may publish on that one topic).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
import orjson

from edgeplane.fl import mqtt, updates
from edgeplane.fl.model import evaluate, fits, train
from edgeplane.transport import BrokerAddress

#: Seconds to wait for the broker to take the update (its PUBACK).
MQTT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
#: Answers that mean the API is there but cannot take the update now: try MQTT.
UNREACHABLE = frozenset({502, 503, 504})


class Stop(Exception):
    """Ends the client: ``message`` on stderr, ``code`` its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main() -> int:
    env = os.environ
    try:
        return send_update(env, train_update(env))
    except Stop as stop:
        return _fail(str(stop), stop.code)


def _http(env: Mapping[str, str]) -> httpx.Client:
    try:
        headers = {"Authorization": f"Bearer {env['FL_TOKEN']}"}
    except KeyError as exc:
        raise Stop(f"the task's FL environment is incomplete: {exc}", 2) from None
    return httpx.Client(headers=headers, timeout=60, verify=env.get("FL_CA_FILE") or True)


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
    local = train(
        glob,
        x,
        y,
        lr=float(hp.get("lr", 0.1)),
        epochs=int(hp.get("epochs", 1)),
        batch=int(hp.get("batch", 32)),
        mu=float(hp.get("mu", 0.0)),
        seed=int(env.get("ROUND_ID", "0") or 0),
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
            sent = http.post(post_url, content=body, headers={"Content-Type": updates.RAW})
        except httpx.TransportError as exc:
            print(
                f"edgeplane.fl.client: {post_url} unreachable ({exc}); over MQTT", file=sys.stderr
            )
            return post_over_mqtt(env, token, body)
    if sent.status_code in UNREACHABLE:
        print(f"edgeplane.fl.client: {sent.status_code}; over MQTT", file=sys.stderr)
        return post_over_mqtt(env, token, body)
    if sent.status_code >= 400:
        return _fail(f"update refused: {sent.text}", 1)
    return 0


def post_over_mqtt(env: Mapping[str, str], token: str, body: bytes) -> int:
    """Publish the update on ``FL_MQTT_TOPIC`` (QoS 1); 0 once the broker has it."""
    from edgeplane.errors import Invalid
    from edgeplane.transport import parse_broker_urls

    url, topic = env.get("FL_MQTT_URL", ""), env.get("FL_MQTT_TOPIC", "")
    if not url or not topic:
        return _fail("no MQTT fallback in the task's environment (FL_MQTT_URL, FL_MQTT_TOPIC)", 1)
    try:
        brokers = parse_broker_urls(url)
    except Invalid as exc:
        return _fail(f"FL_MQTT_URL: {exc.detail}", 2)
    payload = mqtt.frame(token, body)
    errors: list[str] = []
    for broker in brokers:  # a clustered broker's nodes, in turn
        taken, why = publish(broker, env, topic, payload)
        if taken:
            return 0
        if taken is False:  # refused: another node would refuse it too
            return _fail(f"the broker refused the update: {why}", 1)
        errors.append(f"{broker}: {why}")
    return _fail(f"the update could not be published over MQTT: {'; '.join(errors)}", 1)


def publish(
    broker: BrokerAddress, env: Mapping[str, str], topic: str, payload: bytes
) -> tuple[bool | None, str]:
    """(True, "") once the broker acknowledged it; (False, why) when it refused it (MQTT 5:
    a broker whose ACL denies the publish says so in its PUBACK); (None, why) when it could
    not be asked."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    connected = threading.Event()
    answers: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        answers["connect"] = code
        connected.set()

    def on_publish(_c: Any, _u: Any, _mid: int, code: Any, _p: Any) -> None:
        answers["publish"] = code

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = on_connect
    client.on_publish = on_publish
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
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(MQTT_TIMEOUT_S)
    except (RuntimeError, ValueError) as exc:  # the connection dropped, or too large
        return None, str(exc)
    finally:
        client.disconnect()
        client.loop_stop()
    code = answers.get("publish")
    if code is None:
        return None, f"no PUBACK within {MQTT_TIMEOUT_S:g} s"
    if code.is_failure:
        return False, str(code)
    return True, ""


def _fail(message: str, code: int) -> int:
    print(f"edgeplane.fl.client: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
