"""An experiment's stored document (``Experiment.stored_json``) is its full dump, however
its rounds changed between writes: each ended round's JSON is made once and kept while
what may change of it (a late update's count, a score) does not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeplane.fl.spec import ExperimentSpec
from edgeplane.fl.state import Experiment, RoundRecord
from edgeplane.model.secrets import REVEAL

SPEC = ExperimentSpec.model_validate(
    {"name": "e", "workload": {"runtime": "host", "command": ["true"]}}
)

# what happens between two writes: a round opens, takes an update, ends; an ended one
# counts a late update or is scored (after a restart)
steps = st.lists(
    st.sampled_from(["open", "update", "close", "retry", "late", "score", "write"]),
    max_size=60,
)


@given(steps, st.text(min_size=1, max_size=8))
def test_the_stored_document_is_the_full_dump(seen: list[str], exp_id: str) -> None:
    exp = Experiment(
        id=exp_id, name="e", spec=SPEC, secret="ab" * 16, created_at=1.0, updated_at=1.0
    )

    def check() -> None:
        full = exp.model_dump_json(context=REVEAL)
        assert Experiment.model_validate_json(exp.stored_json()) == Experiment.model_validate_json(
            full
        )

    for step in seen:
        last = exp.rounds[-1] if exp.rounds else None
        if step == "open" or last is None:
            attempt = last.attempt + 1 if last is not None and last.state == "retry" else 0
            exp.round += 0 if attempt else 1
            exp.rounds.append(RoundRecord(round=exp.round, attempt=attempt, clients=["w1", "w2"]))
        elif step == "update" and last.state == "open":
            last.updates[f"w{len(last.updates)}"] = 10
            last.client_metrics["loss"] = float(len(last.updates))
        elif step in ("close", "retry") and last.state == "open":
            last.state = "closed" if step == "close" else "retry"
            last.closed_at = 2.0
        elif step == "late" and last.state != "open":
            last.rejected["closed"] = last.rejected.get("closed", 0) + 1
        elif step == "score" and last.state == "closed":
            last.metrics["accuracy"] = last.metrics.get("accuracy", 0.0) + 0.1
        check()
