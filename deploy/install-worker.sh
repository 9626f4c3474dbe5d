#!/usr/bin/env bash
# One command to make this machine an edgeplane worker (Debian/Ubuntu-like, systemd):
#
#   sudo deploy/install-worker.sh --manager mqtts://HOST:PORT --ca ca.pem --join TOKEN
#
# It creates the system user `edgeplane`, installs edgeplane into a venv in /opt/edgeplane,
# copies the CA to /etc/edgeplane/ca.pem, writes /etc/edgeplane/worker.env (0600, the join
# token in it, never on a command line the unit runs) and the systemd unit, then enables
# and starts it. --dry-run prints all of it and changes nothing. docs/deploy.md has more.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install-worker.sh --manager mqtt[s]://HOST:PORT --join TOKEN [options]

  --manager URL        the cluster's broker (`edgeplane manager` prints it; a clustered
                       broker's nodes comma-separated)
  --join TOKEN         join token from POST /api/v1/join-tokens (or $EDGEPLANE_JOIN_TOKEN)
  --ca FILE            CA that signed the broker's certificate (needed for mqtts://)
  --cluster-id ID      cluster id (default: local)
  --label K=V          worker label, repeatable
  --allow-host         let the worker run host commands (as user edgeplane, sandboxed)
  --containers         container tasks: runs the worker as root (drop-in containers.conf)
  --task-user          host tasks as the user edgeplane-task, not as the worker's own user:
                       runs the worker as root with only the capabilities to switch
                       (drop-in host-user.conf); implied for host tasks by --containers
  --package SPEC       what pip installs (default: this checkout, else `edgeplane`)
  --python PATH        python3 that makes the venv (default: python3)
  --dry-run            print what would be done; change nothing
EOF
}

die() { echo "install-worker.sh: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MANAGER="" JOIN="${EDGEPLANE_JOIN_TOKEN:-}" CA="" CLUSTER="local" ALLOW_HOST=false
CONTAINERS=false TASK_USER=false PACKAGE="" PYTHON=python3 DRY=false
LABELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --manager) MANAGER="${2:-}"; shift 2 ;;
    --join) JOIN="${2:-}"; shift 2 ;;
    --ca) CA="${2:-}"; shift 2 ;;
    --cluster-id) CLUSTER="${2:-}"; shift 2 ;;
    --label) LABELS+=("${2:-}"); shift 2 ;;
    --allow-host) ALLOW_HOST=true; shift ;;
    --containers) CONTAINERS=true; shift ;;
    --task-user) TASK_USER=true; shift ;;
    --package) PACKAGE="${2:-}"; shift 2 ;;
    --python) PYTHON="${2:-}"; shift 2 ;;
    --dry-run) DRY=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

# Every value ends up in an environment file: bounded to characters that cannot break it.
# (a clustered broker: its nodes comma-separated, docs/brokers.md)
NODE='mqtts?://[A-Za-z0-9._:-]+(:[0-9]+)?'
[[ "$MANAGER" =~ ^${NODE}(,${NODE})*$ ]] \
  || die "--manager must be mqtt://HOST:PORT or mqtts://HOST:PORT (or several, comma-separated), got '${MANAGER}'"
[[ "$JOIN" =~ ^[A-Za-z0-9_.-]{1,256}$ ]] || die "--join: give the join token (letters, digits, _ . -)"
# no '.': the cluster id is a topic level, and NATS refuses '.' in one
[[ "$CLUSTER" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$ ]] || die "--cluster-id: 1-63 letters, digits, _ -"
for label in ${LABELS[@]+"${LABELS[@]}"}; do
  [[ "$label" =~ ^[A-Za-z0-9_./-]{1,63}=[A-Za-z0-9_.:/-]{0,63}$ ]] || die "--label must be K=V, got '$label'"
done
if [[ "$MANAGER" == *mqtts://* ]] && [ -z "$CA" ]; then
  die "--ca: an mqtts:// broker is verified against a CA file (the manager's certs/ca.pem)"
fi
if [ -n "$CA" ]; then
  [ -r "$CA" ] || die "--ca: cannot read $CA"
  grep -q "BEGIN CERTIFICATE" "$CA" || die "--ca: $CA holds no PEM certificate"
fi
if [ -z "$PACKAGE" ]; then
  if [ -f "$HERE/../pyproject.toml" ]; then PACKAGE="$(cd "$HERE/.." && pwd)"; else PACKAGE=edgeplane; fi
fi
if [ "$DRY" = false ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo), or with --dry-run to see what it would do"
fi

ARGS=""
for label in ${LABELS[@]+"${LABELS[@]}"}; do ARGS="$ARGS --label $label"; done
ENV_FILE="# /etc/edgeplane/worker.env, written by install-worker.sh (see deploy/systemd/worker.env)
EDGEPLANE_BROKER=$MANAGER
EDGEPLANE_CLUSTER_ID=$CLUSTER
EDGEPLANE_JOIN_TOKEN=$JOIN
EDGEPLANE_ALLOW_HOST=$ALLOW_HOST
EDGEPLANE_CONTAINERS=$CONTAINERS
WORKER_ARGS=${ARGS# }"
if [ -n "$CA" ]; then ENV_FILE="$ENV_FILE
EDGEPLANE_CA=/etc/edgeplane/ca.pem"; fi

run() {  # a command, printed in --dry-run
  if [ "$DRY" = true ]; then printf '+ %s\n' "$*"; else "$@"; fi
}
write() {  # write FILE MODE (content on stdin); --dry-run prints it, the token hidden
  local file="$1" mode="$2" content
  content="$(cat)"
  if [ "$DRY" = true ]; then
    printf '+ write %s (mode %s):\n' "$file" "$mode"
    printf '%s\n' "$content" | sed -e 's/^EDGEPLANE_JOIN_TOKEN=.*/EDGEPLANE_JOIN_TOKEN=<hidden>/' -e 's/^/    /'
  else
    install -d -m 0755 "$(dirname "$file")"
    (umask 077; printf '%s\n' "$content" > "$file.tmp")
    chmod "$mode" "$file.tmp"
    mv "$file.tmp" "$file"
  fi
}

if ! getent passwd edgeplane >/dev/null 2>&1; then
  run useradd --system --home-dir /var/lib/edgeplane --no-create-home \
    --shell /usr/sbin/nologin edgeplane
fi
run "$PYTHON" -m venv /opt/edgeplane
run /opt/edgeplane/bin/pip install --quiet "$PACKAGE"
# A root worker (either drop-in) runs host tasks as edgeplane-task when that user exists
if { [ "$TASK_USER" = true ] || [ "$CONTAINERS" = true ]; } \
    && ! getent passwd edgeplane-task >/dev/null 2>&1; then
  run useradd --system --no-create-home --shell /usr/sbin/nologin edgeplane-task
fi
if [ -n "$CA" ]; then run install -D -m 0644 "$CA" /etc/edgeplane/ca.pem; fi
printf '%s\n' "$ENV_FILE" | write /etc/edgeplane/worker.env 0600
write /etc/systemd/system/edgeplane-worker.service 0644 < "$HERE/systemd/edgeplane-worker.service"
DROP_INS=/etc/systemd/system/edgeplane-worker.service.d
if [ "$CONTAINERS" = true ]; then
  write "$DROP_INS/containers.conf" 0644 < "$HERE/systemd/edgeplane-worker.service.d/containers.conf"
elif [ "$TASK_USER" = true ]; then
  write "$DROP_INS/host-user.conf" 0644 < "$HERE/systemd/edgeplane-worker.service.d/host-user.conf"
fi
run systemctl daemon-reload
run systemctl enable --now edgeplane-worker.service
if [ "$DRY" = true ]; then
  echo "dry run: nothing was changed"
else
  echo "edgeplane worker installed: systemctl status edgeplane-worker; journalctl -u edgeplane-worker"
fi
