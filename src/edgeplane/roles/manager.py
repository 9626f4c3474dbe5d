"""``edgeplane manager``: the control plane of one cluster. Its workers dial in to its
broker (``--broker``, else an embedded one); with ``--root`` it registers with a root.

Several managers of one cluster on one store (``--store postgresql://…``, a shared
``--broker``) elect one leader; the others stand by (``roles/control.py``)."""

from __future__ import annotations

import contextlib

from edgeplane.config import Settings
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import ControlPlane, broker_auth, run_leading, start_broker
from edgeplane.roles.lock import hold_data_dir
from edgeplane.transport import without_credentials


async def run_manager(settings: Settings) -> None:
    setup_logs(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with hold_data_dir(settings.data_dir, "manager"):
        await _run_manager(settings)


async def _run_manager(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        auth = broker_auth(settings)
        broker_url = await start_broker(stack, settings, auth)

        def leading(control: ControlPlane) -> None:
            root = (
                ", registered with its root through the bridge on its broker"
                if settings.root_via_bridge
                else f", registered with root {without_credentials(settings.root)}"
                if settings.root
                else ""
            )
            # an mqtts:// broker: workers verify it with the CA this manager trusts
            ca = f" --ca {control.settings.ca}" if broker_url.startswith("mqtts:") else ""
            print(
                f"manager of cluster {settings.cluster_id} serving {control.url}\n"
                f"  workers:  edgeplane worker --cluster-id {settings.cluster_id} "
                f"--manager {without_credentials(broker_url)}{ca}"
                + (" --join TOKEN (POST /api/v1/join-tokens)" if auth is not None else "")
                + root,
                flush=True,
            )

        await run_leading(lambda: ControlPlane(settings, broker_url, auth=auth), leading)
