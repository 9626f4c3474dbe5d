"""``edgeplane proxy``: an artifact proxy on its own, for a cluster whose manager's
store it can read (``up`` and ``manager`` run one inside themselves; see
docs/artifacts.md). It serves the modules stored there to the cluster's workers."""

from __future__ import annotations

from edgeplane.artifacts import registry_config
from edgeplane.artifacts.blobs import BlobStore
from edgeplane.artifacts.proxy import Proxy, StoreSource
from edgeplane.artifacts.registry_source import RegistrySource
from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.logs import setup as setup_logs
from edgeplane.protocol import Topics
from edgeplane.roles.signals import wait_for_stop
from edgeplane.store import open_store
from edgeplane.tls import trusted_ca


async def run_proxy(settings: Settings) -> None:
    setup_logs(settings.log_level)
    if not settings.broker:
        raise Invalid("give the cluster's broker (--broker mqtt[s]://…)", field="broker")
    store = open_store(settings.store_url)
    await store.open()
    try:
        # credentials, if the broker wants them, come in the URL (the proxy's own on a
        # broker edgeplane secures: docs/broker-security.md)
        proxy = Proxy(
            StoreSource(store),
            settings.broker,
            Topics(settings.domain, settings.cluster_id),
            ca=trusted_ca(settings.ca, settings.data_dir),
            max_bytes=settings.artifact_max_mb * 1024 * 1024,
            registries=RegistrySource(
                registry_config.load(
                    settings.registries or registry_config.default_file(settings.data_dir)
                )
            ),
            disk=BlobStore(
                settings.data_dir / "proxy" / "blobs", 2 * settings.artifact_max_mb * 1024 * 1024
            ),
        )
        await proxy.start()
        print(
            f"artifact proxy of cluster {settings.cluster_id} serving on {proxy.link.broker}",
            flush=True,
        )
        try:
            await wait_for_stop()
        finally:
            await proxy.stop()
    finally:
        await store.close()
