"""Networked container services, the pure parts (docs/services.md): the health rule a
worker judges an attempt by, the task fields' rules, services written as chute manifests,
and the bounds of what a worker reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeplane.errors import Invalid
from edgeplane.manager.admission import check_network
from edgeplane.model import ApplicationSpec, TaskSpec
from edgeplane.model.service import Endpoint, HealthCheck
from edgeplane.protocol import TaskEvent
from edgeplane.worker.health import Health, observe, watch

# --- the health rule ---------------------------------------------------------------------

CHECKS = st.builds(
    lambda retries, start: HealthCheck(tcp={"port": 80}, retries=retries, start_period_s=start),
    st.integers(1, 5),
    st.sampled_from([0.0, 1.0, 5.0]),
)
#: probe results with the seconds since the start each came at (non-decreasing)
PROBES = st.lists(st.tuples(st.booleans(), st.floats(0, 2)), max_size=40).map(
    lambda steps: [(ok, sum(gap for _, gap in steps[: n + 1])) for n, (ok, _) in enumerate(steps)]
)


def run_rule(check: HealthCheck, probes: list[tuple[bool, float]]) -> list[str]:
    health, verdicts = Health(), []
    for ok, at in probes:
        health, verdict = observe(health, ok, at, check)
        verdicts.append(verdict)
        if verdict == "unhealthy":
            break
    return verdicts


@settings(max_examples=300)
@given(CHECKS, PROBES)
def test_healthy_once_at_the_first_pass_and_never_after(
    check: HealthCheck, probes: list[tuple[bool, float]]
) -> None:
    verdicts = run_rule(check, probes)
    seen = [ok for ok, _ in probes[: len(verdicts)]]
    if any(seen):
        first = seen.index(True)
        assert verdicts[first] == "healthy"
        assert "healthy" not in verdicts[first + 1 :]
        assert all(v == "starting" for v in verdicts[:first])  # not running before
    else:
        assert "healthy" not in verdicts


@settings(max_examples=300)
@given(CHECKS, PROBES)
def test_unhealthy_exactly_after_retries_counted_failures_in_a_row(
    check: HealthCheck, probes: list[tuple[bool, float]]
) -> None:
    verdicts = run_rule(check, probes)
    passed, counted = False, 0
    for (ok, at), verdict in zip(probes, verdicts, strict=False):
        if ok:
            passed, counted = True, 0
            assert verdict in ("healthy", "passing")
            continue
        if passed or at >= check.start_period_s:
            counted += 1  # a failure in the start period before any pass does not count
        if counted >= check.retries:
            assert verdict == "unhealthy"
        else:
            assert verdict in ("starting", "failing")
    if verdicts and verdicts[-1] == "unhealthy":
        assert counted >= check.retries


def test_a_service_slow_to_listen_is_not_unhealthy_within_its_start_period() -> None:
    check = HealthCheck(http={"port": 8000}, retries=1, start_period_s=10)
    health, verdict = observe(Health(), False, 9.9, check)
    assert verdict == "starting" and health == Health()
    _, verdict = observe(health, False, 10.0, check)
    assert verdict == "unhealthy"
    # once it has passed, the start period no longer shields it
    health, verdict = observe(Health(), True, 0.5, check)
    assert verdict == "healthy"
    _, verdict = observe(health, False, 1.0, check)
    assert verdict == "unhealthy"


async def test_the_watch_loop_reports_the_first_pass_and_returns_why_it_is_unhealthy() -> None:
    said = iter([None, None, "connection refused", None, "connection refused", "no answer"])
    healthy: list[bool] = []

    async def probe() -> str | None:
        return next(said)

    check = HealthCheck(tcp={"port": 1}, retries=2, interval_s=0.001, start_period_s=0)
    why = await asyncio.wait_for(
        watch(probe, check, lambda: 100.0, lambda: healthy.append(True)), 5
    )
    assert healthy == [True] and why == "no answer"


# --- the task fields ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"runtime": "host", "command": ["x"], "ports": [{"port": 80}]}, "ports"),
        ({"runtime": "wasm", "network": "bridge"}, "network"),
        ({"runtime": "host", "command": ["x"], "healthcheck": {"tcp": {"port": 1}}}, "healthcheck"),
        (
            {"runtime": "container", "image": "b", "network": "none", "ports": [{"port": 1}]},
            "ports",
        ),
        ({"runtime": "container", "image": "b", "ports": [{"port": 1}, {"port": 1}]}, "ports[1]"),
        (
            {
                "runtime": "container",
                "image": "b",
                "ports": [{"port": 1, "name": "a"}, {"port": 2, "name": "a"}],
            },
            "ports[1]",
        ),
    ],
)
def test_networks_ports_and_checks_that_cannot_be_had_are_refused(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as caught:
        check_network(TaskSpec.model_validate(body))
    assert caught.value.field == field


def test_ports_mean_bridge_and_the_same_port_twice_with_two_protocols_is_fine() -> None:
    spec = TaskSpec.model_validate(
        {
            "runtime": "container",
            "image": "b",
            "ports": [{"port": 53}, {"port": 53, "protocol": "udp"}],
        }
    )
    assert check_network(spec) == "bridge"
    assert check_network(TaskSpec(runtime="container", image="b")) == "none"


@pytest.mark.parametrize(
    ("check", "where"),
    [
        ({}, ()),
        ({"tcp": {"port": 1}, "http": {"port": 1}}, ()),
        ({"tcp": {"port": 0}}, ("tcp", "port")),
        ({"http": {"port": 1, "path": "no-slash"}}, ("http", "path")),
        ({"exec": []}, ("exec",)),
        ({"tcp": {"port": 1}, "interval_s": 0}, ("interval_s",)),
        ({"tcp": {"port": 1}, "retries": 0}, ("retries",)),
        ({"tcp": {"port": 1}, "start_period_s": -1}, ("start_period_s",)),
        ({"tcp": {"port": 1}, "bogus": 1}, ("bogus",)),
    ],
)
def test_bad_health_checks_name_their_field(check: dict[str, Any], where: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        TaskSpec.model_validate({"runtime": "container", "image": "b", "healthcheck": check})
    assert caught.value.errors()[0]["loc"][: len(where) + 1] == ("healthcheck", *where)


def test_ports_are_bounded() -> None:
    many = [{"port": n} for n in range(1, 34)]
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({"runtime": "container", "image": "b", "ports": many})
    for bad in ({"port": 70000}, {"port": 80, "protocol": "sctp"}, {"port": 80, "extra": 1}):
        with pytest.raises(ValidationError):
            TaskSpec.model_validate({"runtime": "container", "image": "b", "ports": [bad]})


# --- what a worker reports ----------------------------------------------------------------


def test_a_running_event_carries_bounded_well_formed_endpoints() -> None:
    one = {"address": "192.0.2.2", "host_port": 20001, "port": 8000}
    event = TaskEvent.model_validate(
        {"task_id": "t", "attempt": 1, "state": "running", "endpoints": [one]}
    )
    assert str(event.endpoints[0]) == "192.0.2.2:20001->8000/tcp"
    assert str(Endpoint(address="fd00::1", host_port=1, port=2, name="web")) == (
        "web=[fd00::1]:1->2/tcp"
    )
    for bad in (
        [one] * 33,
        [{**one, "address": "evil host; rm"}],
        [{**one, "host_port": 0}],
        [{**one, "script": "x"}],
    ):
        with pytest.raises(ValidationError):
            TaskEvent.model_validate(
                {"task_id": "t", "attempt": 1, "state": "running", "endpoints": bad}
            )


# --- services written as chute manifests --------------------------------------------------

MANIFEST: dict[str, Any] = {
    "name": "hello",
    "version": "1",
    "services": [
        {
            "name": "web",
            "image": "busybox",
            "command": ["httpd", "-f", "-p", "8000"],
            "env": {"A": "1"},
            "ports": [
                {"host": 18000, "chute": 8000},
                {"host": 18053, "chute": 53, "protocol": "udp"},
            ],
            "healthcheck": {"http": {"port": 8000}, "interval_s": 0.5},
        }
    ],
    "resources": {"memory_mb": 64, "pids": 32},
    "web": {"service": "web", "port": 8000},
}


def app(**service: Any) -> dict[str, Any]:
    return {"name": "a", "services": [{"name": "web", "replicas": 2, **service}]}


def test_a_chute_manifest_gives_the_service_its_container() -> None:
    spec = ApplicationSpec.model_validate(app(chute=MANIFEST, limits={"timeout_s": 5}))
    service = spec.services[0]
    assert (service.runtime, service.network, service.image) == ("container", "bridge", "busybox")
    assert service.command == ["httpd", "-f", "-p", "8000"] and service.env == {"A": "1"}
    assert [(p.port, p.protocol, p.name) for p in service.ports] == [
        (8000, "tcp", "web"),  # the manifest's web port
        (53, "udp", None),
    ]
    assert service.healthcheck is not None and service.healthcheck.http is not None
    assert service.healthcheck.interval_s == 0.5
    limits = service.limits
    assert (limits.memory_mb, limits.pids, limits.cpu_shares, limits.timeout_s) == (64, 32, 1024, 5)
    assert service.replicas == 2 and service.chute is not None
    # stored and read back: the same, and the same revision
    again = ApplicationSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.services[0].revision() == service.revision()
    # what the manifest says is in the revision
    other = {**MANIFEST, "services": [{**MANIFEST["services"][0], "env": {"A": "2"}}]}
    changed = ApplicationSpec.model_validate(app(chute=other)).services[0]
    assert (
        changed.revision()
        != ApplicationSpec.model_validate(app(chute=MANIFEST)).services[0].revision()
    )


@pytest.mark.parametrize(
    ("service", "field"),
    [
        ({"chute": {**MANIFEST, "services": [*MANIFEST["services"], {"name": "b", "image": "x"}]}},
         "services[0].chute.services"),
        ({"chute": {**MANIFEST, "bogus": 1}}, "services[0].chute.bogus"),
        ({"chute": {**MANIFEST, "name": "Bad Name"}}, "services[0].chute.name"),
        ({"chute": {**MANIFEST, "config": {"k": "v"}}}, "services[0].chute.config"),
        ({"chute": {**MANIFEST, "resources": {"disk_mb": 8}}},
         "services[0].chute.resources.disk_mb"),
        ({"chute": {**MANIFEST, "resources": {"bandwidth_kbit": {"egress": 800}}}},
         "services[0].chute.resources.bandwidth_kbit"),
        ({"chute": MANIFEST, "image": "other"}, "services[0].image"),
        ({"chute": MANIFEST, "runtime": "host"}, "services[0].runtime"),
        ({"chute": MANIFEST, "ports": [{"port": 9}]}, "services[0].ports"),
        ({"chute": MANIFEST, "limits": {"memory_mb": 5}}, "services[0].limits.memory_mb"),
        ({"chute_file": "chute.yaml"}, "services[0].chute_file"),
    ],
)  # fmt: skip
def test_bad_chute_services_are_refused_naming_the_field(
    service: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as caught:
        ApplicationSpec.model_validate(app(**service))
    assert caught.value.field == field


def test_a_field_the_manifest_gives_may_be_repeated_as_it_is() -> None:
    spec = ApplicationSpec.model_validate(app(chute=MANIFEST, image="busybox", runtime="container"))
    assert spec.services[0].image == "busybox"


def test_task_run_publishes_ports_given_on_the_command_line() -> None:
    import typer

    from edgeplane.cli.tasks import Mode, RuntimeName, task_spec

    def spec(runtime: RuntimeName = RuntimeName.container, **given: Any) -> dict[str, Any]:
        image = "busybox" if runtime is RuntimeName.container else None
        options: dict[str, Any] = dict.fromkeys(
            ("export", "name", "env", "fuel", "memory_mb", "time_limit", "retries"), None
        )
        options.update(priority=None, label=None, worker=None)
        return task_spec(["httpd"], runtime=runtime, image=image, mode=Mode.function,
                         **options, **given)  # fmt: skip

    made = spec(port=["8000", "53/udp"])
    assert made["ports"] == [{"port": 8000, "protocol": "tcp"}, {"port": 53, "protocol": "udp"}]
    assert spec(network="bridge")["network"] == "bridge"
    for bad in ({"port": ["http"]}, {"port": ["80/sctp"]}, {"network": "host"}):
        with pytest.raises((typer.BadParameter, Invalid)):
            spec(**bad)
    with pytest.raises(typer.BadParameter):
        spec(RuntimeName.host, port=["80"])
