"""Aggregation of client updates into the next global model, in numpy on the real arrays.

Every function takes updates, each a mapping of array name to array (all of one set of
names and shapes, which ``updates.check`` already made sure of): FedAvg any iterable,
read one update at a time; the robust strategies a list.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from edgeplane.errors import Invalid
from edgeplane.fl.spec import Strategy

Arrays = Mapping[str, npt.NDArray[np.float32]]

#: The share of values cut at each end, coordinate by coordinate, by ``trimmed_mean``.
TRIM = 0.2


class WeightedSum:
    """FedAvg one update at a time: per array the float64 sum of each update times its
    client's ``num_samples``, and their total; :meth:`mean` is the FedAvg of what was
    added. Only the sums are held, never the updates (the coordinator keeps one per open
    round and adds each update as it accepts it)."""

    def __init__(self) -> None:
        self.sums: dict[str, npt.NDArray[np.float64]] = {}
        self.total = 0
        self.count = 0

    def add(self, update: Arrays, num_samples: int) -> None:
        if num_samples <= 0:
            raise Invalid("each update needs a positive num_samples", field="num_samples")
        for name, array in update.items():
            # float64 accumulation: a sum of many float32 products loses digits otherwise
            scaled = np.multiply(array, float(num_samples), dtype=np.float64)
            if name in self.sums:
                self.sums[name] += scaled
            else:
                self.sums[name] = scaled
        self.total += num_samples
        self.count += 1

    def mean(self) -> dict[str, npt.NDArray[np.float32]]:
        if not self.count:
            raise Invalid("no update to aggregate", field="updates")
        return {name: (s / self.total).astype(np.float32) for name, s in self.sums.items()}


def fedavg(
    updates: Iterable[Arrays], num_samples: Sequence[int]
) -> dict[str, npt.NDArray[np.float32]]:
    """The mean of the updates weighted by each client's number of samples.

    The updates are taken one at a time (a generator that decodes each stored update as
    it comes will do) into a :class:`WeightedSum`: only the sums and the update being
    added are held, never all of them at once. Stacking them was 4.8 s and 0.8 GB for 50
    updates of 1M parameters (bench/fl.py, docs/benchmarks.md)."""
    if not num_samples:
        raise Invalid("no update to aggregate", field="updates")
    if any(n <= 0 for n in num_samples):
        raise Invalid("each update needs a positive num_samples", field="num_samples")
    acc = WeightedSum()
    given = iter(updates)
    for n in num_samples:
        update = next(given, None)
        if update is None:
            raise Invalid("one num_samples per update", field="num_samples")
        acc.add(update, n)
    if next(given, None) is not None:
        raise Invalid("one num_samples per update", field="num_samples")
    return acc.mean()


def median(updates: Sequence[Arrays]) -> dict[str, npt.NDArray[np.float32]]:
    """The coordinate-wise median: one client's outlier moves no coordinate far."""
    _nonempty(updates)
    return {
        name: np.median(np.stack([u[name] for u in updates]).astype(np.float64), axis=0).astype(
            np.float32
        )
        for name in updates[0]
    }


def trimmed_mean(
    updates: Sequence[Arrays], trim: float = TRIM
) -> dict[str, npt.NDArray[np.float32]]:
    """The coordinate-wise mean of what is left once the ``trim`` share of the lowest and
    of the highest values are cut (at least one value stays)."""
    _nonempty(updates)
    n = len(updates)
    cut = min(int(n * trim), (n - 1) // 2)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name in updates[0]:
        ordered = np.sort(np.stack([u[name] for u in updates]).astype(np.float64), axis=0)
        out[name] = ordered[cut : n - cut].mean(axis=0).astype(np.float32)
    return out


def combine(
    strategy: Strategy, updates: Iterable[Arrays], num_samples: Sequence[int]
) -> dict[str, npt.NDArray[np.float32]]:
    """``updates`` may be a generator: FedAvg reads it one update at a time, the robust
    strategies (a median needs every value of a coordinate) all at once."""
    if strategy == "fedavg":
        return fedavg(updates, num_samples)
    if strategy == "median":
        return median(list(updates))
    return trimmed_mean(list(updates))


async def combine_each(
    strategy: Strategy, updates: AsyncIterable[Arrays], num_samples: Sequence[int]
) -> dict[str, npt.NDArray[np.float32]]:
    """:func:`combine` of updates read as they come (each stored update read from the
    store when it is its turn): FedAvg holds one at a time, as with a generator."""
    if strategy != "fedavg":
        return combine(strategy, [u async for u in updates], num_samples)
    acc = WeightedSum()
    given = aiter(updates)
    for n in num_samples:
        update = await anext(given, None)
        if update is None:
            raise Invalid("one num_samples per update", field="num_samples")
        acc.add(update, n)
    if await anext(given, None) is not None:
        raise Invalid("one num_samples per update", field="num_samples")
    return acc.mean()


def _nonempty(updates: Sequence[Arrays]) -> None:
    if not updates:
        raise Invalid("no update to aggregate", field="updates")
