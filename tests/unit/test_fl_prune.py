"""The reference rule of the FL blob prune (``fl/prune.py``): a digest still referenced —
a model version of any experiment, an update of a round still open — is never pruned;
every update of a round no longer open that nothing references is."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from edgeplane.fl import prune
from edgeplane.fl.spec import ExperimentSpec
from edgeplane.fl.state import Experiment, RoundRecord

SPEC = ExperimentSpec.model_validate(
    {"name": "e", "workload": {"runtime": "host", "command": ["true"]}}
)
#: few digests: versions, updates and experiments share them often (content addressing)
DIGESTS = st.sampled_from([f"sha256:{n:064x}" for n in range(6)])

rounds = st.builds(
    RoundRecord,
    round=st.integers(1, 5),
    state=st.sampled_from(["open", "closed", "retry", "failed"]),
    update_refs=st.dictionaries(st.sampled_from(["w1", "w2", "w3"]), DIGESTS, max_size=3),
)


@st.composite
def experiments(draw: Any) -> Experiment:
    return Experiment(
        id=draw(st.uuids()).hex,
        name="e",
        spec=SPEC,
        state=draw(st.sampled_from(["running", "completed", "failed", "stopped"])),
        rounds=draw(st.lists(rounds, max_size=4)),
        versions=draw(st.lists(DIGESTS, min_size=1, max_size=4)),
        created_at=1.0,
        updated_at=1.0,
    )


def needed(exps: list[Experiment]) -> set[str]:
    """What the rule protects, said the long way."""
    out = {v for e in exps for v in e.versions}
    for e in exps:
        if e.state == "running":
            out |= {d for r in e.rounds if r.state == "open" for d in r.update_refs.values()}
    return out


@given(st.lists(experiments(), max_size=4), st.sets(DIGESTS))
def test_prune_never_deletes_a_referenced_digest(exps: list[Experiment], extra: set[str]) -> None:
    candidates = prune.garbage(exps) | extra  # anything asked: the rule still holds
    gone = prune.prunable(exps, candidates)
    assert not gone & needed(exps)
    assert gone <= candidates


@given(st.lists(experiments(), max_size=4))
def test_every_unreferenced_update_of_a_round_no_longer_open_goes(
    exps: list[Experiment],
) -> None:
    stored = {d for e in exps for d in e.versions} | {
        d for e in exps for r in e.rounds for d in r.update_refs.values()
    }
    left = stored - prune.prunable(exps, prune.garbage(exps))
    # after a full prune, exactly what is still needed stays
    assert left == needed(exps)


@given(st.lists(experiments(), min_size=1, max_size=4))
def test_a_deleted_experiments_blobs_go_unless_another_references_them(
    exps: list[Experiment],
) -> None:
    doomed, rest = exps[0], exps[1:]
    theirs = {*doomed.versions, *(d for r in doomed.rounds for d in r.update_refs.values())}
    gone = prune.prunable(rest, theirs)
    assert not gone & needed(rest)
    assert gone == theirs - needed(rest)
