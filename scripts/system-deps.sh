#!/usr/bin/env bash
# System packages edgeplane's tests need: the Mosquitto broker (spawned by tests and by
# `edgeplane up`), runc and a static busybox (container tasks; the test images are built
# from busybox offline), systemd-analyze and kubectl (the deployment kit's tests verify
# deploy/systemd and render deploy/kubernetes with them), docker-registry, skopeo and
# htpasswd (apache2-utils) for the OCI registry tests; iproute2 (ip, tc), nftables and
# e2fsprogs (mkfs.ext4; mount/losetup come with util-linux/mount) for chute networking and
# resource policies; nats-server (the broker matrix runs a 3-node NATS cluster:
# tests/brokers) and RabbitMQ (the matrix runs private nodes of its MQTT plugin;
# the package's own service is not used); chromium for the dashboard's browser tests
# (driven by playwright, tests/browser). Installs only what is missing.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v busybox >/dev/null 2>&1 || [ -x /usr/bin/busybox ] || missing+=(busybox-static)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v tc >/dev/null 2>&1 || [ -x /usr/sbin/tc ] || [ -x /sbin/tc ] || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)  # the proxy test's netns workers
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || [ -x /usr/sbin/losetup ] || missing+=(mount)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
