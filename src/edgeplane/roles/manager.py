"""``edgeplane manager``: the control plane of one cluster against an existing broker."""

from __future__ import annotations

from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import ControlPlane
from edgeplane.roles.signals import wait_for_stop


async def run_manager(settings: Settings) -> None:
    setup_logs(settings.log_level)
    if not settings.broker:
        raise Invalid("edgeplane manager needs --broker mqtt://HOST:PORT", field="broker")
    control = ControlPlane(settings, settings.broker)
    await control.start()
    print(f"manager of cluster {settings.cluster_id} serving {control.url}", flush=True)
    try:
        await wait_for_stop()
    finally:
        await control.stop()
