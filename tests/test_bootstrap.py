"""scripts/bootstrap.sh, run whole in a throwaway copy of the project with fake installers.

The newcomer's promise is: one short line per step, the installers' chatter kept in
.venv/bootstrap.log, that log's name and tail (and the installer's exit code) when a step fails,
and silence when there is nothing to do. PATH holds only the fakes (`apt-get`, a `python3` that
makes venvs and "installs" packages, `id`) and the few real tools the script uses, so no test
touches the real .venv, Debian's packages or the network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bootstrap.sh"
BASH = shutil.which("bash") or "/bin/bash"
TOOLS = (
    "bash",
    "dirname",
    "mkdir",
    "sha256sum",
    "cut",
    "cat",
    "tail",
    "sed",
    "find",
    "rm",
    "env",
    "cp",
)
STEP_LINE = re.compile(r"^bootstrap: .+ \.\.\. \d+\.\d s$")

FAKE_PYTHON = """#!{bash}
# A fake python: makes venvs, "installs" packages noisily, answers the bootstrap's import checks.
here=$(dirname "$0")
case "$1 ${{2:-}}" in
  "-m venv")
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    for i in {{1..50}}; do echo "venv chatter $i"; done ;;
  "-m pip")
    shift 2
    echo "$*" >>"$here/pip-calls"
    for i in {{1..300}}; do echo "Collecting fake-package-$i"; echo "pip notice $i" >&2; done
    if [ "${{FAKE_PIP_EXIT:-0}}" != 0 ]; then echo "ERROR: fake pip failed"; exit "$FAKE_PIP_EXIT"; fi
    : >"$here/installed" ;;
  "-c import iotfsm") [ -e "$here/installed" ] ;;
  "-c "*) exit 0 ;;
  *) echo "fake python: unexpected $*" >&2; exit 99 ;;
esac
"""

FAKE_APT = """#!{bash}
# A fake apt-get: noisy, records its calls, "installs" a package by putting its command on PATH
# or its file under the fake root the bootstrap probes ($BOOTSTRAP_PROBE_ROOT).
here=$(dirname "$0")
ROOT=$BOOTSTRAP_PROBE_ROOT
echo "$*" >>"$here/apt-calls"
case $1 in
  update) for i in {{1..40}}; do echo "Get:$i http://deb.debian.org/debian fake"; done ;;
  install)
    for i in {{1..200}}; do echo "Setting up fake-deb-$i"; done
    if [ "${{FAKE_APT_EXIT:-0}}" != 0 ]; then echo "E: fake apt failure"; exit "$FAKE_APT_EXIT"; fi
    for pkg in "$@"; do
      case $pkg in
        graphviz) cp "$here/id" "$here/dot" ;;
        openssl | mosquitto | chromium) cp "$here/id" "$here/$pkg" ;;
        rabbitmq-server) mkdir -p "$ROOT/usr/lib/rabbitmq/bin" && : >"$ROOT/usr/lib/rabbitmq/bin/$pkg" ;;
        postgresql) mkdir -p "$ROOT/usr/lib/postgresql/15/bin" && : >"$ROOT/usr/lib/postgresql/15/bin/postgres" ;;
      esac
    done ;;
esac
"""


@attrs.frozen
class Run:
    """What one bootstrap run showed: its exit code and every line it printed."""

    code: int
    lines: list[str]
    text: str


@attrs.frozen
class World:
    """A throwaway project with the real bootstrap.sh and a PATH of fakes."""

    project: Path
    bin: Path
    root: Path
    """Where the bootstrap looks for its absolute-path probes (/usr/lib/...): empty at first,
    so the result never depends on what this machine has installed."""

    @property
    def log(self) -> Path:
        return self.project / ".venv" / "bootstrap.log"

    def run(self, *args: str, **env: str) -> Run:
        """Runs the copied script the way demo.sh and test.sh do."""
        result = subprocess.run(
            [BASH, str(self.project / "scripts" / "bootstrap.sh"), *args],
            env={
                "PATH": str(self.bin),
                "HOME": str(self.project),
                "BOOTSTRAP_PROBE_ROOT": str(self.root),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = result.stdout + result.stderr
        return Run(result.returncode, text.splitlines(), text)

    def calls(self, name: str) -> list[str]:
        """The recorded calls of a fake installer (`apt-calls` or the venv's `pip-calls`)."""
        path = self.bin / name if name == "apt-calls" else self.project / ".venv/bin" / name
        return path.read_text().splitlines() if path.exists() else []

    def apt_installed(self) -> set[str]:
        """Every package the fake apt-get was asked to install."""
        return {
            p
            for call in self.calls("apt-calls")
            if call.startswith("install ")
            for p in call.split()[1:]
            if not p.startswith("-")
        }


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def world(tmp_path: Path) -> World:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, project / "scripts" / "bootstrap.sh")
    (project / "pyproject.toml").write_text('[project]\nname = "iotfsm"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"the test needs {tool} on PATH"
        (bin_dir / tool).symlink_to(found)
    _executable(bin_dir / "python3", FAKE_PYTHON.format(bash=BASH))
    _executable(bin_dir / "apt-get", FAKE_APT.format(bash=BASH))
    _executable(bin_dir / "id", f'#!{BASH}\necho "${{FAKE_UID:-0}}"\n')
    root = tmp_path / "root"
    root.mkdir()
    return World(project, bin_dir, root)


def _no_installer_lines(run: Run) -> None:
    for chatter in (
        "Collecting fake-package",
        "pip notice",
        "Setting up fake-deb",
        "Get:",
        "venv chatter",
    ):
        assert chatter not in run.text


def test_first_run_prints_one_timed_line_per_step_and_keeps_the_rest_in_the_log(
    world: World,
) -> None:
    run = world.run("--for", "demo")
    assert run.code == 0, run.text
    assert len(run.lines) == 3, run.text
    assert all(STEP_LINE.match(line) for line in run.lines), run.text
    assert "apt-get install graphviz ..." in run.lines[0]
    assert "python3 -m venv .venv ..." in run.lines[1]
    assert "pip install -e '.' into .venv ..." in run.lines[2]
    _no_installer_lines(run)
    log = world.log.read_text()
    for chatter in (
        "Get:40 ",
        "Setting up fake-deb-200",
        "venv chatter 50",
        "Collecting fake-package-300",
        "pip notice 300",
    ):
        assert chatter in log
    assert world.calls("pip-calls") == ["install -e ."]


def test_a_second_run_with_nothing_to_do_prints_at_most_one_line(world: World) -> None:
    assert world.run("--for", "demo").code == 0
    apt_calls = world.calls("apt-calls")
    again = world.run("--for", "demo")
    assert again.code == 0
    assert len(again.lines) <= 1, again.text
    assert world.calls("apt-calls") == apt_calls
    assert world.calls("pip-calls") == ["install -e ."]


def test_the_demo_asks_for_no_package_only_the_tests_need(world: World) -> None:
    assert world.run("--for", "demo").code == 0
    assert world.apt_installed() == {"graphviz"}
    run = world.run("--for", "test")
    assert run.code == 0, run.text
    # the servers and the browser the tests start, for the test command only
    assert world.apt_installed() - {"graphviz"} == {
        "openssl",
        "mosquitto",
        "rabbitmq-server",
        "postgresql",
        "chromium",
    }
    assert world.calls("pip-calls") == ["install -e .", "install -e .[test]"]
    assert len(run.lines) == 2 and all(STEP_LINE.match(line) for line in run.lines), run.text
    assert world.run("--for", "demo").lines == []
    assert world.run("--for", "test").lines == []


def test_after_the_tests_bootstrap_the_demo_has_nothing_left_to_do(world: World) -> None:
    assert world.run("--for", "test").code == 0
    run = world.run("--for", "demo")  # the test extra covers the demo's packages
    assert (run.code, run.lines) == (0, [])
    assert len(world.calls("pip-calls")) == 1


def test_a_failing_pip_shows_the_log_and_its_tail_and_passes_its_exit_code_through(
    world: World,
) -> None:
    run = world.run("--for", "test", FAKE_PIP_EXIT="3")
    assert run.code == 3
    failure = run.lines[-21]
    assert "pip install -e '.[test]' into .venv ... failed after" in failure
    assert "(exit 3)" in failure and str(world.log) in failure
    assert run.lines[-1] == "  | ERROR: fake pip failed"
    assert "Collecting fake-package-300" in run.text
    assert "Collecting fake-package-1\n" not in run.text  # the tail, not the whole log
    assert len(run.lines) <= 25
    # nothing was marked done: the next run installs again, and quietly succeeds
    rerun = world.run("--for", "test")
    assert rerun.code == 0
    assert [line.split(" ...")[0] for line in rerun.lines] == [
        "bootstrap: pip install -e '.[test]' into .venv"
    ]


def test_a_failing_apt_get_stops_before_the_venv_with_its_exit_code(world: World) -> None:
    run = world.run("--for", "demo", FAKE_APT_EXIT="100")
    assert run.code == 100
    assert (
        "apt-get install graphviz ... failed after" in run.lines[0]
        and str(world.log) in run.lines[0]
    )
    assert run.lines[-1] == "  | E: fake apt failure"
    assert not (world.project / ".venv" / "bin").exists()
    _no_installer_lines(Run(0, run.lines[:1], run.lines[0]))


def test_changed_dependencies_install_again(world: World) -> None:
    assert world.run("--for", "demo").code == 0
    with (world.project / "pyproject.toml").open("a") as f:
        f.write('dependencies = ["rich>=13"]\n')
    run = world.run("--for", "demo")
    assert [line.split(" ...")[0] for line in run.lines] == [
        "bootstrap: pip install -e '.' into .venv"
    ]
    assert world.calls("pip-calls") == ["install -e .", "install -e ."]


def test_a_missing_package_without_root_is_one_clear_line(world: World) -> None:
    run = world.run("--for", "demo", FAKE_UID="1000")
    assert run.code == 1
    assert run.lines == [
        "bootstrap: missing Debian packages graphviz: run as root or apt-get install them"
    ]
    assert world.calls("apt-calls") == []


@pytest.mark.parametrize("args", [("--for", "prod"), ("--for",), ("--quiet",)])
def test_a_bad_argument_is_refused_before_anything_is_installed(
    world: World, args: tuple[str, ...]
) -> None:
    run = world.run(*args)
    assert run.code == 2
    assert len(run.lines) == 1 and run.lines[0].startswith("bootstrap: unknown")
    assert not (world.project / ".venv").exists()
    assert os.listdir(world.bin).count("apt-calls") == 0
