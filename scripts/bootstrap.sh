#!/usr/bin/env bash
# Installs what one of the project's commands needs, and stays quiet about it; safe to run again.
#   bash scripts/bootstrap.sh --for demo    what scripts/demo.sh needs
#   bash scripts/bootstrap.sh --for test    what scripts/test.sh needs (the default)
# Each step it takes (Debian packages, the venv, Python packages) prints one line with its time; a
# run with nothing to do prints nothing. The installers' own output goes to .venv/bootstrap.log:
# a newcomer should not have to read 120 lines of pip to learn that all went well. When a step
# fails, the script names the log, shows its tail and exits with the installer's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."

# What each purpose needs from Debian, as PACKAGE:PROBE: the package is installed only when its
# probe is missing. PROBE is a command or an absolute path (a glob is fine) that exists once the
# package is installed, or several such alternatives separated by |. To say "the test command
# also needs X", add X to DEBS_test; keep DEBS_demo to what someone who only runs the demo needs.
# Python itself (python3, python3-venv) is handled below, for every purpose.
DEBS_demo=(
  graphviz:dot  # `iotfsm diagram` (the README's next step) runs dot; `iotfsm demo` does not
)
DEBS_test=(
  "${DEBS_demo[@]}"
  'mosquitto:mosquitto|/usr/sbin/mosquitto'  # integration tests start their own brokers
  openssl:openssl                            # ... and make their own TLS certificates
  rabbitmq-server:/usr/lib/rabbitmq/bin/rabbitmq-server  # private RabbitMQ nodes (MQTT plugin, HTTP auth)
  'postgresql:/usr/lib/postgresql/*/bin/postgres'  # private clusters for the store tests
  'chromium:/usr/bin/chromium|chromium'      # the console's browser tests (Playwright drives it)
)
# What each purpose installs into .venv (editable, so the checkout's src is what runs), and which
# other purposes that install also covers.
PIP_demo=.
PIP_test=.[test]
COVERS_demo=(demo)
COVERS_test=(test demo)

purpose=test
while [ $# -gt 0 ]; do
  case $1 in
    --for) purpose=${2:-}; shift 2 || shift ;;
    --for=*) purpose=${1#--for=}; shift ;;
    *) echo "bootstrap: unknown argument $1 (usage: bootstrap.sh [--for demo|test])" >&2; exit 2 ;;
  esac
done
case $purpose in
  demo | test) ;;
  *) echo "bootstrap: unknown purpose '$purpose' (demo or test)" >&2; exit 2 ;;
esac
debs_var="DEBS_${purpose}[@]"
covers_var="COVERS_${purpose}[@]"
pip_var="PIP_${purpose}"

LOG=.venv/bootstrap.log
logged=no

# Runs one step with its output in the log; prints "bootstrap: LABEL ... TIME s" or, on failure,
# the log's name and tail, and exits with the step's exit code.
step() {
  local label=$1 start=${EPOCHREALTIME/./} rc=0 tenths
  shift
  if [ $logged = no ]; then
    mkdir -p .venv
    : >"$LOG"
    logged=yes
  fi
  printf '== %s\n' "$label" >>"$LOG"
  printf 'bootstrap: %s ... ' "$label" >&2
  "$@" </dev/null >>"$LOG" 2>&1 || rc=$?
  tenths=$(((${EPOCHREALTIME/./} - start) / 100000))
  if [ $rc = 0 ]; then
    printf '%d.%d s\n' $((tenths / 10)) $((tenths % 10)) >&2
    return 0
  fi
  printf 'failed after %d.%d s (exit %d); the last lines of %s:\n' \
    $((tenths / 10)) $((tenths % 10)) "$rc" "$PWD/$LOG" >&2
  tail -n 20 "$LOG" | sed 's/^/  | /' >&2
  exit "$rc"
}

# Whether a probe is there: PROBE is one or more alternatives separated by |, each a command on
# PATH or an absolute path (a glob is fine). Absolute paths are looked up under
# $BOOTSTRAP_PROBE_ROOT when set (tests/test_bootstrap.py: a fake root, not this machine's).
present() {
  local alternative alternatives
  IFS='|' read -ra alternatives <<<"$1"
  for alternative in "${alternatives[@]}"; do
    case $alternative in
      /*) compgen -G "${BOOTSTRAP_PROBE_ROOT:-}$alternative" >/dev/null && return 0 ;;
      *) command -v "$alternative" >/dev/null 2>&1 && return 0 ;;
    esac
  done
  return 1
}

# A venv that cannot import pip (made without python3-venv, or its Python gone) is made afresh.
make_venv() {
  find .venv -mindepth 1 -maxdepth 1 ! -name bootstrap.log -exec rm -rf {} +
  "$PY" -m venv .venv
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y --no-install-recommends "$@"
}

# Debian packages
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
    if present "$candidate"; then PY=$candidate; break; fi
  done
fi
need=()
[ -n "$PY" ] || need+=(python3 python3-venv)
if [ -n "$PY" ] && [ ! -x .venv/bin/python ] && ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  need+=(python3-venv)
fi
for entry in "${!debs_var}"; do
  present "${entry#*:}" || need+=("${entry%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing Debian packages ${need[*]}: run as root or apt-get install them" >&2
    exit 1
  fi
  # mosquitto's package may start a broker on :1883; the tests start their own on free ports
  step "apt-get install ${need[*]}" apt_install "${need[@]}"
  [ -n "$PY" ] || PY=python3
fi

# The venv
if ! .venv/bin/python -c "import pip" >/dev/null 2>&1; then
  step "$PY -m venv .venv" make_venv
fi

# Python packages, again whenever pyproject.toml changed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
stamp=.venv/.bootstrap-$purpose
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
  || ! .venv/bin/python -c "import iotfsm" >/dev/null 2>&1; then
  step "pip install -e '${!pip_var}' into .venv" \
    env PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -e "${!pip_var}"
  for covered in "${!covers_var}"; do echo "$want" >".venv/.bootstrap-$covered"; done
fi
