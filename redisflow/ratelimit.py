"""Rate limits shared by every worker: at most N per window per key, decided in Redis.

A ``RateLimit`` is the configuration; a ``Limiter`` applies it to one source's keys. Each
decision is one Lua call (``scripts/ratelimit.lua``) that reads the time from the server, so
workers on different hosts need no synchronised clocks. Two algorithms:

- **sliding log** (``burst=None``): a sorted set of grant times per key; exact, at most
  ``limit`` grants in ANY window of ``per`` seconds. Memory: up to ``limit`` entries per key.
- **GCRA** (``burst=n``): one number per key; a steady ``limit/per`` rate with up to ``n``
  grants at once after an idle spell. Any window then admits up to ``burst`` beyond the rate
  (REDIS-NOTES: 199 instead of 100 at a window boundary): use it for "rate with burst".
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .connection import Script
from .errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .keys import Keys

__all__ = ["Limiter", "RateLimit"]

RATELIMIT = Script("ratelimit")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` grants per ``per`` seconds for each key.

    ``key`` maps a message payload to its limiter key (``None``: one limit shared by all).
    ``burst=None`` enforces the limit exactly in any window (sliding log); ``burst=n`` uses
    GCRA instead: one grant every ``per / limit`` seconds, with up to ``n`` at once.
    """

    limit: int
    per: float
    key: Callable[[Any], str] | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.limit) or self.limit < 1:
            raise ConfigError(f"RateLimit: limit must be an int >= 1, got {self.limit!r}")
        per_ok = isinstance(self.per, int | float) and not isinstance(self.per, bool)
        if not per_ok or not math.isfinite(self.per) or self.per <= 0:
            raise ConfigError(f"RateLimit: per must be a number of seconds > 0, got {self.per!r}")
        if self.key is not None and not callable(self.key):
            raise ConfigError(f"RateLimit: key must be a callable or None, got {self.key!r}")
        if self.burst is not None and (not _is_int(self.burst) or self.burst < 1):
            raise ConfigError(f"RateLimit: burst must be None or an int >= 1, got {self.burst!r}")


class Limiter:
    """Applies ``rate`` to the keys of one source; safe to share between tasks."""

    def __init__(self, redis: Redis, keys: Keys, rate: RateLimit) -> None:
        self.redis = redis
        self.keys = keys
        self.rate = rate
        window_us = max(1, round(rate.per * 1_000_000))
        mode = "log" if rate.burst is None else "gcra"
        self._argv: list[Any] = [mode, rate.limit, window_us, rate.burst or 0]

    async def try_acquire(self, key: str = "") -> float:
        """0.0 when granted (the grant is recorded); otherwise the seconds until a call may
        be granted (nothing recorded). One round trip (EVALSHA)."""
        # A random member keeps grants of the same microsecond apart in the sliding log.
        argv = [*self._argv, os.urandom(8).hex()]
        ms = await RATELIMIT(self.redis, [self.keys.rate(key)], argv)
        return int(ms) / 1000

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
