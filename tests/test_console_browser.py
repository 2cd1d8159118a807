"""The console in headless Chromium against a running platform: the fleet page, a deployment
started from a device's page with its OTA diagram lit step by step, a campaign paused and
resumed from its page, and the device page's other actions with bad and hostile input.

One platform, three devices over the memory broker (a manual clock) and the API on a free
127.0.0.1 port, for the whole module. Each device's burn waits on a gate the test opens, so the
page can be looked at (and photographed) while a device is mid-update: waiting on conditions in
the page, never on time.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from playwright.sync_api import FilePayload, Page, expect

from iotfsm.api import ApiServer
from iotfsm.api.device_steps import device_tracer
from iotfsm.device import Device
from iotfsm.testing.pair import Pair

PRODUCT = "CONS000001"
NAMES = ("dev-1", "dev-2", "dev-3")
GATE_WAIT = 30.0
"""How long a burn waits for its gate before failing (the test opens every gate at the end)."""
IMAGE = random.Random(20).randbytes(96 * 1024)
LIVE = re.compile(r"\blive\b")
"""The class a page's body has while its step stream is connected."""


@attrs.define
class World:
    pair: Pair
    server: ApiServer
    token: str
    devices: dict[str, Device]
    gates: dict[str, threading.Event]

    def url(self, path: str, *, login: bool = True) -> str:
        """A console URL; with `login`, the token rides in the fragment as `demo --web` prints it."""
        return f"{self.server.url}/console/{path}" + (f"#token={self.token}" if login else "")


def _gated(gate: threading.Event) -> Callable[[Path, str], None]:
    def burn(image: Path, version: str) -> None:
        if not gate.wait(GATE_WAIT):
            raise RuntimeError(f"the test never opened the gate for {version}")

    return burn


def _image(name: str, data: bytes) -> FilePayload:
    """A firmware file as the page's file input receives it."""
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    gates = {name: threading.Event() for name in NAMES}
    with Pair(tmp_path_factory.mktemp("console"), product=PRODUCT) as pair:
        server = ApiServer(pair.platform, "127.0.0.1", 0).start()
        try:
            devices = {
                name: pair.device(
                    name,
                    version="1.0",
                    burn=_gated(gates[name]),
                    on_step=device_tracer(server.ctx.feed),
                ).start()
                for name in NAMES
            }
            pair.run_until(
                "every device to be answered",
                lambda: all(d.state("ota") == "idle" for d in devices.values()),
            )
            token = server.ctx.tokens.create("console-test", ("write",))
            yield World(pair, server, token, devices, gates)
        finally:
            for gate in gates.values():
                gate.set()
            server.stop()


def test_fleet_page_counts_and_pages_devices(world: World, page: Page, artifacts_dir: Path) -> None:
    page.goto(world.url(""))
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")
    expect(page.locator("#n-devices")).to_have_text("3")
    expect(page.locator("#page-info")).to_have_text("1\u20133 of 3")
    expect(page.locator("#devices tbody tr")).to_have_count(3)
    expect(page.locator("#by-version")).to_contain_text("1.0 3")
    assert "token" not in page.url, "the token must leave the address bar once it is used"

    page.fill("#filters input[name=q]", "dev-2")
    page.click("#filters button[type=submit]")
    expect(page.locator("#page-info")).to_have_text("1\u20131 of 1")
    expect(page.locator("#devices tbody tr")).to_have_count(1)
    expect(page.locator("#devices tbody tr td").nth(1)).to_have_text("dev-2")
    page.screenshot(path=str(artifacts_dir / "fleet-filtered.png"), full_page=True)

    page.click("#devices tbody a")
    expect(page.locator("#title")).to_contain_text("dev-2")


def test_a_wrong_token_gets_the_login_form(world: World, page: Page) -> None:
    page.goto(f"{world.server.url}/console/#token=iotfsm_not-a-token")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("refused")
    expect(page.locator("#devices tbody tr")).to_have_count(0)
    page.fill("#login-token", "still wrong")
    page.click("#login button")
    expect(page.locator("#login-error")).not_to_be_empty()
    page.fill("#login-token", world.token)
    page.click("#login button")
    expect(page.locator("#n-devices")).to_have_text("3")


WATCH_STATES = """(selector) => {
  // Every state the figure shows, with the node lit at that moment, as a person would see it.
  const figure = document.querySelector(selector);
  window.seen = [];
  const note = () => {
    const lit = figure.querySelector(".live-state");
    window.seen.push([figure.dataset.state, lit ? lit.id : null, figure.dataset.edge]);
  };
  new MutationObserver(note).observe(figure, { attributes: true, attributeFilter: ["data-state"] });
}"""


def test_deploy_from_the_device_page_lights_the_ota_machine(
    world: World, page: Page, artifacts_dir: Path
) -> None:
    device = world.devices["dev-1"]
    page.goto(world.url(f"device.html?product={PRODUCT}&device=dev-1"))
    own = page.locator("#machine-ota-device")
    platform = page.locator("#machine-ota-platform")
    expect(own).to_have_attribute("data-state", "idle")
    expect(platform).to_have_attribute("data-state", "idle")
    expect(own).to_have_attribute("data-loaded", "yes")
    expect(page.locator("body")).to_have_class(LIVE)  # the step stream is open
    page.evaluate(WATCH_STATES, "#machine-ota-device")

    page.fill("#deploy-version", "1.1")
    page.set_input_files(
        "#deploy-image",
        files=[_image("fw-1.1.bin", IMAGE)],
    )
    page.click("#deploy-button")
    expect(page.locator("#status")).to_have_text("deploy 1.1 to dev-1: done")

    # The burn waits on its gate: the device's diagram holds at burning, the edge it took lit.
    expect(own).to_have_attribute("data-state", "burning")
    expect(own.locator('[id="ota-device--burning"]')).to_have_class(re.compile(r"\blive-state\b"))
    expect(own.locator(".live-edge")).to_have_count(1)
    expect(own.locator(".note")).to_contain_text("downloading → burning")
    expect(platform).to_have_attribute("data-state", "burning")
    page.screenshot(path=str(artifacts_dir / "device-ota-burning.png"), full_page=True)

    world.gates["dev-1"].set()
    expect(own).to_have_attribute("data-state", "idle")
    expect(page.locator("#version")).to_have_text("1.1")
    expect(platform).to_have_attribute("data-state", "succeeded")
    assert device.version == "1.1"
    page.screenshot(path=str(artifacts_dir / "device-ota-done.png"), full_page=True)

    seen = page.evaluate("window.seen")
    states = [state for i, (state, _, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != state]
    assert states[:3] == ["downloading", "burning", "idle"], seen
    assert states[-1] == "idle", seen
    for state, lit, edge in seen:
        assert lit == f"ota-device--{state}", f"{state} shown but {lit} lit"
        assert edge, f"no edge lit on the way to {state}"
    expect(
        page.locator("#trace tbody tr[data-role=device][data-from=idle][data-to=downloading]")
    ).to_have_count(1)


def test_pause_and_resume_a_campaign_from_its_page(
    world: World, page: Page, artifacts_dir: Path
) -> None:
    platform = world.pair.platform
    page.goto(world.url(""))
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")
    form = page.locator("#campaign")
    form.locator("input[name=product]").fill(PRODUCT)
    form.locator("input[name=version]").fill("1.2")
    page.set_input_files("#campaign-image", files=[_image("fw-1.2.bin", IMAGE[::-1])])
    form.locator("textarea[name=waves]").fill("dev-2\ndev-3")
    page.click("#campaign-button")
    page.wait_for_url(re.compile(r"campaign\.html\?id="))
    cid = page.url.split("id=", 1)[1]
    expect(page.locator("body")).to_have_class(LIVE)

    world.pair.run_until(
        "wave 1 to be running", lambda: platform.campaign_status(cid).waves[0].running == 1
    )
    expect(page.locator("#wave-1")).to_have_attribute("data-running", "1")
    # Wave 1's one device has started: the campaign runs it, or already waits for its outcome.
    active = re.compile(r"^(running|waiting)$")
    expect(page.locator("#campaign-state")).to_have_text(active)
    expect(page.locator("#machine .machine")).to_have_attribute("data-state", active)

    page.click("#pause")
    expect(page.locator("#campaign-state")).to_have_text("paused")
    assert platform.campaign_status(cid).state == "paused"
    expect(page.locator("#pause")).to_be_disabled()
    expect(page.locator("#resume")).to_be_enabled()
    expect(page.locator("#machine .machine")).to_have_attribute("data-state", "paused")
    page.screenshot(path=str(artifacts_dir / "campaign-paused.png"), full_page=True)

    page.click("#resume")
    expect(page.locator("#campaign-state")).to_have_text("running")
    world.gates["dev-2"].set()
    world.gates["dev-3"].set()
    world.pair.run_until(
        "the campaign to end", lambda: platform.campaign_status(cid).state == "succeeded"
    )
    expect(page.locator("#campaign-state")).to_have_text("succeeded")
    expect(page.locator("#wave-1")).to_have_attribute("data-succeeded", "1")
    expect(page.locator("#wave-2")).to_have_attribute("data-succeeded", "1")
    expect(page.locator("#history")).to_contain_text("paused")
    page.screenshot(path=str(artifacts_dir / "campaign-done.png"), full_page=True)


def test_operator_actions_on_the_device_page_and_bad_input(world: World, page: Page) -> None:
    platform = world.pair.platform
    device = world.devices["dev-3"]
    page.goto(world.url(f"device.html?product={PRODUCT}&device=dev-3"))
    expect(page.locator("body")).to_have_attribute("data-loaded", "yes")

    page.select_option("#log-level-select", "3")
    page.click("#log-level-button")
    expect(page.locator("#status")).to_have_text("set log level 3: done")
    world.pair.run_until("dev-3 to log at level 3", lambda: device.log_level == 3)
    assert platform.log_level(PRODUCT, "dev-3") == 3

    before = platform.product_config(PRODUCT)
    page.fill("#config-payload", '{"mode": ')
    page.click("#config-button")
    expect(page.locator("#status")).to_contain_text("the config is not JSON")
    assert platform.product_config(PRODUCT) == before

    hostile = '{"label": "<img src=x onerror=\\"window.pwned=1\\">"}'
    page.fill("#config-payload", hostile)
    page.click("#config-button")
    expect(page.locator("#status")).to_have_text(f"save config for {PRODUCT}: done")
    page.click("#push-config")
    expect(page.locator("#status")).to_have_text("push config: done")
    page.reload()
    expect(page.locator("#config-payload")).to_have_value(re.compile(r"<img src=x onerror="))
    assert page.evaluate("window.pwned") is None

    target = platform.firmware_status(PRODUCT, "dev-3").target
    page.fill("#deploy-version", "../../etc")
    page.click("#deploy-button")
    expect(page.locator("#status")).to_contain_text("deploy ../../etc to dev-3:")
    expect(page.locator("#status")).to_have_attribute("data-kind", "error")
    assert platform.firmware_status(PRODUCT, "dev-3").target == target
