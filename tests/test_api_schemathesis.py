"""The live OpenAPI document, checked by schemathesis against the running API: no 5xx, every
response matches its documented status, content type and schema, and calls without a valid
token get 401/403 (schemathesis' `ignored_auth` check replays each call without it).

`positive_data_acceptance` is left out: the platform refuses some schema-valid calls on what
exists (a device in two waves, a campaign command in a state that does not take it) with a
documented 4xx, which that check counts as a failure. Each operation gets `EXAMPLES` generated cases, so the run stays well under 30 s. (Operations
are walked here rather than through `schemathesis.pytest.from_fixture`, which does not work
with pytest 9: it reads a node attribute that pytest no longer has.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_fixtures import PRODUCT, ApiWorld
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = 20


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    with ApiWorld(tmp_path_factory.mktemp("api-schema")) as w:
        w.platform.register_device(PRODUCT, "dev-1")
        yield w


def operations(world: ApiWorld) -> list[Any]:
    schema = schemathesis.openapi.from_url(world.api.url + "/api/v1/openapi.json").exclude(
        path="/api/v1/steps/stream"  # an endless stream: test_api_flow reads it
    )
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document describes an operation wrongly: {result}"
        found.append(result.ok())
    return found


def test_every_operation_keeps_its_document(world: ApiWorld, tmp_path: Path) -> None:
    found = operations(world)
    assert len(found) >= 30
    headers = {"Authorization": f"Bearer {world.write_token}"}
    for operation in found:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
