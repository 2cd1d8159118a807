#!/usr/bin/env bash
# The whole check: lint, types, and the test suite (unit, property and integration tests against a
# real Mosquitto and real HTTP servers on 127.0.0.1). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --for test
export CI=${CI:-}
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy --strict"; .venv/bin/mypy --strict
# The whole suite also prints which transitions of each machine it took, and fails under 97 %
# (the untaken edges are listed and explained in docs/transition-coverage.md), and its 20
# slowest tests, to keep an eye on the 5-minute budget.
coverage=()
# It runs on every core (pytest-xdist; each worker starts its own private servers, and the
# transition coverage is summed over the workers).
[ $# -eq 0 ] && coverage=(-n "${IOTFSM_TEST_WORKERS:-auto}" --iotfsm-coverage --iotfsm-coverage-min 97 --durations=20)
echo "== pytest"; .venv/bin/python -m pytest -q -p no:cacheprovider "${coverage[@]}" "$@"
