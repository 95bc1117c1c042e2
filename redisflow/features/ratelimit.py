"""Rate limits shared by every worker: at most N per window per key, decided in Redis.

A ``RateLimit`` (``config.py``) is the configuration; a ``Limiter`` applies it to one
source's keys. Each decision is one Lua call (``lua/ratelimit.lua``) that reads the time
from the server, so workers on different hosts need no synchronised clocks. Two algorithms:

- **sliding log** (``burst=None``): a sorted set of grant times per key; exact, at most
  ``limit`` grants in ANY window of ``per`` seconds. Memory: up to ``limit`` entries per key.
- **GCRA** (``burst=n``): one number per key; a steady ``limit/per`` rate with up to ``n``
  grants at once after an idle spell. Any window then admits up to ``burst`` beyond the rate
  (199 instead of 100 at a window boundary, docs/design.md "Rate limits"): use it for "rate
  with burst".
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ..config import RateLimit
from ..errors import Defer
from ..protocol import scripts

if TYPE_CHECKING:
    from ..connection import Connector
    from ..keys import Keys
    from ..message import Message
    from ..middleware import ConsumeNext


class Limiter:
    """Applies ``rate`` to the keys of one source; safe to share between tasks."""

    def __init__(self, connector: Connector, keys: Keys, rate: RateLimit) -> None:
        self.connector = connector
        self.keys = keys
        self.rate = rate
        self._window_us = max(1, round(rate.per * 1_000_000))
        self._mode = "log" if rate.burst is None else "gcra"

    async def try_acquire(self, key: str = "") -> float:
        """0.0 when granted (the grant is recorded); otherwise the seconds until a call may
        be granted (nothing recorded). One round trip (EVALSHA)."""
        rate = self.rate
        # A random member keeps grants of the same microsecond apart in the sliding log.
        call = scripts.ratelimit(
            self.keys.rate(key), self._mode, rate.limit, self._window_us, rate.burst or 0,
            os.urandom(8).hex(),
        )  # fmt: skip
        return int(await self.connector.run(call)) / 1000

    @asynccontextmanager
    async def acquire(self, key: str = "") -> AsyncIterator[None]:
        """Wait until granted, then enter; other keys are never delayed.

        Sleeps the time ``try_acquire`` returns plus a little jitter, so one waiter costs
        about one call per refusal. Waiters of one key all wake when a slot frees and one
        of them wins: expect about one refused call per waiter per grant. Nothing is held:
        leaving the block releases nothing, the grant stays counted for its window.
        """
        wait = await self.try_acquire(key)
        while wait > 0:
            # jitter spreads waiters that target the same freed slot
            await anyio.sleep(wait + random.uniform(0, min(0.1 * wait, 0.02)))
            wait = await self.try_acquire(key)
        yield


class Throttle:
    """The consume middleware of a handler's ``rate_limit``: a message that is not granted
    is deferred (``Defer``: delivered again when a grant is due, its attempt not counted)."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def consume(self, msg: Message[Any], call_next: ConsumeNext) -> Any:
        """Take a grant for the payload's key, or defer the message."""
        rate = self.limiter.rate
        wait = await self.limiter.try_acquire(str(rate.key(msg.payload)) if rate.key else "")
        if wait > 0:
            raise Defer(wait, "rate limited")
        return await call_next(msg)
