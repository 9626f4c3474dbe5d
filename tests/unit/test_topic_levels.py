"""Ids and domains become topic levels: what every broker edgeplane supports takes
(NATS drops a client that publishes to a topic with '.' or ' ' in it: docs/brokers.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.protocol import Topics
from edgeplane.protocol.joining import JoinRequest
from edgeplane.protocol.topics import check_domain, check_segment, fl_ack_of
from edgeplane.roles import worker as worker_role
from edgeplane.transport import parse_broker_urls

REFUSED = ["a.b", "a b", "a/b", "a+", "#", "", "-a", "x" * 64, "é"]


@pytest.mark.parametrize("value", REFUSED)
def test_an_id_that_is_no_topic_level_on_every_broker_is_refused(value: str) -> None:
    with pytest.raises(Invalid) as refused:
        check_segment(value, "worker_id", "a worker id")
    assert refused.value.field == "worker_id"
    with pytest.raises(ValidationError):
        JoinRequest(token="t", worker_id=value)


@pytest.mark.parametrize("value", ["w1", "edge-01", "A_b-9", "x" * 63])
def test_ids_of_letters_digits_dash_underscore_pass(value: str) -> None:
    assert check_segment(value, "worker_id") == value


def test_domains_are_levels_separated_by_slashes() -> None:
    assert check_domain("acme/edge") == "acme/edge"
    for bad in ["acme.edge", "acme/", "/acme", "a//b", "acme edge", "acme/#"]:
        with pytest.raises(Invalid) as refused:
            check_domain(bad)
        assert refused.value.field == "domain"


def test_topics_and_settings_refuse_dotted_clusters_and_domains() -> None:
    with pytest.raises(Invalid):
        Topics("edgeplane", "eu.west")
    with pytest.raises(Invalid):
        Topics.for_root("acme.io")
    for field in ("cluster_id", "domain"):
        with pytest.raises(ValidationError) as refused:
            Settings(**{field: "a.b"})
        assert "'a.b'" in str(refused.value)


def test_a_generated_worker_id_leaves_the_host_names_domain_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_role.socket, "gethostname", lambda: "edge1.example.org")
    worker_id = worker_role.stable_worker_id(tmp_path / "a")
    assert worker_id.startswith("edge1-")
    assert check_segment(worker_id, "worker_id") == worker_id
    assert worker_role.stable_worker_id(tmp_path / "a") == worker_id  # kept


def test_a_kept_dotted_worker_id_is_refused_naming_its_file(tmp_path: Path) -> None:
    (tmp_path / "worker-id").write_text("edge1.example.org\n")
    with pytest.raises(Invalid) as refused:
        worker_role.stable_worker_id(tmp_path)
    assert str(tmp_path / "worker-id") in refused.value.detail


def test_a_broker_is_one_url_or_its_nodes_comma_separated() -> None:
    nodes = parse_broker_urls("mqtt://a:1, mqtts://u:p@b:2")
    assert [(n.host, n.port, n.tls, n.username) for n in nodes] == [
        ("a", 1, False, None),
        ("b", 2, True, "u"),
    ]
    assert [str(n) for n in parse_broker_urls("mqtt://a")] == ["a:1883"]
    for bad in ("mqtt://a,", ",mqtt://a", "mqtt://a,,mqtt://b", "mqtt://a,http://b"):
        with pytest.raises(Invalid) as refused:
            parse_broker_urls(bad)
        assert refused.value.field == "broker"


def test_an_update_topics_answer_is_its_acks_level_wildcards_kept() -> None:
    topics = Topics("d/e")
    for round_no in (3, "+"):
        update = topics.fl_update("x1", round_no, "w1")
        assert fl_ack_of(update) == topics.fl_ack("x1", round_no, "w1")
        assert topics.fl_update_of(fl_ack_of(update)) is None  # never read as an update
    for other in ("d/e/c/workers/w1/events", "d/e/fl/x1/rounds/3/updates/w1/more", ""):
        with pytest.raises(Invalid):
            fl_ack_of(other)
