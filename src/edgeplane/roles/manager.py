"""``edgeplane manager``: the control plane of one cluster. Its workers dial in to its
broker (``--broker``, else an embedded one); with ``--root`` it registers with a root."""

from __future__ import annotations

import contextlib

from edgeplane.config import Settings
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import ControlPlane, broker_auth, start_broker
from edgeplane.roles.signals import wait_for_stop


async def run_manager(settings: Settings) -> None:
    setup_logs(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        auth = broker_auth(settings)
        broker_url = await start_broker(stack, settings, auth)
        control = ControlPlane(settings, broker_url, auth=auth)
        await control.start()
        stack.push_async_callback(control.stop)
        root = f", registered with root {settings.root}" if settings.root else ""
        print(
            f"manager of cluster {settings.cluster_id} serving {control.url}\n"
            f"  workers:  edgeplane worker --cluster-id {settings.cluster_id} "
            f"--manager {broker_url}"
            + (" --join TOKEN (POST /api/v1/join-tokens)" if auth is not None else "")
            + root,
            flush=True,
        )
        await wait_for_stop()
