"""The lease rules (edgeplane.store.leases): pure, so checked over many histories."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.errors import Fenced
from edgeplane.store.leases import Claim, Lease, check_term, claimed, released, renewed

NAME = "edgeplane/local"
HOLDERS = st.sampled_from(["a", "b", "c"])
HOMES = st.sampled_from(["h1", "h2"])
TIMES = st.floats(min_value=0, max_value=100, allow_nan=False)


def claim(holder: str, home: str = "", ttl_s: float = 3.0) -> Claim:
    return Claim(holder, home or f"home-{holder}", f"http://{holder}", ttl_s)


def test_the_first_claim_takes_term_one() -> None:
    lease = claimed(None, NAME, claim("a"), 10.0)
    assert (lease.holder, lease.term, lease.expires_at, lease.url) == ("a", 1, 13.0, "http://a")


def test_a_held_lease_is_not_taken_before_it_expires() -> None:
    held = claimed(None, NAME, claim("a"), 10.0)
    assert claimed(held, NAME, claim("b"), 12.9) == held
    taken = claimed(held, NAME, claim("b"), 13.0)
    assert (taken.holder, taken.term) == ("b", 2)


def test_the_same_home_takes_over_at_once() -> None:
    held = claimed(None, NAME, claim("a", "h"), 10.0)
    again = claimed(held, NAME, claim("a2", "h"), 10.5)
    assert (again.holder, again.term) == ("a2", 2)


def test_only_the_holder_in_its_term_renews_or_releases() -> None:
    held = claimed(None, NAME, claim("a"), 10.0)
    assert renewed(held, "b", 1, 11.0, 3.0) is None
    assert renewed(held, "a", 2, 11.0, 3.0) is None
    assert renewed(held, "a", 1, 11.0, 3.0) == Lease(NAME, "a", "home-a", 1, 14.0, "http://a")
    assert released(held, "b", 1) is None
    gone = released(held, "a", 1)
    assert gone is not None and gone.expires_at == 0.0
    assert claimed(gone, NAME, claim("b"), 11.0).holder == "b"


def test_a_fence_refuses_an_ended_term() -> None:
    held = claimed(None, NAME, claim("a"), 10.0)
    check_term(held, NAME, 1)
    with pytest.raises(Fenced):
        check_term(claimed(held, NAME, claim("b"), 20.0), NAME, 1)
    with pytest.raises(Fenced):
        check_term(None, NAME, 1)


@given(st.lists(st.tuples(st.sampled_from(["claim", "renew", "release"]), HOLDERS, HOMES, TIMES)))
def test_terms_only_grow_and_one_holder_per_term(
    steps: list[tuple[str, str, str, float]],
) -> None:
    """Whatever processes do in whatever order: the term never goes back, and a term
    belongs to one holder for its whole life (what fencing relies on)."""
    lease: Lease | None = None
    owner_of: dict[int, str] = {}
    now = 0.0
    for action, holder, home, step in steps:
        now += step / 10  # time only moves forward
        if action == "claim":
            after = claimed(lease, NAME, claim(holder, home), now)
        elif action == "renew" and lease is not None:
            after = renewed(lease, holder, lease.term, now, 3.0) or lease
        elif action == "release" and lease is not None:
            after = released(lease, holder, lease.term) or lease
        else:
            continue
        if lease is not None:
            assert after.term >= lease.term
            if after.holder != lease.holder:
                assert after.term == lease.term + 1
        assert owner_of.setdefault(after.term, after.holder) == after.holder
        lease = after


@given(st.lists(st.tuples(st.sampled_from(["claim", "renew", "release"]), HOLDERS, HOMES, TIMES)))
def test_a_lease_keeps_the_lineage_of_its_first_claim(
    steps: list[tuple[str, str, str, float]],
) -> None:
    """Every claim offers a lineage of its own; whoever holds the lease after, it keeps
    the first one (what the root tells a cluster's later leader by)."""
    lease: Lease | None = None
    now = 0.0
    for n, (action, holder, home, step) in enumerate(steps):
        now += step / 10
        if action == "claim":
            offer = Claim(holder, home, "", 3.0, lineage=f"lineage-{n}")
            after = claimed(lease, NAME, offer, now)
        elif action == "renew" and lease is not None:
            after = renewed(lease, holder, lease.term, now, 3.0) or lease
        elif action == "release" and lease is not None:
            after = released(lease, holder, lease.term) or lease
        else:
            continue
        assert after.lineage == (lease.lineage if lease is not None else f"lineage-{n}")
        lease = after


def test_a_lease_from_before_lineages_takes_its_next_claimants() -> None:
    old = Lease(NAME, "a", "home-a", 4, 10.0, "")  # a row the migration gave ""
    assert claimed(old, NAME, Claim("a", "home-a", "", 3.0, lineage="x"), 5.0).lineage == "x"
    taken = claimed(old, NAME, Claim("b", "home-b", "", 3.0, lineage="y"), 11.0)
    assert (taken.term, taken.lineage) == (5, "y")
