"""The bound on answers held open (``manager/holds.py``)."""

from __future__ import annotations

import pytest

from edgeplane.errors import Busy
from edgeplane.manager.holds import Holds


def test_past_the_limit_a_hold_is_refused_and_counted_and_ends_free_it() -> None:
    holds = Holds(limit=2)
    with holds.hold(), holds.hold():
        assert (holds.held, holds.free) == (2, False)
        with pytest.raises(Busy) as refused, holds.hold():
            pass
        assert refused.value.retry_after == 1 and refused.value.status == 503
        assert (holds.held, holds.refused) == (2, 1)
    assert (holds.held, holds.free) == (0, True)


def test_a_hold_is_released_when_its_block_raises() -> None:
    holds = Holds(limit=1)
    with pytest.raises(TimeoutError), holds.hold():
        raise TimeoutError
    with holds.hold():  # free again
        assert holds.held == 1
