"""``edgeplane root``: the top of the hierarchy. REST API, store, applications and the root
scheduler; clusters dial out to its broker (embedded unless ``--broker`` names one), where
each has its own identity (docs/broker-security.md).

Several root processes on one store elect one leader; the others stand by
(``roles/control.py``)."""

from __future__ import annotations

import contextlib

from edgeplane.config import Settings
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import (
    ENDPOINT_FILE,
    ControlPlane,
    broker_auth,
    run_leading,
    start_broker,
)
from edgeplane.roles.lock import hold_data_dir
from edgeplane.transport import without_credentials


async def run_root(settings: Settings) -> None:
    setup_logs(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with hold_data_dir(settings.data_dir, "root"):
        await _run_root(settings)


async def _run_root(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        auth = broker_auth(settings, root=True)
        broker_url = await start_broker(stack, settings, auth)

        def leading(control: ControlPlane) -> None:
            (settings.data_dir / ENDPOINT_FILE).write_text(control.url + "\n")
            # an mqtts:// broker: managers verify it with the CA this root trusts
            ca = f" --ca {control.settings.ca}" if broker_url.startswith("mqtts:") else ""
            print(
                f"edgeplane root is up\n"
                f"  API:      {control.url}/api/v1\n"
                f"  dashboard: {control.url}/dashboard\n"
                f"  token:    {control.token_file or '$EDGEPLANE_ADMIN_TOKEN'}\n"
                f"  clusters: edgeplane manager --cluster-id NAME "
                f"--root {without_credentials(broker_url)}{ca}"
                + (" --join TOKEN (POST /api/v1/join-tokens)" if auth is not None else "")
                + "\n",
                flush=True,
            )

        await run_leading(lambda: ControlPlane(settings, broker_url, root=True, auth=auth), leading)
