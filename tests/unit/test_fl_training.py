"""The digits example trained federated, in process: shards and FedAvg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeplane.fl import aggregate, datastore, model


@pytest.mark.parametrize("split", ["iid", "labels"])
def test_shards_partition_the_training_set(split: str) -> None:
    shards = [datastore.shard(i, 4, split=split) for i in range(4)]
    total = sum(len(s.y) for s in shards)
    test = datastore.test_set()
    assert total + len(test.y) == 1797
    if split == "labels":
        # non-IID: two digits hold most of each shard
        for s in shards:
            counts = np.sort(np.bincount(s.y, minlength=10))
            assert counts[-2:].sum() > 0.6 * len(s.y)


@pytest.mark.parametrize(
    ("split", "strategy", "floor"),
    [
        ("iid", "fedavg", 0.9),
        ("iid", "median", 0.9),
        ("iid", "trimmed_mean", 0.9),
        ("labels", "fedavg", 0.8),
    ],
)
def test_four_clients_learn_the_digits(
    split: str, strategy: aggregate.Strategy, floor: float
) -> None:
    glob = model.initial()
    shards = [datastore.shard(i, 4, split=split) for i in range(4)]
    test = datastore.test_set()
    for rnd in range(10):
        locals_ = [model.train(glob, s.x, s.y, lr=0.5, epochs=2, seed=rnd) for s in shards]
        glob = aggregate.combine(strategy, locals_, [len(s.y) for s in shards])
    assert model.evaluate(glob, test.x, test.y)["accuracy"] >= floor


def test_the_packaged_example_is_the_repo_s() -> None:
    from edgeplane import safeyaml
    from edgeplane.fl.spec import ExperimentSpec

    repo = Path(__file__).parents[2] / "examples" / "fl" / "digits.yaml"
    packaged = Path(__file__).parents[2] / "src" / "edgeplane" / "examples" / "fl" / "digits.yaml"
    assert repo.read_text() == packaged.read_text()
    ExperimentSpec.model_validate(safeyaml.load(repo.read_text()))
