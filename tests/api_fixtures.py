"""The API tests' world: a `Pair` (platform and devices over the memory broker) with the
management API served on 127.0.0.1 and a free port, tokens of each scope, and an HTTP client."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from iotfsm.api import ApiServer
from iotfsm.testing import Pair

PRODUCT = "API0000001"


class ApiWorld(Pair):
    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, product=PRODUCT, **options)
        self.api = ApiServer(self.platform, "127.0.0.1", 0, max_image=1024 * 1024).start()
        self.write_token = self.api.ctx.tokens.create("ops", ("write",))
        self.read_token = self.api.ctx.tokens.create("viewer", ("read",))
        self.http = httpx.Client(
            base_url=self.api.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.write_token}"},
            timeout=10.0,
        )
        self.reader = httpx.Client(
            base_url=self.api.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.read_token}"},
            timeout=10.0,
        )
        self.anonymous = httpx.Client(base_url=self.api.url + "/api/v1", timeout=10.0)

    def close(self) -> None:
        for client in (self.http, self.reader, self.anonymous):
            client.close()
        self.api.stop()
        super().close()

    def __enter__(self) -> ApiWorld:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def error_of(response: httpx.Response) -> dict[str, str]:
    """The JSON error body every refusal carries (and that it is one)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    error: dict[str, str] = body["error"]
    return error
