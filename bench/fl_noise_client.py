"""The client of ``bench.fl``'s large-model run on edgeplane: a host task per round.

It reads the env the coordinator gives every training task (docs/fl.md), fetches the
round's global model (``MODEL_URI``), adds a little noise and posts it as its update
(``f32``, ``num_samples`` from ``FL_BENCH_SAMPLES``): what ``bench.fl_flower noise`` does
for Flower. No training: the run measures what the coordinator holds and does with 50
updates of a 1M-parameter model, not the clients.

    python -m bench.fl_noise_client     (as the workload of an experiment)
"""

from __future__ import annotations

import os
import sys

import httpx
import numpy as np

from edgeplane.fl import updates


def main() -> int:
    env = os.environ
    headers = {"Authorization": f"Bearer {env['FL_TOKEN']}"}
    with httpx.Client(headers=headers, timeout=120) as http:
        got = http.get(env["MODEL_URI"])
        got.raise_for_status()
        glob = updates.decode(got.content).arrays
        rng = np.random.default_rng()
        noisy = {
            name: (a + rng.normal(0, 0.01, a.shape).astype(np.float32)).astype(np.float32)
            for name, a in glob.items()
        }
        body = updates.encode_raw(
            noisy, format="f32", num_samples=int(env.get("FL_BENCH_SAMPLES", "100"))
        )
        sent = http.post(
            env["COORDINATOR_URL"], content=body, headers={"Content-Type": updates.RAW}
        )
        if sent.status_code >= 400:
            print(f"bench.fl_noise_client: update refused: {sent.text}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
