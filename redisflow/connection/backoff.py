"""Exponential backoff with full jitter, for the loops that reconnect."""

from __future__ import annotations

import logging
import random

import anyio

from ..errors import RedisflowError, ReplyError

log = logging.getLogger("redisflow")


def refused(exc: BaseException) -> bool:
    """Whether Redis answered with an error (a full Redis, say) rather than not at all."""
    return isinstance(exc, ReplyError)


class Backoff:
    """Sleeps between attempts of a loop that lost Redis; logs the outage once, its end
    once, and gives up (``RedisflowError``) when an outage outlasts ``limit`` seconds.

    ``what`` names the loop in the log; ``where`` says which server it waits for.
    """

    def __init__(
        self,
        what: str,
        limit: float | None = None,
        *,
        where: str = "Redis",
        base: float = 0.05,
        cap: float = 5.0,
    ) -> None:
        self.what, self.limit, self.where, self.base, self.cap = what, limit, where, base, cap
        self.failures = 0
        self.since = 0.0
        self.gave_up = False  # the outage outlasted ``limit``: Redis is taken for gone

    async def wait(self, exc: BaseException, *, starting: bool = False) -> None:
        """Sleep before the next attempt; the first failure of an outage is logged."""
        now = anyio.current_time()
        if self.failures == 0:
            self.since = now
            verb = "waiting for" if starting else "refused by" if refused(exc) else "lost"
            log.warning(
                "%s: %s %s (%s); reconnecting", self.what, verb, self.where,
                exc or type(exc).__name__,
            )  # fmt: skip
        elif self.limit is not None and now - self.since >= self.limit:
            self.gave_up = True
            raise RedisflowError(
                f"{self.what}: {self.where} unreachable for {now - self.since:.0f}s, giving up"
                f" (give_up_after={self.limit:g}): {exc}"
            ) from exc
        self.failures += 1
        delay = random.uniform(0, min(self.cap, self.base * 2**self.failures))
        if self.limit is not None:
            delay = min(delay, max(0.0, self.since + self.limit - now))
        await anyio.sleep(delay)

    def ok(self) -> None:
        """Record success; ends (and logs the length of) an outage."""
        if self.failures:
            log.warning("%s: reconnected after %.1fs", self.what, anyio.current_time() - self.since)
            self.failures = 0
