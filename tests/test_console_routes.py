"""The console's own routes through a real HTTP client against a running platform: its pages and
scripts are served from the package and fetch nothing from elsewhere, every machine's diagram
comes with a layout whose ids are all in its SVG, and hostile names get a JSON 404, not a crash.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest

from iotfsm.api import ApiServer
from iotfsm.diagrams.live import step_edges
from iotfsm.diagrams.machine import edge_ids
from iotfsm.fsm.spec import ANY_STATE
from iotfsm.fsm.trace import StepRecord
from iotfsm.machines import all_features, platform_machines
from iotfsm.testing.pair import Pair

STATIC = Path(str(resources.files("iotfsm.console") / "static"))
PAGES = ("index.html", "device.html", "campaign.html")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with Pair(tmp_path_factory.mktemp("routes")) as pair:
        server = ApiServer(pair.platform, "127.0.0.1", 0).start()
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                yield client
        finally:
            server.stop()


def test_the_root_sends_people_to_the_console(console: httpx.Client) -> None:
    answer = console.get("/")
    assert answer.status_code == 307
    assert answer.headers["location"] == "/console/"
    page = console.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="fleet.js"' in page.text


@pytest.mark.parametrize("name", ["console.js", "diagram.js", "fleet.js", "console.css", *PAGES])
def test_every_asset_is_served_from_the_package(console: httpx.Client, name: str) -> None:
    answer = console.get(f"/console/{name}")
    assert answer.status_code == 200
    assert answer.content == (STATIC / name).read_bytes()


def test_nothing_is_fetched_from_another_origin() -> None:
    """No build step and no network at run time: no absolute URL in any page, script or style."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name
        assert "@import" not in text, path.name


def test_the_pages_hold_no_data_without_a_session(console: httpx.Client) -> None:
    """The pages are static; what they show comes from /api/v1, which wants a token."""
    assert console.get("/console/device.html").status_code == 200
    assert console.get("/api/v1/devices").status_code == 401
    assert console.get("/api/v1/steps/stream").status_code == 401


def test_every_machine_has_a_diagram_whose_layout_names_its_svg_ids(
    console: httpx.Client,
) -> None:
    names = console.get("/console/diagrams/index.json").json()["machines"]
    specs = [f.spec(role) for f in all_features() for role in ("device", "platform")]
    specs += list(platform_machines())
    assert names == [s.name for s in specs]
    for spec in specs:
        svg = console.get(f"/console/diagrams/{spec.name}.svg")
        assert svg.status_code == 200
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.text.startswith("<svg")
        ids = set(re.findall(r'\bid="([^"]+)"', svg.text))
        layout = console.get(f"/console/diagrams/{spec.name}.json").json()
        assert layout["machine"] == spec.name
        assert set(layout["states"]) == set(spec.state_names)
        assert set(layout["states"].values()) <= ids, spec.name
        assert len(layout["transitions"]) == len(spec.transitions)
        for on, drawn in zip(spec.transitions, layout["transitions"], strict=True):
            assert drawn["trigger"] == on.trigger_name
            assert drawn["dest"] == on.dest
            assert set(drawn["edges"]) == set(on.source)
            assert set(drawn["edges"].values()) <= ids, (spec.name, on.trigger_name)


def test_the_layout_lights_what_the_python_live_view_lights() -> None:
    """For a step along every declared transition, the edge ids the page would light (the
    layout's edge for that source, or its `*` edge) are the ids of the edges the Python live
    view (`step_edges`) highlights."""
    for spec in [f.spec(r) for f in all_features() for r in ("device", "platform")]:
        ids = edge_ids(spec, "")
        for index, on in enumerate(spec.transitions):
            for source in on.source:
                states = (
                    [s for s in spec.state_names if s not in spec.final_states]
                    if source == ANY_STATE
                    else [source]
                )
                for state in states:
                    dest = state if on.dest is None else on.dest
                    record = StepRecord(spec.name, "k", state, on.trigger_name, dest, (), True)
                    lit = {ids[edge] for edge in step_edges(spec, record)}
                    assert ids[(index, source)] in lit, (spec.name, index, state)


@pytest.mark.parametrize(
    "name",
    ["nothing", "ota", "ota.device.svg", "..%2F..%2Fpyproject", "%3Cscript%3E", "x" * 2000],
)
def test_an_unknown_machine_is_a_json_404(console: httpx.Client, name: str) -> None:
    for suffix in (".svg", ".json"):
        answer = console.get(f"/console/diagrams/{name}{suffix}")
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["code"] == "not_found"
        if "%2F" not in name:  # a slash leaves the diagram route: the static files say 404
            assert "index.json" in error["message"]


@pytest.mark.parametrize(
    "path", ["/console/../pyproject.toml", "/console/%2e%2e/routes.py", "/console/routes.py"]
)
def test_no_file_outside_the_static_folder_is_served(console: httpx.Client, path: str) -> None:
    answer = console.get(path)
    assert answer.status_code == 404
    assert "def routes" not in answer.text
