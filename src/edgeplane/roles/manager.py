"""``edgeplane manager``: the control plane of one cluster. Its workers dial in to its
broker (``--broker``, else an embedded one); with ``--root`` it registers with a root."""

from __future__ import annotations

import contextlib

from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import ControlPlane, broker_auth, start_broker
from edgeplane.roles.lock import hold_data_dir
from edgeplane.roles.signals import wait_for_stop


async def run_manager(settings: Settings) -> None:
    setup_logs(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with hold_data_dir(settings.data_dir, "manager"):
        await _run_manager(settings)


async def _run_manager(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        auth = broker_auth(settings)
        broker_url = await start_broker(stack, settings, auth)
        control = ControlPlane(settings, broker_url, auth=auth)
        await control.start()
        stack.push_async_callback(control.stop)
        root = f", registered with root {settings.root}" if settings.root else ""
        # an mqtts:// broker: workers verify it with the CA this manager trusts
        ca = f" --ca {control.settings.ca}" if broker_url.startswith("mqtts:") else ""
        print(
            f"manager of cluster {settings.cluster_id} serving {control.url}\n"
            f"  workers:  edgeplane worker --cluster-id {settings.cluster_id} "
            f"--manager {broker_url}{ca}"
            + (" --join TOKEN (POST /api/v1/join-tokens)" if auth is not None else "")
            + root,
            flush=True,
        )
        refused = [] if control.uplink is None else [control.uplink.refused]
        await wait_for_stop(*refused)
        if control.uplink is not None and control.uplink.refused.is_set():
            raise Invalid(control.uplink.refusal)
