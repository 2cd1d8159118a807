#!/usr/bin/env bash
# Installs what iotfsm's demo and tests need; safe to run again (each step checks first).
# Debian packages: mosquitto (integration tests), graphviz (the dot binary), openssl (test TLS
# certificates), python3-venv. Python packages go into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)  # [rabbitmq helper] test-only: private node of testing/rabbitmq.py
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || need+=(python3)
if [ -n "$PY" ] && [ ! -x .venv/bin/python ] && ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing ${need[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # the Debian package starts a broker on :1883; ours start their own on free ports
  [ -n "$PY" ] || PY=python3
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.iotfsm-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import iotfsm" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
