"""A manager whose event loop cannot run for longer than the liveness window (a busy
manager: SIGSTOP stands for a loop blocked by inline work) does not declare its healthy
workers lost: their heartbeats wait unread in its socket meanwhile, and it measures its
own lag. No task fails ``worker_lost`` or runs a second time."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest

from faults.procs import HEARTBEAT_S, Lab, check_exactly_once, check_lines, host_tasks, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(180)]

#: How long the manager is stopped: twice the liveness window (3 beats). The fault's
#: length, not a wait for anything.
STALL_S = 6 * HEARTBEAT_S


def test_a_stalled_manager_loses_no_worker(lab: Lab) -> None:
    manager, workers, api = lab.manager_and_workers()
    out = lab.root / "out.txt"
    # a slot each on both workers, running all through the stall; then tasks queued
    long, short = [f"long{n}" for n in range(8)], [f"short{n:02d}" for n in range(24)]
    accepted = api.submit(host_tasks(long, out, sleep_s=STALL_S + 1))
    wait_until(lambda: api.count("running") == 8, "eight tasks to run", watch=[manager])
    accepted += api.submit(host_tasks(short, out))
    names = long + short

    manager.pause()
    try:
        time.sleep(STALL_S)
    finally:
        manager.resume()

    api.wait_ended(len(names), watch=[manager, *workers])
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api.tasks(), accepted, expected)
    check_lines(out, names)
    assert api.metric("edgeplane_workers_lost_total") == 0


#: Bad messages flooded at the manager: each is parsed, counted and logged, so at least a
#: few seconds of its inbox (the liveness window here is 3 beats, 1.5 s).
FLOOD = 60_000


def test_a_manager_behind_on_what_the_broker_delivers_loses_no_worker(lab: Lab) -> None:
    """Its loop turns (no stall to measure) but heartbeats queue behind a flood of
    messages, in its inbox, its socket and the broker's queue for it (which may drop some):
    it must not take that for its workers' silence (its probes, manager/liveness.py)."""
    manager, workers, api = lab.manager_and_workers()
    flooder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{lab.domain}-flood")
    url = urlsplit(lab.broker_url)
    flooder.connect(url.hostname or "127.0.0.1", url.port or 1883)
    flooder.loop_start()
    try:
        topic = f"{lab.domain}/local/workers/flood/alive"
        for _ in range(FLOOD):
            flooder.publish(topic, b"not an envelope", qos=0)
        flooder.publish(topic, b"the last one", qos=1).wait_for_publish(timeout=60)
    finally:
        flooder.loop_stop()
        flooder.disconnect()
    wait_until(
        lambda: api.metric("edgeplane_bad_messages_total") >= FLOOD * 0.9,
        "the manager to get through the flood",
        watch=[manager, *workers],
        timeout=120,
    )
    assert api.metric("edgeplane_workers_lost_total") == 0
    assert api.online_workers() >= {"w1", "w2"}
