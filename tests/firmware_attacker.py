"""The attacker of issue 15's firmware tests: an HTTP server on 127.0.0.1 serving an image with a
correct md5 (and redirects), and forged `update_firmware` payloads for a device's downlink."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotfsm.adapters.identity.firmware_signing import file_sha256, manifest


class AttackerServer:
    """Serves `image` at every path but `/redirect` (302 to `redirect_to`); counts requests."""

    def __init__(self, image: bytes, redirect_to: str = "") -> None:
        self.image = image
        self.redirect_to = redirect_to
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", owner.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.image)))
                self.end_headers()
                self.wfile.write(owner.image)

            def do_PUT(self) -> None:
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def attacker(image: bytes, redirect_to: str = "") -> Iterator[AttackerServer]:
    server = AttackerServer(image, redirect_to)
    try:
        yield server
    finally:
        server.close()


def forged_offer(image: bytes, url: str, version: str, **extra: Any) -> bytes:
    """An `update_firmware` as an attacker would publish it: md5 and size right for `image`."""
    doc = {
        "type": "update_firmware",
        "file_size": len(image),
        "md5sum": hashlib.md5(image).hexdigest(),
        "url": url,
        "version": version,
        **extra,
    }
    return json.dumps(doc).encode()


def sign_fields(key: Ed25519PrivateKey, product: str, version: str, image: bytes) -> dict[str, str]:
    """The signature fields a platform holding `key` would add for this image and version."""
    sha256 = hashlib.sha256(image).hexdigest()
    signature = key.sign(manifest(product, version, len(image), sha256))
    return {"firmware_sha256": sha256, "firmware_signature": base64.b64encode(signature).decode()}


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256: a state directory before and after an attack."""
    return {
        str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()
    }
