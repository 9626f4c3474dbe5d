"""Aggregation of client updates into the next global model, in numpy on the real arrays.

Every function takes a list of updates, each a mapping of array name to array (all of one
set of names and shapes, which ``updates.check`` already made sure of).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from edgeplane.errors import Invalid
from edgeplane.fl.spec import Strategy

Arrays = Mapping[str, npt.NDArray[np.float32]]

#: The share of values cut at each end, coordinate by coordinate, by ``trimmed_mean``.
TRIM = 0.2


def fedavg(
    updates: Sequence[Arrays], num_samples: Sequence[int]
) -> dict[str, npt.NDArray[np.float32]]:
    """The mean of the updates weighted by each client's number of samples."""
    _nonempty(updates)
    if len(num_samples) != len(updates) or any(n <= 0 for n in num_samples):
        raise Invalid("each update needs a positive num_samples", field="num_samples")
    # float64 accumulation: a sum of many float32 products loses digits otherwise
    weights = np.asarray(num_samples, dtype=np.float64)
    weights = weights / weights.sum()
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name in updates[0]:
        stacked = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])
        out[name] = np.tensordot(weights, stacked, axes=1).astype(np.float32)
    return out


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
    strategy: Strategy, updates: Sequence[Arrays], num_samples: Sequence[int]
) -> dict[str, npt.NDArray[np.float32]]:
    if strategy == "fedavg":
        return fedavg(updates, num_samples)
    if strategy == "median":
        return median(updates)
    return trimmed_mean(updates)


def _nonempty(updates: Sequence[Arrays]) -> None:
    if not updates:
        raise Invalid("no update to aggregate", field="updates")
