"""A cluster's root link through a Mosquitto bridge (docs/brokers.md, "Mosquitto
bridges between sites").

A site whose manager should not hold a connection to the root's broker lets its own
broker (the cluster's) carry the cluster's leaves of the root's topics over one bridge
connection that logs in as the cluster. The join handshake cannot cross a bridge (it
needs an anonymous client whose id is a fresh nonce), so the cluster joins once directly
(``--join``), and :func:`export` turns the identity it keeps into the bridge's config:
:data:`TEMPLATE`, which is ``deploy/brokers/mosquitto-bridge/bridge.conf`` word for word
(a test holds them equal). The manager then runs with ``--root-via-bridge``: its uplink
talks to its own broker, and checks the root's commands with the kept key as before.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.security import joining
from edgeplane.transport import parse_broker_url

#: where Debian keeps the system's CA certificates (an mqtts:// root without --ca)
SYSTEM_CA_PATH = "/etc/ssl/certs"

TEMPLATE = """\
# A Mosquitto bridge from a site's broker (the cluster's) to its root's broker: one
# connection, logged in as the cluster, that carries the cluster's leaves of the root's
# topics and nothing else (docs/brokers.md, "Mosquitto bridges between sites").
#
# `edgeplane manager --cluster-id ID --root mqtt[s]://ROOT:PORT --join TOKEN
# --print-bridge-config` fills it in with the identity the cluster joined with; put the
# result in the site broker's include_dir (e.g. /etc/mosquitto/conf.d/), mode 0600: it
# holds the cluster's password at the root. Then start the manager with
# --broker SITE_BROKER --root-via-bridge.
#
#   ${DOMAIN}        the edgeplane domain (--domain)
#   ${CLUSTER_ID}    the cluster's id, also its username at the root
#   ${PASSWORD}      the cluster's password at the root (from the join)
#   ${ROOT_ADDRESS}  host:port of the root's broker
#   ${ROOT_TLS}      bridge_cafile/bridge_capath for an mqtts:// root, else empty
connection edgeplane-${DOMAIN}-${CLUSTER_ID}
address ${ROOT_ADDRESS}
${ROOT_TLS}
bridge_protocol_version mqttv311
remote_clientid edgeplane-bridge-${DOMAIN}-${CLUSTER_ID}
local_clientid edgeplane-bridge-local-${DOMAIN}-${CLUSTER_ID}
remote_username ${CLUSTER_ID}
remote_password ${PASSWORD}
# A persistent session at the root: commands sent while the bridge is down wait there.
cleansession false
# The root's ACL lets the cluster write its own leaves only: no state notifications.
notifications false
start_type automatic
restart_timeout 1 10
keepalive_interval 10
# What the root's ACL lets the cluster read (in) and write (out), exactly.
topic ${DOMAIN}/clusters/${CLUSTER_ID}/cmd in 1
topic ${DOMAIN}/clusters/${CLUSTER_ID}/welcome in 1
topic ${DOMAIN}/clusters/${CLUSTER_ID}/hello out 1
topic ${DOMAIN}/clusters/${CLUSTER_ID}/alive out 1
topic ${DOMAIN}/clusters/${CLUSTER_ID}/events out 1
topic ${DOMAIN}/clusters/${CLUSTER_ID}/aggregate out 1
# usage samples: QoS 0 as everywhere else (a lost batch is not worth a PUBACK)
topic ${DOMAIN}/clusters/${CLUSTER_ID}/metrics out 0
"""


def render(identity: joining.Identity, root_url: str, domain: str, ca: Path | None) -> str:
    """:data:`TEMPLATE` filled in for ``identity`` at the root's broker ``root_url``."""
    parsed = parse_broker_url(root_url)
    tls = ""
    if parsed.tls:
        tls = f"bridge_cafile {ca}" if ca is not None else f"bridge_capath {SYSTEM_CA_PATH}"
    # the body keeps only the config's lines: its header explains the placeholders
    body = TEMPLATE[TEMPLATE.index("connection ") :]
    return (
        f"# edgeplane bridge of cluster {identity.member_id} to its root "
        f"(docs/brokers.md). Holds its password: keep it 0600.\n"
        + Template(body).substitute(
            DOMAIN=domain,
            CLUSTER_ID=identity.member_id,
            PASSWORD=identity.password,
            ROOT_ADDRESS=f"{parsed.host}:{parsed.port}",
            ROOT_TLS=tls,
        )
    )


async def export(settings: Settings) -> str:
    """The bridge config of ``settings``' cluster: its kept identity at the root, or one
    bought now with ``settings.join_token`` (and kept). ``Invalid`` without either."""
    from edgeplane.manager.uplink import root_identity

    if not settings.root:
        raise Invalid("the bridge's config names the root's broker: give --root", field="root")
    identity = await root_identity(settings, settings.root)
    if identity is None:
        raise Invalid(
            "no identity at the root to bridge with: give --join TOKEN (the root's "
            "POST /api/v1/join-tokens) once",
            field="join",
        )
    return render(identity, settings.root, settings.domain, settings.ca)
