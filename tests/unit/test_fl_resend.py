"""The example client's MQTT fallback sends its update again until the coordinator
answers (``fl/client.py``, ``_until_answered``): with a stand-in for paho's client."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

pytest.importorskip("numpy")

from edgeplane.fl import client as fl_client


@dataclass
class Code:
    is_failure: bool = False


@dataclass
class Info:
    def wait_for_publish(self, _timeout: float) -> None:
        return None


@dataclass
class Broker:
    """Acknowledges every publish; the ``answer_at``-th one is answered with ``answer``."""

    answers: dict[str, Any]
    told: queue.Queue[bytes]
    answer_at: int | None
    answer: dict[str, str] = field(default_factory=lambda: {"outcome": "accepted"})
    sent: list[bytes] = field(default_factory=list)

    def publish(self, _topic: str, payload: bytes, qos: int) -> Info:
        assert qos == 1
        self.sent.append(payload)
        self.answers["publish"] = Code()
        if len(self.sent) == self.answer_at:
            self.told.put(orjson.dumps(self.answer))
        return Info()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fl_client, "RESEND_FIRST_S", 0.01)
    monkeypatch.setattr(fl_client, "RESEND_MAX_S", 0.02)
    monkeypatch.setattr(fl_client, "ANSWER_TIMEOUT_S", 0.5)


def run(answer_at: int | None, answerable: bool = True, **answer: str) -> tuple[Any, Broker]:
    answers: dict[str, Any] = {}
    told: queue.Queue[bytes] = queue.Queue()
    broker = Broker(answers, told, answer_at, answer or {"outcome": "accepted"})
    got = fl_client._until_answered(broker, answers, told, "t", b"update", answerable)
    return got, broker


def test_unanswered_sends_go_again_until_the_answer() -> None:
    got, broker = run(answer_at=3)
    assert got == (True, "")
    assert broker.sent == [b"update"] * 3


def test_each_send_again_says_how_many_went_before() -> None:
    answers: dict[str, Any] = {}
    told: queue.Queue[bytes] = queue.Queue()
    broker = Broker(answers, told, answer_at=3)
    got = fl_client._until_answered(
        broker, answers, told, "t", b"0", True, lambda n: str(n).encode()
    )
    assert got == (True, "") and broker.sent == [b"0", b"1", b"2"]


def test_a_duplicate_is_on_record_and_a_refusal_is_told() -> None:
    assert run(answer_at=1, outcome="duplicate")[0] == (True, "")
    (taken, why), broker = run(answer_at=2, outcome="closed", detail="round 2 closed")
    assert taken is False and why == f"{fl_client.ANSWERED}: closed: round 2 closed"
    assert len(broker.sent) == 2


def test_never_answered_it_stops_at_the_timeout_the_broker_having_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got, broker = run(answer_at=None)
    assert got == (True, "")
    assert len(broker.sent) >= 2
    assert "no answer in" in capsys.readouterr().err


def test_without_an_answer_topic_it_is_sent_once() -> None:
    got, broker = run(answer_at=None, answerable=False)
    assert got == (True, "") and len(broker.sent) == 1
