"""Flower's side of ``bench.fl``: its server and clients, run with the Flower venv's python.

``bench.fl`` starts these as processes (Flower is installed in a venv of its own, never
beside edgeplane: see ``bench.fl.ensure_flower``). They train edgeplane's own model code
(``edgeplane.fl.model``) on edgeplane's own shards (``edgeplane.fl.datastore``), so both
systems run the same model on the same data; only the coordinator and transport differ.

    python -m bench.fl_flower server --port P --clients N --rounds R --events FILE [...]
    python -m bench.fl_flower client --port P --index I --clients N [...]
    python -m bench.fl_flower noise --port P --count N --params M

``server`` is ``flwr.server.start_server`` with a FedAvg strategy whose hooks write, per
round, when the instructions were handed out (``configure_fit`` returned), when every
update was in (``aggregate_fit`` called) and when the new model was scored
(``evaluate`` returned): the same three moments edgeplane stores per round
(``opened_at``, ``last_update_at``, ``closed_at``). Then it waits for its stdin to close,
so ``bench.fl`` can read its peak RSS and CPU from outside, as it reads edgeplane's.
``client`` is one NumPyClient process on shard ``--index``; ``noise`` is ``--count``
simulated clients (threads of one process, each its own gRPC connection) that send the
global model back with noise added, for the memory run with a large model.

Flower's ``start_server``/``start_client`` are deprecated since 1.13 in favour of the
SuperLink/SuperNode deployment, but still shipped and working: they are the real
server and clients in separate processes, the shape closest to edgeplane's manager and
workers, with no extra process between the strategy and the clients.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeplane.fl import datastore, model

#: What edgeplane's digits example passes as HYPERPARAMS (examples/fl/digits.yaml).
HYPERPARAMS = ("lr", "epochs", "batch", "mu")


def big_model(params: int) -> list[np.ndarray]:
    """The digits model plus one array of ``params - 650`` zeros: what the coordinator
    moves, checks and averages grows with it. Not scored (edgeplane's coordinator scores
    only the digits model itself)."""
    base = model.initial()
    extra = max(params - base["w"].size - base["b"].size, 0)
    return [base["w"], base["b"], np.zeros(extra, np.float32)]


def server(args: argparse.Namespace) -> None:
    import flwr
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    events = open(args.events, "a", buffering=1)  # noqa: SIM115 (open for the process)

    def mark(event: str, rnd: int, **more: Any) -> None:
        events.write(json.dumps({"event": event, "round": rnd, "t": time.time(), **more}) + "\n")

    test = datastore.test_set(args.seed)

    def score(rnd: int, arrays: list[np.ndarray], _config: dict[str, Any]) -> Any:
        if args.params:
            return 0.0, {}  # as edgeplane does with a model that is not the digits one
        metrics = model.evaluate({"w": arrays[0], "b": arrays[1]}, test.x, test.y)
        return metrics["loss"], metrics

    hp = json.loads(args.hyperparams)

    def fit_config(rnd: int) -> dict[str, Any]:
        return {"round": rnd, **{k: v for k, v in hp.items() if k in HYPERPARAMS}}

    class Timed(FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            out = super().configure_fit(server_round, parameters, client_manager)
            mark("opened", server_round, clients=len(out))
            return out

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            mark("last_update", server_round, updates=len(results), failures=len(failures))
            return super().aggregate_fit(server_round, results, failures)

        def evaluate(self, server_round: int, parameters: Any) -> Any:
            out = super().evaluate(server_round, parameters)
            if server_round > 0 and out is not None:
                mark("closed", server_round, **out[1])
            return out

    initial = big_model(args.params) if args.params else [model.initial()[k] for k in ("w", "b")]
    strategy = Timed(
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # scored centrally on the held-out set, as edgeplane does
        min_fit_clients=args.clients,
        min_evaluate_clients=0,
        min_available_clients=args.clients,
        evaluate_fn=score,
        on_fit_config_fn=fit_config,
        initial_parameters=ndarrays_to_parameters(initial),
        fit_metrics_aggregation_fn=_mean_metrics,
    )
    mark("ready", 0)
    flwr.server.start_server(
        server_address=f"127.0.0.1:{args.port}",
        config=flwr.server.ServerConfig(num_rounds=args.rounds, round_timeout=args.timeout),
        strategy=strategy,
    )
    mark("done", args.rounds)
    sys.stdin.read()  # held until bench.fl has read this process from outside


def _mean_metrics(pairs: Sequence[tuple[int, dict[str, float]]]) -> dict[str, float]:
    total = sum(n for n, _ in pairs) or 1
    keys = {k for _, m in pairs for k in m}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in pairs) / total for k in keys}


def client(args: argparse.Namespace) -> None:
    import flwr

    part = datastore.shard(args.index, args.clients, split=args.split, seed=args.seed)
    x, y = part.x.astype(np.float32), part.y.astype(np.int64)

    class Digits(flwr.client.NumPyClient):  # type: ignore[misc]
        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            glob = {"w": parameters[0], "b": parameters[1]}
            # what edgeplane.fl.client does with the same HYPERPARAMS and ROUND_ID
            local = model.train(
                glob,
                x,
                y,
                lr=float(config.get("lr", 0.1)),
                epochs=int(config.get("epochs", 1)),
                batch=int(config.get("batch", 32)),
                mu=float(config.get("mu", 0.0)),
                seed=int(config["round"]),
            )
            return [local["w"], local["b"]], len(y), model.evaluate(local, x, y)

    flwr.client.start_client(server_address=f"127.0.0.1:{args.port}", client=Digits().to_client())


class Noise:
    """A simulated client: the global model back with a little noise, ``samples`` weight."""

    def __init__(self, index: int, samples: int) -> None:
        self.rng = np.random.default_rng(index)
        self.samples = samples

    def fit(self, parameters: list[np.ndarray], _config: dict[str, Any]) -> Any:
        noisy = [
            (a + self.rng.normal(0, 0.01, a.shape).astype(np.float32)).astype(np.float32)
            for a in parameters
        ]
        return noisy, self.samples, {}


def noise(args: argparse.Namespace) -> None:
    import flwr

    class NoiseClient(flwr.client.NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.inner = Noise(index, args.samples)

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return self.inner.fit(parameters, config)

    def one(index: int) -> None:
        flwr.client.start_client(
            server_address=f"127.0.0.1:{args.port}", client=NoiseClient(index).to_client()
        )

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(args.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fl_flower")
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--clients", type=int, required=True)
    s.add_argument("--rounds", type=int, required=True)
    s.add_argument("--events", required=True)
    s.add_argument("--params", type=int, default=0, help="0: the digits model")
    s.add_argument("--hyperparams", default="{}")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--timeout", type=float, default=600.0)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--index", type=int, required=True)
    c.add_argument("--clients", type=int, required=True)
    c.add_argument("--split", default="iid")
    c.add_argument("--seed", type=int, default=0)
    n = sub.add_parser("noise")
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--count", type=int, required=True)
    n.add_argument("--samples", type=int, default=100)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    {"server": server, "client": client, "noise": noise}[args.role](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
