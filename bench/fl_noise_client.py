"""The client of ``bench.fl``'s large-model run on edgeplane, as a host task.

It reads the env the coordinator gives every training task (docs/fl.md), fetches the
round's global model, adds a little noise and posts it as its update (``f32``,
``num_samples`` from ``FL_BENCH_SAMPLES``): what ``bench.fl_flower noise`` does for
Flower. No training: the run measures what the coordinator holds and does with 50
updates of a 1M-parameter model, not the clients. A task per round (``MODEL_URI``,
``COORDINATOR_URL``), or, with ``client_tasks: persistent`` (``FL_ASSIGNMENT_URL``), one
long-lived task that does so each round it is given (``edgeplane.fl.client.Session``).

    python -m bench.fl_noise_client     (as the workload of an experiment)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import httpx
import numpy as np

from edgeplane.fl import updates
from edgeplane.fl.client import Session, Stop, Work


def noisy(model: bytes, samples: int) -> bytes:
    glob = updates.decode(model).arrays
    rng = np.random.default_rng()
    arrays = {
        name: (a + rng.normal(0, 0.01, a.shape).astype(np.float32)).astype(np.float32)
        for name, a in glob.items()
    }
    return updates.encode_raw(arrays, format="f32", num_samples=samples)


class NoiseSession(Session):
    """A long-lived client whose "training" is :func:`noisy` (no shard)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self.samples = int(env.get("FL_BENCH_SAMPLES", "100"))

    def train(self, work: Work) -> bytes:
        got = self.http.get(work.model_uri)
        got.raise_for_status()
        return noisy(got.content, self.samples)


def main() -> int:
    env = os.environ
    if env.get("FL_ASSIGNMENT_URL"):
        try:
            return NoiseSession(env).serve()
        except Stop as stop:
            print(f"bench.fl_noise_client: {stop}", file=sys.stderr)
            return stop.code
    headers = {"Authorization": f"Bearer {env['FL_TOKEN']}"}
    with httpx.Client(headers=headers, timeout=120) as http:
        got = http.get(env["MODEL_URI"])
        got.raise_for_status()
        body = noisy(got.content, int(env.get("FL_BENCH_SAMPLES", "100")))
        sent = http.post(
            env["COORDINATOR_URL"], content=body, headers={"Content-Type": updates.RAW}
        )
        if sent.status_code >= 400:
            print(f"bench.fl_noise_client: update refused: {sent.text}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
