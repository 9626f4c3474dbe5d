"""The data store: each client's shard of scikit-learn's bundled handwritten digits.

The digits ship inside scikit-learn (``load_digits`` reads a file of the package; nothing
is downloaded). A fixed share, chosen by the seed, is held out as the test set the
coordinator scores each global model on; the rest is split among the clients, ``iid``
(a random, even share each) or ``labels`` (non-IID: each client mostly holds two digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from edgeplane.errors import Invalid

TEST_SHARE = 0.2
FEATURES = 64
CLASSES = 10


@dataclass(frozen=True)
class Split:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


@cache
def _digits(seed: int) -> tuple[Split, Split]:
    # the fl extra (scikit-learn has no type information); imported only when used
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x = (x[order] / 16.0).astype(np.float32)  # pixel values 0..16 → 0..1
    y = y[order].astype(np.int64)
    cut = int(len(y) * (1 - TEST_SHARE))
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def test_set(seed: int = 0) -> Split:
    return _digits(seed)[1]


def shard(index: int, clients: int, *, split: str = "iid", seed: int = 0) -> Split:
    """Client ``index``'s (0-based) shard of ``clients``."""
    if not 0 < clients <= 1_000 or not 0 <= index < clients:
        raise Invalid(f"shard {index} of {clients} does not exist", field="shard")
    train = _digits(seed)[0]
    if split == "iid":
        parts = np.array_split(np.arange(len(train.y)), clients)
        picked = parts[index]
    elif split == "labels":
        # sorted by label, cut in 2 pieces per client, pieces dealt at random: most
        # clients see two digits only
        by_label = np.argsort(train.y, kind="stable")
        pieces = np.array_split(by_label, 2 * clients)
        deal = np.random.default_rng(seed + 1).permutation(2 * clients)
        picked = np.concatenate([pieces[deal[2 * index]], pieces[deal[2 * index + 1]]])
    else:
        raise Invalid(f"split must be iid or labels, not {split!r}", field="split")
    return Split(train.x[picked], train.y[picked])
