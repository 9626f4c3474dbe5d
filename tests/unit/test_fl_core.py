"""The pure core of federated learning: aggregation, the update format, the round machine."""

from __future__ import annotations

import io
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from edgeplane.clock import ManualClock
from edgeplane.errors import Invalid
from edgeplane.fl import aggregate, model, mqtt, updates
from edgeplane.fl.rounds import Round
from edgeplane.fl.spec import ExperimentSpec
from edgeplane.fl.updates import Rejected
from edgeplane.protocol import Topics

MQTT_TYPES = [updates.RAW, updates.NPZ]
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


@st.composite
def client_updates(draw: st.DrawFn) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    shape_w, shape_b = draw(shapes), draw(shapes)
    n = draw(st.integers(1, 6))
    ups = [
        {
            "w": draw(hnp.arrays(np.float32, shape_w, elements=finite)),
            "b": draw(hnp.arrays(np.float32, shape_b, elements=finite)),
        }
        for _ in range(n)
    ]
    return ups, draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n))


@given(client_updates())
@settings(max_examples=60, deadline=None)
def test_fedavg_is_the_mean_weighted_by_num_samples(
    case: tuple[list[dict[str, np.ndarray]], list[int]],
) -> None:
    ups, ns = case
    got = aggregate.fedavg(ups, ns)
    total = sum(ns)
    for name in ("w", "b"):
        # by hand, element by element
        want = np.zeros(ups[0][name].shape, dtype=np.float64)
        for u, n in zip(ups, ns, strict=True):
            want += u[name].astype(np.float64) * n
        want /= total
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-3)


@given(client_updates())
@settings(max_examples=40, deadline=None)
def test_median_and_trimmed_mean_stay_within_the_clients_values(
    case: tuple[list[dict[str, np.ndarray]], list[int]],
) -> None:
    ups, _ = case
    for got in (aggregate.median(ups), aggregate.trimmed_mean(ups)):
        for name in ("w", "b"):
            stacked = np.stack([u[name] for u in ups])
            assert (got[name] >= stacked.min(axis=0) - 1e-3).all()
            assert (got[name] <= stacked.max(axis=0) + 1e-3).all()


def test_robust_strategies_ignore_one_outlier() -> None:
    ups = [{"w": np.array([1.0, 2.0], dtype=np.float32)} for _ in range(4)]
    ups.append({"w": np.array([1e6, -1e6], dtype=np.float32)})
    np.testing.assert_allclose(aggregate.median(ups)["w"], [1.0, 2.0])
    np.testing.assert_allclose(aggregate.trimmed_mean(ups)["w"], [1.0, 2.0])
    assert aggregate.fedavg(ups, [1] * 5)["w"][0] > 1e5


def test_fedavg_refuses_a_zero_weight() -> None:
    with pytest.raises(Invalid):
        aggregate.fedavg([{"w": np.zeros(1, np.float32)}], [0])


@given(client_updates(), st.randoms(use_true_random=False))
@settings(max_examples=40, deadline=None)
def test_a_running_sum_in_any_order_is_fedavg(
    case: tuple[list[dict[str, np.ndarray]], list[int]], rnd: Any
) -> None:
    """The coordinator adds each update to its round's sums as it accepts it (arrival
    order), and falls back to fedavg over the stored updates (worker order)."""
    ups, ns = case
    pairs = list(zip(ups, ns, strict=True))
    rnd.shuffle(pairs)
    acc = aggregate.WeightedSum()
    for u, n in pairs:
        acc.add(u, n)
    got, want = acc.mean(), aggregate.fedavg(ups, ns)
    for name in ("w", "b"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-4)


def test_an_empty_running_sum_has_no_mean() -> None:
    with pytest.raises(Invalid):
        aggregate.WeightedSum().mean()
    with pytest.raises(Invalid):
        aggregate.WeightedSum().add({"w": np.ones(1, np.float32)}, 0)


def test_fedavg_needs_one_num_samples_per_update() -> None:
    one = {"w": np.ones(2, np.float32)}
    for ups, ns in (([one, one], [1]), ([one], [1, 1]), ([], [])):
        with pytest.raises(Invalid):
            aggregate.fedavg(iter(ups), ns)


def test_fedavg_holds_one_update_at_a_time() -> None:
    """The coordinator hands FedAvg a generator that decodes each stored update as it
    comes: at most the update being added and the one before it are alive, however many
    there are (50 updates of 1M parameters are not all in memory at once)."""
    alive: set[int] = set()
    most = 0

    def stored() -> Iterator[dict[str, np.ndarray]]:
        nonlocal most
        for i in range(20):
            array = np.full(1000, float(i), np.float32)
            alive.add(i)
            weakref.finalize(array, alive.discard, i)
            most = max(most, len(alive))
            yield {"w": array}
            del array

    got = aggregate.fedavg(stored(), list(range(1, 21)))
    want = sum(i * n for i, n in zip(range(20), range(1, 21), strict=True)) / sum(range(1, 21))
    np.testing.assert_allclose(got["w"], np.full(1000, want), rtol=1e-6)
    assert most <= 2, most
    # and through combine, as the coordinator calls it
    assert aggregate.combine("median", iter([{"w": np.ones(1, np.float32)}] * 3), [1] * 3)


@given(client_updates(), st.sampled_from(["raw", "npz"]), st.sampled_from(["f32", "f32-delta"]))
@settings(max_examples=40, deadline=None)
def test_update_round_trips_in_both_encodings(
    case: tuple[list[dict[str, np.ndarray]], list[int]], encoding: str, fmt: str
) -> None:
    ups, ns = case
    enc = updates.encode_raw if encoding == "raw" else updates.encode_npz
    ctype = updates.RAW if encoding == "raw" else updates.NPZ
    body = enc(ups[0], format=fmt, num_samples=ns[0], metrics={"loss": 0.5})
    got = updates.decode(body, ctype)
    assert got.format == fmt and got.num_samples == ns[0] and got.metrics == {"loss": 0.5}
    for name in ("w", "b"):
        np.testing.assert_array_equal(got.arrays[name], ups[0][name])


def test_raw_is_little_endian_float32_after_one_header_line() -> None:
    body = updates.encode_raw({"w": np.array([1.0, -2.0], dtype=np.float32)}, num_samples=3)
    header, _, data = body.partition(b"\n")
    assert data == np.array([1.0, -2.0], dtype="<f4").tobytes()
    assert b'"shape":[2]' in header


def test_delta_is_added_to_the_global_model() -> None:
    model = {"w": np.array([1.0, 1.0], dtype=np.float32)}
    up = updates.decode(
        updates.encode_raw({"w": np.array([0.5, -1.0])}, format="f32-delta", num_samples=1)
    )
    np.testing.assert_allclose(updates.check(up, model)["w"], [1.5, 0.0])


MODEL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"w": np.zeros((3, 2)), "b": np.zeros(3)}, "shape"),
        ({"w": np.zeros((2, 3))}, "shape"),
        ({"w": np.zeros((2, 3)), "b": np.zeros(3), "x": np.zeros(1)}, "shape"),
        ({"w": np.full((2, 3), np.nan), "b": np.zeros(3)}, "nonfinite"),
        ({"w": np.zeros((2, 3)), "b": np.array([0, np.inf, 0])}, "nonfinite"),
    ],
)
def test_a_bad_update_is_rejected_with_its_reason(
    arrays: dict[str, np.ndarray], reason: str
) -> None:
    up = updates.decode(updates.encode_raw(arrays, num_samples=1))
    with pytest.raises(Rejected) as exc:
        updates.check(up, MODEL)
    assert exc.value.reason == reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json\n",
        b'{"arrays": [{"name": "w", "shape": [4]}]}\n' + b"\0" * 8,  # short
        b'{"arrays": [{"name": "w", "shape": [1]}]}\n' + b"\0" * 8,  # long
        b'{"arrays": [{"name": "w", "shape": [-1]}]}\n',
        b'{"arrays": [], "format": "f64"}\n',
        b'{"arrays": [], "num_samples": -1}\n',
        b'{"arrays": [], "metrics": {"loss": "x"}}\n',
    ],
)
def test_a_malformed_body_is_rejected_not_crashed_on(body: bytes) -> None:
    with pytest.raises(Rejected) as exc:
        updates.decode(body)
    assert exc.value.reason == "malformed"


def test_npz_with_pickled_objects_is_refused() -> None:
    buf = io.BytesIO()
    np.savez(buf, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(Rejected):
        updates.decode(buf.getvalue(), updates.NPZ)


def make_round(clock: ManualClock, *, retries: int = 0) -> Round:
    return Round(
        number=1,
        selected=frozenset({"a", "b", "c", "d"}),
        k=4,
        min_clients=3,
        deadline=clock.monotonic() + 120,
        retries_left=retries,
    )


def test_round_closes_when_k_updates_are_in() -> None:
    clock = ManualClock()
    r = make_round(clock)
    for w in "abc":
        assert r.accept(w, 10, clock.monotonic()) == "open"
    assert r.accept("d", 10, clock.monotonic()) == "closed"


def test_round_closes_at_the_timeout_with_min_clients() -> None:
    clock = ManualClock()
    r = make_round(clock)
    for w in "abc":
        r.accept(w, 10, clock.monotonic())
    assert r.tick(clock.monotonic() + 119) == "open"
    clock.advance(120)
    assert r.tick(clock.monotonic()) == "closed"
    with pytest.raises(Rejected) as exc:
        r.accept("d", 10, clock.monotonic())
    assert exc.value.reason == "closed"
    assert r.rejected["closed"] == 1 and set(r.accepted) == {"a", "b", "c"}


@pytest.mark.parametrize(("retries", "state"), [(1, "retry"), (0, "failed")])
def test_round_short_of_min_clients_retries_or_fails(retries: int, state: str) -> None:
    clock = ManualClock()
    r = make_round(clock, retries=retries)
    r.accept("a", 10, clock.monotonic())
    clock.advance(121)
    assert r.tick(clock.monotonic()) == state


def test_duplicate_and_unselected_updates_are_rejected_and_counted() -> None:
    clock = ManualClock()
    r = make_round(clock)
    r.accept("a", 10, clock.monotonic())
    for worker, reason in (("a", "duplicate"), ("z", "unselected")):
        with pytest.raises(Rejected) as exc:
            r.accept(worker, 10, clock.monotonic())
        assert exc.value.reason == reason
    assert r.rejected == {"duplicate": 1, "unselected": 1}
    assert r.accepted == {"a": 10}


def test_spec_bounds() -> None:
    ok = ExperimentSpec.model_validate(
        {"name": "digits", "workload": {"runtime": "host", "command": ["x"]}}
    )
    assert ok.strategy == "fedavg"
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate(
            {"name": "d", "workload": {}, "clients_per_round": 2, "min_clients": 3}
        )
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate({"name": "d", "workload": {}, "strategy": "krum"})


# the MQTT fallback's frame and topic, the user-given initial model


@given(
    st.text(min_size=1, max_size=200),
    st.binary(max_size=300),
    st.sampled_from(MQTT_TYPES),
    st.none() | st.integers(0, 1_000),
    st.integers(0, mqtt.MAX_RESENDS),
)
@settings(max_examples=60, deadline=None)
def test_mqtt_frame_round_trips(
    token: str, body: bytes, content_type: str, attempt: int | None, resend: int
) -> None:
    got = mqtt.unframe(mqtt.frame(token, body, content_type, attempt, resend))
    assert got == (token, content_type, body, attempt, resend)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"no newline at all",
        b"x" * (mqtt.MAX_HEADER + 2) + b"\n",
        b"not json\n",
        b'{"content_type": "application/x-npz"}\n',  # no token
        b'{"token": 7}\n',
        b'{"token": "t", "content_type": "text/plain"}\n',
        b'{"token": "t", "resend": -1}\n',
        b'{"token": "t", "resend": true}\n',
        b"[]\n",
    ],
)
def test_a_malformed_mqtt_frame_is_rejected(payload: bytes) -> None:
    with pytest.raises(Rejected) as exc:
        mqtt.unframe(payload)
    assert exc.value.reason == "malformed"


segments = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)


@given(segments, st.integers(1, 999_999_999), segments)
@settings(max_examples=60, deadline=None)
def test_fl_update_topic_round_trips(experiment: str, round_no: int, worker: str) -> None:
    topics = Topics("acme/edge", "c1")
    topic = topics.fl_update(experiment, round_no, worker)
    assert topic == f"acme/edge/fl/{experiment}/rounds/{round_no}/updates/{worker}"
    assert topics.fl_update_of(topic) == (experiment, round_no, worker)


@pytest.mark.parametrize(
    "topic",
    [
        "acme/fl/e/rounds/1/updates",  # no worker
        "acme/fl/e/rounds/1/updates/w/x",
        "acme/fl/e/round/1/updates/w",
        "acme/fl/e/rounds/01/updates/w",
        "acme/fl/e/rounds/0/updates/w",
        "acme/fl/e/rounds/²/updates/w",
        "acme/fl/e/rounds/1234567890/updates/w",
        "other/fl/e/rounds/1/updates/w",
        "acme/c1/workers/w/hello",
    ],
)
def test_not_an_fl_update_topic(topic: str) -> None:
    assert Topics("acme", "c1").fl_update_of(topic) is None


@pytest.mark.parametrize("encoding", ["raw", "npz"])
def test_an_initial_model_is_read_from_either_encoding(encoding: str) -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    enc = updates.encode_raw if encoding == "raw" else updates.encode_npz
    got = updates.model_of(enc(arrays))
    assert set(got) == {"w", "b"}
    np.testing.assert_array_equal(got["w"], arrays["w"])


def test_a_plain_numpy_npz_is_a_model() -> None:
    buf = io.BytesIO()
    np.savez(buf, w=np.ones((2, 2)), b=np.zeros(2))  # float64, no header: still a model
    got = updates.model_of(buf.getvalue())
    assert got["w"].dtype == np.float32 and got["w"].shape == (2, 2)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (updates.encode_raw({"w": np.ones(2)}, format="f32-delta"), "malformed"),
        (updates.encode_raw({}), "malformed"),
        (updates.encode_raw({"w": np.array([1.0, np.nan])}), "nonfinite"),
        (b"PK\x03\x04 not a zip", "malformed"),
        (b"garbage", "malformed"),
    ],
)
def test_a_bad_initial_model_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as exc:
        updates.model_of(body)
    assert exc.value.reason == reason


def test_the_digits_model_fits_only_its_own_shapes() -> None:
    assert model.fits(model.initial()) is None
    wrong = model.fits({"w": np.zeros((32, 10), np.float32), "b": np.zeros(10, np.float32)})
    assert wrong is not None and "w [32, 10]" in wrong and "w [64, 10]" in wrong


@pytest.mark.parametrize(
    "initial",
    [
        {},
        {"data": "AAAA", "experiment": "e"},
        {"version": 2},
        {"data": "AAAA", "version": 1},
        {"data": ""},
        {"experiment": "e", "version": -1},
        {"path": "x.npz"},
    ],
)
def test_an_initial_model_names_one_source(initial: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate(
            {"name": "d", "workload": {"runtime": "host"}, "initial_model": initial}
        )
    ok = ExperimentSpec.model_validate(
        {"name": "d", "workload": {}, "initial_model": {"experiment": "e", "version": 3}}
    )
    assert ok.initial_model is not None and ok.initial_model.version == 3
