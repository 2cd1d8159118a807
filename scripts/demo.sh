#!/usr/bin/env bash
# The demo: a platform and devices in one process over the embedded broker. Extra arguments go to
# `iotfsm demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --for demo
exec .venv/bin/iotfsm demo "$@"
