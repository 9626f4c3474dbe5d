#!/usr/bin/env bash
# Make sure the shared services the integration tests use are up:
# Mosquitto on 127.0.0.1:1883 and PostgreSQL on 127.0.0.1:5432 (database `test`).
set -uo pipefail
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening 1883; then
  echo "starting mosquitto on 1883"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf || /usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
if ! listening 5432; then
  echo "starting postgresql on 5432"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
for _ in $(seq 1 50); do listening 1883 && listening 5432 && exit 0; sleep 0.2; done
echo "services did not come up (mosquitto 1883, postgresql 5432)" >&2
exit 1
