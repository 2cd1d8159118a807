"""`iotfsm demo --web`: the demo's console opens in a browser from the printed link, shows the
demo's devices and machines as the checks run, and the command stops on Ctrl-C with every check
passed; bad options are one-line errors."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from iotfsm.cli import main

LINK = re.compile(r"console: (http://127\.0\.0\.1:\d+/console/#token=iotfsm_[A-Za-z0-9_-]+)")


class Demo:
    """The demo command in a child process, its output read on a thread as it comes."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotfsm", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {pattern.pattern!r} in {''.join(self.seen)}") from None
            self.seen.append(line)
            found = pattern.search(line)
            if found:
                return found

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


@pytest.fixture
def demo() -> Iterator[Demo]:
    running = Demo(
        "--web", "--web-address", "127.0.0.1:0", "--web-seconds", "120", "--devices", "2"
    )
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)


def test_demo_web_opens_the_console_and_stops_on_ctrl_c(
    demo: Demo, page: Page, artifacts_dir: Path
) -> None:
    link = demo.wait_for(LINK).group(1)
    page.goto(link)
    expect(page.locator("#n-devices")).to_have_text("5", timeout=60_000)  # 2 + 3 campaign devices
    page.goto(link.replace("/console/#", "/console/device.html?product=DEMO000001&device=demo-1#"))
    expect(page.locator("#version")).to_have_text("1.1", timeout=60_000)
    expect(page.locator("#machine-ota-device")).to_have_attribute("data-state", "idle")
    expect(page.locator("#machine-ota-platform")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#trace tbody tr[data-role=device]").first).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "demo-web-device.png"), full_page=True)

    demo.wait_for(re.compile("checks done: the console at"))
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(20) == 0, demo.output()
    out = demo.output()
    assert "all checks passed" in out
    token = LINK.search(out)
    assert token is not None
    assert "keeps its fleet running for 120 s" in out


def test_web_options_without_web_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--web-seconds", "5"]) == 1
    assert capsys.readouterr().err.strip() == ("iotfsm: --web-seconds and --web-address need --web")


def test_a_taken_address_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["demo", "--web", "--web-address", f"127.0.0.1:{port}", "--devices", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot serve the console on 127.0.0.1:{port}" in err
    assert "--web-address" in err
