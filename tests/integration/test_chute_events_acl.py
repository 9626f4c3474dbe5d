"""Chute events forged with another worker's credentials change nothing: on the victim's
``events`` leaf the broker refuses them (its ACL), and on the forger's own leaf, naming the
victim, the manager refuses and counts them (``edgeplane_foreign_chute_events``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from test_broker_security import WAIT_S, Probe, answer, secured, started, until

from edgeplane.chutes.events import EventLog
from edgeplane.protocol import ChuteEvent, ChuteEvents, Topics, encode
from edgeplane.roles.up import Stack
from edgeplane.roles.worker import build_worker
from edgeplane.security import joining
from edgeplane.security.broker_auth import BrokerAuth

__all__ = ["secured"]  # the fixture, from test_broker_security

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("mosquitto") is None, reason="mosquitto is not installed"
)


async def test_forged_chute_events_are_refused_and_counted(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path
) -> None:
    stack, http, auth = secured
    manager = stack.control.manager
    settings = stack.control.settings
    created = await http.post("/join-tokens", json={"worker_id": "holder"})
    assert created.status_code == 201, created.text
    topics = Topics(settings.domain, settings.cluster_id)
    identity = await joining.join(stack.broker_url, topics, created.json()["token"], "ignored")
    holder = build_worker(
        settings,
        broker_url=stack.broker_url,
        worker_id="holder",
        data_dir=tmp_path / "holder",
        identity=identity,
    )
    # the holder's own node reports a chute (a worker with --api does this itself)
    events = EventLog(tmp_path / "holder" / "chute-events")
    events.open()
    await events.emit("snapshot", chutes=[{"name": "good", "state": "running"}])
    holder.chute_events = events
    await holder.start()
    forger = await started(Probe(stack.broker_url, "forger", [], auth.add_member("forger")))
    watcher = await started(Probe(stack.broker_url, "watcher", ["#"], auth.manager))
    try:
        await asyncio.wait_for(holder.registered.wait(), WAIT_S)

        def kept_names() -> list[str] | None:
            entry = manager.registry.get("holder")
            kept = None if entry is None else entry.worker.chutes
            return None if kept is None else [c["name"] for c in kept.items]

        await until(lambda: answer(kept_names() == ["good"] and len(events) == 0))

        evil = ChuteEvent(
            seq=2, ts=1.0, kind="snapshot", chutes=[{"name": "evil", "state": "running"}]
        )
        forged = encode(
            "chute.events",
            ChuteEvents(worker_id="holder", stream=events.stream, after=1, events=[evil]),
        )
        # on the holder's leaf: the broker drops it (the forger's next message shows it)
        before = len(watcher.got)
        await forger.link.publish(topics.events("holder"), forged)
        await forger.link.publish(topics.metrics("forger"), b"{}")
        seen = (await watcher.until(topics.metrics("forger")))[before:]
        assert topics.events("holder") not in seen, seen
        # on its own leaf, naming the holder: the manager refuses it and counts it
        await forger.link.publish(topics.events("forger"), forged)
        await until(lambda: answer(manager.stats.foreign_chute_events == 1))
        assert kept_names() == ["good"]
        shown = (await http.get("/workers/holder")).json()["chutes"]
        assert [c["name"] for c in shown["items"]] == ["good"] and shown["seq"] == 1
        metrics = (await http.get(stack.control.url + "/metrics")).text
        assert "edgeplane_foreign_chute_events_total 1.0" in metrics
    finally:
        await forger.link.stop()
        await watcher.link.stop()
        await holder.stop()
