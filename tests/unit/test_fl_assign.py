"""What a long-lived client is handed (``edgeplane.fl.assign``): over any history of an
experiment's handouts, a client that asks with its cursor gets each round attempt it is
selected for (with its own task) at most once, in order, and never one it is not; it
gets the one current when it asks; and it is told when the experiment ended."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.fl.assign import Cursor, Handout, Work, for_client

WORKERS = ("a", "b", "c", "d")
#: the client under test: worker a's task a0 (a1 is the task that replaced it)
ME, MINE = "a", "a0"

steps = st.lists(
    st.tuples(
        st.frozensets(st.sampled_from(WORKERS), min_size=1),  # the attempt's selection
        st.sampled_from(["a0", "a1"]),  # the task worker a has on record for it
        st.booleans(),  # a new round (else the next attempt of this one)
        st.booleans(),  # a gap between rounds: nothing open
        st.integers(0, 3),  # asks while this handout is current
    ),
    max_size=25,
)


def history(
    spec: list[tuple[frozenset[str], str, bool, bool, int]], final: str
) -> list[tuple[Handout, int]]:
    out: list[tuple[Handout, int]] = [(Handout("running"), 1)]
    round_no, attempt = 0, 0
    for selected, task, new_round, gap, asks in spec:
        if new_round or round_no == 0:
            round_no, attempt = round_no + 1, 0
        else:
            attempt += 1
        if gap:
            out.append((Handout("running"), asks))
        clients = tuple(sorted(selected))
        tasks = {w: (task if w == ME else f"{w}0") for w in clients}
        out.append((Handout("running", round_no, attempt, clients, tasks, round_no - 1), asks))
    out.append((Handout(final), 1))
    return out


@given(steps, st.sampled_from(["completed", "failed", "stopped"]))
@settings(max_examples=300, deadline=None)
def test_a_client_gets_each_attempt_it_is_selected_for_once_in_order(
    spec: list[tuple[frozenset[str], str, bool, bool, int]], final: str
) -> None:
    cursor: Cursor = (0, 0)
    given_out: list[Cursor] = []
    told = None
    for handout, asks in history(spec, final):
        for _ in range(asks):
            got = for_client(handout, ME, MINE, cursor)
            mine = ME in handout.clients and handout.tasks.get(ME) == MINE
            if isinstance(got, Work):
                assert handout.state == "running" and mine
                assert (got.round, got.attempt) == (handout.round, handout.attempt)
                assert (got.round, got.attempt) > cursor
                assert got.model_version == handout.model_version
                assert (got.index, got.count) == (handout.clients.index(ME), len(handout.clients))
                cursor = (got.round, got.attempt)
                given_out.append(cursor)
            elif isinstance(got, str):
                assert got == handout.state == final
                told = got
            else:
                # nothing: nothing open, not this client's, or already given
                assert handout.state == "running"
                assert not mine or handout.round == 0 or (handout.round, handout.attempt) <= cursor
    assert given_out == sorted(set(given_out))
    assert told == final


@given(st.integers(1, 50), st.integers(0, 5), st.integers(0, 50), st.integers(0, 5))
def test_an_attempt_at_or_before_the_cursor_is_not_given_again(
    round_no: int, attempt: int, after_round: int, after_attempt: int
) -> None:
    handout = Handout("running", round_no, attempt, (ME,), {ME: MINE}, 3)
    got = for_client(handout, ME, MINE, (after_round, after_attempt))
    assert (got is not None) == ((round_no, attempt) > (after_round, after_attempt))


def test_a_replaced_client_and_other_workers_get_nothing() -> None:
    handout = Handout("running", 2, 0, ("a", "b"), {"a": "a1", "b": "b0"}, 1)
    assert for_client(handout, "a", "a0", (1, 0)) is None  # its worker has a new client
    assert for_client(handout, "c", "c0", (1, 0)) is None  # not selected
    assert for_client(handout, "b", "b0", (1, 0)) == Work(2, 0, 1, 1, 2)
