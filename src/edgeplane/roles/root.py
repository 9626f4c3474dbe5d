"""``edgeplane root``: the top of the hierarchy. REST API, store, applications and the root
scheduler; clusters dial out to its broker (embedded unless ``--broker`` names one).

Several root processes on one store elect one leader; the others stand by
(``roles/control.py``)."""

from __future__ import annotations

import contextlib

from edgeplane.config import Settings
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.control import ENDPOINT_FILE, ControlPlane, run_leading, start_broker


async def run_root(settings: Settings) -> None:
    setup_logs(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        broker_url = await start_broker(stack, settings)

        def leading(control: ControlPlane) -> None:
            (settings.data_dir / ENDPOINT_FILE).write_text(control.url + "\n")
            # an mqtts:// broker: managers verify it with the CA this root trusts
            ca = f" --ca {control.settings.ca}" if broker_url.startswith("mqtts:") else ""
            print(
                f"edgeplane root is up\n"
                f"  API:      {control.url}/api/v1\n"
                f"  dashboard: {control.url}/dashboard\n"
                f"  token:    {control.token_file or '$EDGEPLANE_ADMIN_TOKEN'}\n"
                f"  clusters: edgeplane manager --cluster-id NAME --root {broker_url}{ca}\n",
                flush=True,
            )

        await run_leading(lambda: ControlPlane(settings, broker_url, root=True), leading)
