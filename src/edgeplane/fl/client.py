"""The digits example's client: ``python -m edgeplane.fl.client``, run as a host task.

It reads the env the coordinator gives each training task (docs/fl.md): fetches the
round's global model (``MODEL_URI``) and its shard (``DATA_STORE_URL``), trains the
softmax model with ``HYPERPARAMS``, and posts its update (``f32`` full weights, with
``num_samples`` and its local metrics) to ``COORDINATOR_URL``, with the task's own
credential (``FL_TOKEN``), which lets it do only that.
"""

from __future__ import annotations

import io
import os
import sys

import httpx
import numpy as np
import orjson

from edgeplane.fl import updates
from edgeplane.fl.model import evaluate, train


def main() -> int:
    env = os.environ
    try:
        hp = orjson.loads(env.get("HYPERPARAMS", "{}"))
        headers = {"Authorization": f"Bearer {env['FL_TOKEN']}"}
        model_uri, data_url, post_url = (
            env["MODEL_URI"],
            env["DATA_STORE_URL"],
            env["COORDINATOR_URL"],
        )
    except (KeyError, orjson.JSONDecodeError) as exc:
        print(
            f"edgeplane.fl.client: the task's FL environment is incomplete: {exc}", file=sys.stderr
        )
        return 2
    with httpx.Client(headers=headers, timeout=60, verify=env.get("FL_CA_FILE") or True) as http:
        got = http.get(model_uri)
        got.raise_for_status()
        glob = updates.decode(got.content).arrays
        got = http.get(data_url)
        got.raise_for_status()
        with np.load(io.BytesIO(got.content), allow_pickle=False) as shard:
            x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
        local = train(
            glob,
            x,
            y,
            lr=float(hp.get("lr", 0.1)),
            epochs=int(hp.get("epochs", 1)),
            batch=int(hp.get("batch", 32)),
            mu=float(hp.get("mu", 0.0)),
            seed=int(env.get("ROUND_ID", "0") or 0),
        )
        body = updates.encode_raw(
            local, format="f32", num_samples=len(y), metrics=evaluate(local, x, y)
        )
        sent = http.post(post_url, content=body, headers={"Content-Type": updates.RAW})
        if sent.status_code >= 400:
            print(f"edgeplane.fl.client: update refused: {sent.text}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
