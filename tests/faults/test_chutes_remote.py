"""A worker's chutes managed through the manager (docs/chutes.md, "Through the control
plane"): a real manager, a real ``edgeplane worker --api`` process and real busybox
containers; the calls travel over MQTT to the worker and back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.runtimes.busybox import busybox_image
from edgeplane.transport import free_port
from faults.procs import TOKEN, Api, Lab, wait_until
from faults.test_chute_worker import Node, chute, running_node
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


class Stack:
    def __init__(self, lab: Lab, node: Node) -> None:
        port = free_port()
        self.manager = lab.manager(port).start()
        self.api: Api = lab.api(port)
        self.api.wait_healthy(self.manager)
        self.node = node
        node.start()
        self.api.wait_workers(["n1"], watch=[self.manager, node.role])
        self.http: httpx.Client = self.api.http

    def ended(self, change_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found: dict[str, Any] = self.http.get(f"/workers/n1/changes/{change_id}").json()
            return found if found.get("state") in ("done", "failed", "rolled_back") else None

        return wait_until(done, f"change {change_id}", timeout=60, watch=[self.node.role])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.edgeplane("chute", *args, "--worker", "n1")

    def edgeplane(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeplane", "--url", self.api.url, "--token", TOKEN, *args],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip


@pytest.fixture
def stack(lab: Lab) -> Iterator[Stack]:
    with running_node(lab) as node:
        yield Stack(lab, node)


def test_a_chute_through_the_manager_api_and_the_cli(stack: Stack, tmp_path: Path) -> None:
    http = stack.http
    hello = chute("hello", command=["sh", "-c", "echo hello-remote; exec sleep 1000"])
    answer = http.post("/workers/n1/chutes", json=hello)
    assert answer.status_code == 202, answer.text
    change = stack.ended(answer.json()["change_id"])
    assert change["state"] == "done", change
    assert {"id", "state", "steps", "log"} <= change.keys()
    shown = http.get("/workers/n1/chutes/hello").json()
    assert shown["state"] == "running" and shown["version"] == "1"
    assert [c["name"] for c in http.get("/workers/n1/chutes").json()] == ["hello"]
    logs = http.get("/workers/n1/chutes/hello/logs")
    assert logs.status_code == 200 and "hello-remote" in logs.text

    stopped = http.post("/workers/n1/chutes/hello/stop")
    assert stopped.status_code == 202, stopped.text
    assert stack.ended(stopped.json()["change_id"])["state"] == "done"
    assert http.get("/workers/n1/chutes/hello").json()["state"] == "stopped"
    # the CLI follows the change's SSE stream through the manager
    started = stack.cli("start", "hello", "--wait")
    assert started.returncode == 0, started.stderr
    assert "done" in started.stderr
    assert http.get("/workers/n1/chutes/hello").json()["state"] == "running"
    assert "hello-remote" in stack.cli("logs", "hello").stdout
    listed = stack.cli("list")
    assert "hello" in listed.stdout and "running" in listed.stdout, listed.stderr
    deleted = stack.cli("delete", "hello", "--wait")
    assert deleted.returncode == 0, deleted.stderr
    missing = http.get("/workers/n1/chutes/hello")
    assert missing.status_code == 404 and "hello" in missing.json()["detail"]

    spec = tmp_path / "chute.yaml"
    spec.write_text(
        "name: clip\nversion: '2'\n"
        "services: [{name: main, image: busybox, command: [sleep, '1000']}]\n"
    )
    installed = stack.cli("install", str(spec), "--wait")
    assert installed.returncode == 0, installed.stderr
    assert "✓ wait until healthy" in installed.stderr
    assert http.get("/workers/n1/chutes/clip").json()["state"] == "running"

    # bad input is refused by the manager, naming the field, before the worker sees it
    bad = http.post("/workers/n1/chutes", json={**hello, "bogus": 1})
    assert bad.status_code == 422 and bad.json()["field"] == "bogus"
    # the mutating calls are audited
    records = http.get("/audit", params={"limit": 200}).json()["items"]
    paths = {r.get("path") for r in records}
    assert "/api/v1/workers/n1/chutes" in paths, records[:3]
    assert stack.cli("delete", "clip", "--wait").returncode == 0


def test_a_worker_offline_answers_its_last_state_or_503_naming_it(stack: Stack) -> None:
    answer = stack.http.post("/workers/n1/chutes", json=chute("kept"))
    assert stack.ended(answer.json()["change_id"])["state"] == "done"

    def told() -> bool:
        found = stack.api.worker("n1") or {}
        return [c["name"] for c in (found.get("chutes") or {}).get("items", [])] == ["kept"]

    wait_until(told, "the manager to hear of the chute", watch=[stack.manager])
    stack.node.role.stop()

    def offline() -> bool:
        found = stack.api.worker("n1")
        return found is not None and found["state"] == "offline"

    wait_until(offline, "n1 offline", timeout=60, watch=[stack.manager])
    # reads: the last known state, marked stale
    [shown] = stack.http.get("/workers/n1/chutes").json()
    assert shown["name"] == "kept" and shown["stale"] is True and shown["last_contact"] > 0
    listed = stack.cli("list")
    assert listed.returncode == 0 and "kept" in listed.stdout, listed.stderr
    assert "n1 cannot be reached" in listed.stderr and "last contact" in listed.stderr
    # anything else: 503 at once, naming the worker
    refused = stack.http.post("/workers/n1/chutes", json=chute("x"))
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "n1" in refused.json()["detail"] and "offline" in refused.json()["detail"]
    assert stack.http.get("/workers/n1/chutes/kept/config").status_code == 503
    assert stack.http.get("/workers/nope/chutes").status_code == 404
    cli = stack.cli("stop", "kept")
    assert cli.returncode == 3 and "n1" in cli.stderr


def test_only_an_admin_or_the_workers_owner_manages_its_chutes(stack: Stack) -> None:
    http = stack.http
    for name in ("otto", "opal"):
        body = {"name": name, "password": "correct horse battery", "role": "operator"}
        assert http.post("/users", json=body).status_code == 201
    assert http.put("/workers/n1/owner", json={"owner": "opal"}).status_code == 200

    def bearer(name: str) -> dict[str, str]:
        login = {"name": name, "password": "correct horse battery"}
        pair = http.post("/auth/login", json=login).json()
        return {"Authorization": f"Bearer {pair['access_token']}"}

    otto, opal = bearer("otto"), bearer("opal")
    refused = http.post("/workers/n1/chutes", json=chute("nope"), headers=otto)
    assert refused.status_code == 403, refused.text
    assert http.post("/workers/n1/chutes/x/stop", headers=otto).status_code == 403
    # reads are every role's (docs/security.md)
    assert http.get("/workers/n1/chutes", headers=otto).status_code == 200
    assert http.get("/workers/n1/chutes", headers=opal).json() == []
    answer = http.post("/workers/n1/chutes", json=chute("mine"), headers=opal)
    assert answer.status_code == 202, answer.text
    assert stack.ended(answer.json()["change_id"])["state"] == "done"
    gone = http.delete("/workers/n1/chutes/mine", headers=opal)
    assert stack.ended(gone.json()["change_id"])["state"] == "done"


#: a line a tenth of a second, numbered
TICKER = "i=0; while true; do echo tick-$i; i=$((i+1)); usleep 100000; done"


def sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    name, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


def ticks(text: str) -> list[int]:
    return [int(line[5:]) for line in text.split("\n") if line.startswith("tick-")]


def test_a_chutes_output_streams_live_until_it_is_deleted(stack: Stack) -> None:
    http = stack.http
    answer = http.post("/workers/n1/chutes", json=chute("ticker", command=["sh", "-c", TICKER]))
    assert stack.ended(answer.json()["change_id"])["state"] == "done"
    text, numbers = "", list[int]()
    ended: dict[str, Any] = {}
    with httpx.Client(
        base_url=stack.api.http.base_url, headers=stack.api.http.headers, timeout=None
    ) as client, client.stream(
        "GET", "/workers/n1/chutes/ticker/logs", params={"follow": "true"}
    ) as stream:  # fmt: skip
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        deleted = False
        for name, data in sse(stream.iter_lines()):
            if name == "log":
                text += data
                numbers = ticks(text)
                # lines keep coming, live, in order: then the chute goes
                if len(set(numbers)) >= 30 and not deleted:
                    gone = http.delete("/workers/n1/chutes/ticker")
                    assert gone.status_code == 202, gone.text
                    deleted = True
            elif name == "end":
                ended = json.loads(data)
                break
    assert "deleted" in ended["reason"], ended
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] + 1 == len(set(numbers))
    assert http.get("/workers/n1/chutes/ticker").status_code == 404
    # nothing follows a chute that is not there, and a bad name is bad input
    missing = http.get("/workers/n1/chutes/ticker/logs", params={"follow": "true"})
    assert missing.status_code == 404
    assert http.get("/workers/n1/chutes/Bad/logs", params={"follow": "true"}).status_code == 422


def test_log_follows_are_bounded_and_end_when_the_client_goes(stack: Stack) -> None:
    http = stack.http
    answer = http.post("/workers/n1/chutes", json=chute("ticker", command=["sh", "-c", TICKER]))
    assert stack.ended(answer.json()["change_id"])["state"] == "done"
    url = "/workers/n1/chutes/ticker/logs"

    def open_all(client: httpx.Client) -> list[httpx.Response] | None:
        """Eight follows of one worker (its bound), or None while they are not all had."""
        streams = []
        for _ in range(8):
            request = client.build_request("GET", url, params={"follow": "true"})
            streams.append(client.send(request, stream=True))
        if all(s.status_code == 200 for s in streams):
            return streams
        for stream in streams:
            stream.close()
        return None

    # twice: the first round's follows are given back when their clients go
    for _ in range(2):
        with httpx.Client(
            base_url=stack.api.http.base_url, headers=stack.api.http.headers, timeout=None
        ) as client:
            streams = wait_until(
                lambda: open_all(client), "eight follows at once", watch=[stack.manager]
            )
            refused = http.get(url, params={"follow": "true"})
            assert refused.status_code == 503 and "too many" in refused.json()["detail"]
            for stream in streams:
                assert any(ticks(data) for name, data in sse(stream.iter_lines()) if name == "log")
                stream.close()  # the client goes
    assert http.delete("/workers/n1/chutes/ticker").status_code == 202


def test_the_cli_follows_a_chute_through_the_manager(stack: Stack) -> None:
    http = stack.http
    answer = http.post("/workers/n1/chutes", json=chute("ticker", command=["sh", "-c", TICKER]))
    assert stack.ended(answer.json()["change_id"])["state"] == "done"
    with subprocess.Popen(
        [sys.executable, "-m", "edgeplane", "--url", stack.api.url, "--token", TOKEN,
         "chute", "logs", "ticker", "--worker", "n1", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as cli:  # fmt: skip
        assert cli.stdout is not None
        seen = []
        for line in cli.stdout:
            if line.startswith("tick-"):
                seen.append(int(line[5:]))
            if len(seen) >= 20:
                break
        assert seen == list(range(seen[0], seen[0] + len(seen))), seen
        gone = http.delete("/workers/n1/chutes/ticker")
        assert gone.status_code == 202
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert "deleted" in err


def test_a_chute_from_a_registry_image_through_the_manager(
    stack: Stack, oci_registry: RegistryProcess, tmp_path: Path
) -> None:
    """A chute whose service names ``oci://…``: the worker pulls the image (it has none in
    its image dir by that name), verified, and runs it; a bad reference is refused by the
    manager naming the field; an unknown tag rolls the install back naming the image."""
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    image = f"oci://{oci_registry.address}/busybox:1"
    http = stack.http
    boxed = chute("boxed", image=image, command=["sh", "-c", "echo from-registry; exec sleep 1000"])
    answer = http.post("/workers/n1/chutes", json=boxed)
    assert answer.status_code == 202, answer.text
    change = stack.ended(answer.json()["change_id"])
    assert change["state"] == "done", change
    shown = http.get("/workers/n1/chutes/boxed").json()
    assert shown["state"] == "running", shown

    def printed() -> bool:
        return "from-registry" in http.get("/workers/n1/chutes/boxed/logs").text

    wait_until(printed, "the chute's output", timeout=30, watch=[stack.node.role])
    pulled = stack.node.data.parent / "images" / ".oci"  # the node's --images-dir
    held = [p.name for p in pulled.iterdir()]
    assert len(held) == 1 and len(held[0]) == 64, held  # kept by its manifest digest

    bad = http.post("/workers/n1/chutes", json=chute("bad", image="oci://h/Busybox:1"))
    assert bad.status_code == 422, bad.text
    assert bad.json()["field"] == "services.0.image"

    missing = image.replace(":1", ":nope")
    answer = http.post("/workers/n1/chutes", json=chute("missing", image=missing))
    assert answer.status_code == 202, answer.text
    change = stack.ended(answer.json()["change_id"])
    assert change["state"] == "rolled_back", change
    assert "artifact_not_found" in change["error"], change
    assert missing in change["error"], change
    assert http.get("/workers/n1/chutes/missing").status_code == 404

    deleted = http.delete("/workers/n1/chutes/boxed")
    assert stack.ended(deleted.json()["change_id"])["state"] == "done"


GREET = """\
name: greet
version: "{version}"
description: says hello, version {version}
services:
  - name: main
    image: busybox
    command: [sh, -c, "echo greet-{version}; exec sleep 1000"]
"""


def test_a_chute_from_the_store_runs_on_a_real_worker(stack: Stack, tmp_path: Path) -> None:
    http = stack.http
    spec = tmp_path / "chute.yaml"
    for version in ("1.0", "2.0"):
        spec.write_text(GREET.format(version=version))
        published = stack.edgeplane("store", "publish", str(spec))
        assert published.returncode == 0, published.stderr
        assert published.stdout.strip() == f"greet@{version}"
    listed = stack.edgeplane("store", "list")
    assert "greet" in listed.stdout and "2.0" in listed.stdout, listed.stderr
    assert "1.0" in stack.edgeplane("store", "show", "greet").stdout

    # installed by name and version: the manager resolves it and sends the manifest
    installed = stack.cli("install", "greet@1.0", "--wait")
    assert installed.returncode == 0, installed.stderr
    assert "✓ wait until healthy" in installed.stderr
    chute = http.get("/workers/n1/chutes/greet").json()
    assert chute["state"] == "running" and chute["version"] == "1.0", chute
    published_1 = http.get("/store/chutes/greet/versions/1.0").json()
    assert chute["source"] == {"store": "greet@1.0", "digest": published_1["digest"]}
    change = http.get(f"/workers/n1/changes/{chute['change_id']}").json()
    assert change["kind"] == "install" and change["source"] == chute["source"]
    assert "greet-1.0" in http.get("/workers/n1/chutes/greet/logs").text
    assert "greet@1.0" in stack.cli("get", "greet").stdout

    # updated to the latest by name alone: the new version replaces the old once healthy
    updated = stack.cli("update", "greet", "--wait")
    assert updated.returncode == 0, updated.stderr
    chute = http.get("/workers/n1/chutes/greet").json()
    assert chute["version"] == "2.0" and chute["state"] == "running", chute
    assert chute["source"]["store"] == "greet@2.0"
    # the node records only a store label that is its manifest's own
    wrong = stack.node.client.put(
        "/chutes/greet", params={"store": "greet@9"}, json=published_1["manifest"]
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "store", wrong.text

    # a version that is not in the store: nothing reaches the worker
    missing = stack.cli("install", "greet@7")
    assert missing.returncode == 2 and "greet@7" in missing.stderr

    # kill -9 of the manager: the store is in its database, installs from it go on
    stack.manager.kill9()
    stack.manager.start()
    stack.api.wait_healthy(stack.manager)
    stack.api.wait_workers(["n1"], watch=[stack.manager, stack.node.role])
    shown = http.get("/store/chutes/greet").json()
    assert [v["version"] for v in shown["versions"]] == ["2.0", "1.0"], shown
    assert http.get("/store/chutes/greet/versions/1.0").json() == published_1
    assert stack.cli("delete", "greet", "--wait").returncode == 0
    again = stack.cli("install", "greet@1.0", "--wait")
    assert again.returncode == 0, again.stderr
    chute = http.get("/workers/n1/chutes/greet").json()
    assert chute["version"] == "1.0" and chute["state"] == "running", chute
    assert stack.cli("delete", "greet", "--wait").returncode == 0


#: fills 50 MiB of the service's tmpfs /tmp (memory charged to its cgroup), then holds it
HOG = "dd if=/dev/zero of=/tmp/fill bs=1M count=50 2>/dev/null; exec sleep 1000"


def test_a_chutes_usage_series_shows_the_memory_it_holds(stack: Stack) -> None:
    http = stack.http
    hog = {
        **chute("hog", command=["sh", "-c", HOG]),
        "monitoring": {"interval_s": 0.5, "history": 40},
    }
    # the profile is checked before the worker sees the manifest
    bad = http.post("/workers/n1/chutes", json={**hog, "monitoring": {"interval_s": 0.01}})
    assert bad.status_code == 422 and bad.json()["field"] == "monitoring.custom.interval_s"
    answer = http.post("/workers/n1/chutes", json=hog)
    assert answer.status_code == 202, answer.text
    assert stack.ended(answer.json()["change_id"])["state"] == "done"

    def filled() -> dict[str, Any] | None:
        found: dict[str, Any] = http.get("/workers/n1/chutes/hog/metrics").json()
        samples = found.get("samples") or []
        return found if samples and samples[-1]["values"]["memory_mb"] >= 50 else None

    found = wait_until(filled, "a sample holding the 50 MiB", timeout=60, watch=[stack.node.role])
    assert (found["id"], found["kind"]) == ("n1/hog/main", "chute")
    last = found["samples"][-1]["values"]
    assert 50 <= last["memory_mb"] < 58, last
    assert last["processes"] >= 1 and last["cpu_percent"] >= 0

    # bounded by the profile's history, time-bounded and downsampled on request
    def kept_full() -> list[dict[str, Any]] | None:
        found = http.get("/workers/n1/chutes/hog/metrics").json()
        samples: list[dict[str, Any]] = found["samples"]
        return samples if len(samples) >= 40 else None

    samples = wait_until(kept_full, "40 samples", timeout=60, watch=[stack.node.role])
    assert len(samples) == 40
    middle = samples[20]["ts"]
    later = http.get("/workers/n1/chutes/hog/metrics", params={"since": middle}).json()
    assert later["samples"] and all(s["ts"] >= middle for s in later["samples"])
    squeezed = http.get("/workers/n1/chutes/hog/metrics", params={"points": 4}).json()
    assert len(squeezed["samples"]) <= 4 and squeezed["downsampled"] is True
    reversed_ = http.get("/workers/n1/chutes/hog/metrics", params={"since": 10, "until": 1})
    assert reversed_.status_code == 422 and reversed_.json()["field"] == "since"
    nope = http.get("/workers/n1/chutes/hog/metrics", params={"service": "nope"})
    assert nope.status_code == 404 and nope.json()["field"] == "service"
    assert http.get("/workers/n1/chutes/other/metrics").status_code == 404

    # the CLI through the manager
    shown = stack.cli("metrics", "hog")
    assert shown.returncode == 0, shown.stderr
    assert "memory_mb" in shown.stdout.lower() and "n1/hog/main" in shown.stderr
    as_json = json.loads(stack.cli("metrics", "hog", "--points", "1", "--output", "json").stdout)
    assert len(as_json["samples"]) == 1
    # deleted: its series go with it
    assert stack.cli("delete", "hog", "--wait").returncode == 0

    def forgotten() -> bool:
        return http.get("/workers/n1/chutes/hog/metrics").status_code == 404

    wait_until(forgotten, "the series forgotten", watch=[stack.manager])
