"""Waiting for things, and flows with the short timings of the tests."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio

from redisflow import Flow

__all__ = ["FAST", "eventually", "make_flow", "until"]


async def eventually(
    pred: Callable[[], Any], within: float = 5.0, what: str = "", interval: float = 0.01
) -> None:
    """Poll ``pred`` (sync or async) until it is truthy; fail after ``within`` seconds."""
    with anyio.move_on_after(within):
        while True:
            result = pred()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    raise AssertionError(f"not true within {within}s: {what or pred}")


async def until(pred: Callable[[], Any], within: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` like ``eventually``; whether it became true within ``within`` seconds."""
    try:
        await eventually(pred, within, interval=interval)
    except AssertionError:
        return False
    return True


#: Flow options of most tests: peers take a dead worker's messages after 2 s, an idle
#: fetch wakes up every 0.5 s, a stop waits 2 s for running handlers.
FAST: dict[str, Any] = dict(lease=2, claim_idle=2, block_timeout=0.5, grace_period=2)


def make_flow(url: str, ns: str, **overrides: Any) -> Flow:
    """A Flow on ``url`` with the test's prefix ``ns`` and ``FAST`` timings (overridable)."""
    return Flow(url, **{"prefix": ns, **FAST, **overrides})


# -- the consumer kinds --------------------------------------------------------------------
