"""The example's model: multinomial logistic regression (softmax) in numpy.

Weights ``w`` (64 by 10) and ``b`` (10); a client trains it with mini-batch SGD on its
shard, FedProx's ``mu`` (when > 0) pulling its weights toward the round's global model.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgeplane.fl.datastore import CLASSES, FEATURES

Arrays = dict[str, npt.NDArray[np.float32]]


SHAPES = {"w": (FEATURES, CLASSES), "b": (CLASSES,)}


def initial() -> Arrays:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def fits(m: Arrays) -> str | None:
    """None when ``m`` is this softmax model (its names and shapes), else what differs."""
    got = {name: tuple(a.shape) for name, a in m.items()}
    if got == SHAPES:
        return None
    want = ", ".join(f"{n} {list(s)}" for n, s in SHAPES.items())
    have = ", ".join(f"{n} {list(s)}" for n, s in got.items())
    return f"the digits softmax model is {want}; this one is {have}"


def _probs(m: Arrays, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    z = x.astype(np.float64) @ m["w"] + m["b"]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def evaluate(m: Arrays, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> dict[str, float]:
    p = _probs(m, x)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    return {"accuracy": float((p.argmax(axis=1) == y).mean()), "loss": loss}


def train(
    glob: Arrays,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    lr: float = 0.1,
    epochs: int = 1,
    batch: int = 32,
    mu: float = 0.0,
    seed: int = 0,
) -> Arrays:
    w = glob["w"].astype(np.float64)
    b = glob["b"].astype(np.float64)
    onehot = np.eye(CLASSES)[y]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for at in range(0, len(y), batch):
            i = order[at : at + batch]
            z = x[i] @ w + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            err = (p - onehot[i]) / len(i)
            gw = x[i].T @ err
            gb = err.sum(axis=0)
            if mu > 0:
                gw += mu * (w - glob["w"])
                gb += mu * (b - glob["b"])
            w -= lr * gw
            b -= lr * gb
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}
