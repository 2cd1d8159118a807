"""Waiting for something that happens on another thread, with a bound and a clear message."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `predicate` until it holds; after `timeout` seconds fail with `what` in the message.

    For tests of real transports and transfers, where the outcome arrives on another thread.
    Never use a bare sleep for that: it is either too short on a busy machine or wasted time.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)
