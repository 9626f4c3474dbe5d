"""``edgeplane up``: broker, store, control plane and local workers in one process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edgeplane.config import Settings
from edgeplane.examples import write_examples
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import ControlPlane
from edgeplane.roles.signals import wait_for_stop
from edgeplane.roles.worker import build_worker
from edgeplane.transport import EmbeddedBroker
from edgeplane.worker import WorkerAgent

ENDPOINT_FILE = "endpoint"


@dataclass
class Stack:
    control: ControlPlane
    broker_url: str
    workers: list[WorkerAgent] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Everything ``up`` runs, torn down in reverse order on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        broker_url = settings.broker
        if not broker_url:
            broker = EmbeddedBroker(settings.data_dir / "broker")
            broker_url = await broker.start()
            stack.push_async_callback(broker.stop)
        control = ControlPlane(settings, broker_url)
        await control.start()
        stack.push_async_callback(control.stop)
        result = Stack(control=control, broker_url=broker_url)
        for n in range(1, settings.workers + 1):
            worker_id = f"{settings.cluster_id}-{n}"
            agent = build_worker(
                settings,
                broker_url=broker_url,
                worker_id=worker_id,
                data_dir=settings.data_dir / "workers" / worker_id,
            )
            await agent.start()
            stack.push_async_callback(agent.stop)
            result.workers.append(agent)
        (settings.data_dir / ENDPOINT_FILE).write_text(control.url + "\n")
        yield result


async def run_up(settings: Settings) -> None:
    setup_logs(settings.log_level)
    async with running_stack(settings) as stack:
        examples = write_examples(settings.data_dir / "examples")
        token = stack.control.token_file or "$EDGEPLANE_ADMIN_TOKEN"
        print(
            f"edgeplane is up\n"
            f"  API:      {stack.control.url}/api/v1   (docs: {stack.control.url}/docs)\n"
            f"  token:    {token}\n"
            f"  broker:   {stack.broker_url}\n"
            f"  workers:  {', '.join(w.id for w in stack.workers) or 'none'}\n"
            f"first task (in another terminal):\n"
            f"  edgeplane task run {examples['add.wasm']} add 2 3\n",
            flush=True,
        )
        await wait_for_stop()
