#!/usr/bin/env bash
# Run every test of the workspace, installing what the tests talk to first (they use real
# peers: nginx, coturn, PostgreSQL, headless Chromium, Alertmanager, Prometheus and promtool). Safe to run again; needs root (or sudo)
# for the installs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/bin/turnserver ] || need+=(coturn)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pg_isready >/dev/null 2>&1 || need+=(postgresql postgresql-client)
# The deploy/ checks and the multi-host (network namespace) test.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)   # README's fleet certificates
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts these services on install; our tests run their own instances.
for svc in nginx coturn prometheus prometheus-alertmanager prometheus-node-exporter; do
  if command -v service >/dev/null 2>&1; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
done

# kubernetes-validate (PyPI; validates objects against bundled Kubernetes schemas, offline) in
# a virtual environment under target/, where the deploy test looks for it.
venv=target/tools-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth (the database tests fail, not skip, without it).
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    ver=$(ls /etc/postgresql | sort -V | tail -n 1)
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

exec cargo test --workspace --locked "$@"
