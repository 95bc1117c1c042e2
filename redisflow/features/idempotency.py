"""Consumer-side deduplication: handle each idempotency key once within a window.

``@flow.on_queue(..., idempotency_key=lambda order: order.id)``: before the handler runs,
the key is claimed in Redis (``lua/idempotency.lua``). A key already done within
``idempotency_ttl`` skips the message; a key claimed by another worker that is handling a
duplicate right now defers this copy (the other copy may still fail), and the copy is
looked at again after half as long as the other copy has been running (at least
``recheck``, 0.2 s; at most the time left on its claim): a duplicate of a short job waits
about as long as that job, not as long as the claim could last. Success marks the key done;
a failure drops the claim, so the retry runs again. A worker killed mid-handler leaves only
its claim, which expires after ``claim`` seconds: the key is never marked done for work that
did not finish.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import Defer, Skip
from ..protocol import scripts

if TYPE_CHECKING:
    from ..connection import Connector
    from ..keys import Keys
    from ..message import Message
    from ..middleware import ConsumeNext

log = logging.getLogger("redisflow")


class Idempotency:
    """The idempotency records of one handler, and its consume middleware: the claim before
    the rest of the chain, "done" after it succeeds, the claim dropped after it fails."""

    def __init__(
        self,
        connector: Connector,
        keys: Keys,
        key: Callable[[Any], str],
        ttl: float,
        claim: float,
        recheck: float = 0.2,
    ) -> None:
        self.connector, self.keys, self.key = connector, keys, key
        self.ttl_ms, self.claim_ms = int(ttl * 1000), int(claim * 1000)
        self.recheck = recheck
        self.tokens = (f"{os.urandom(6).hex()}:{n}" for n in itertools.count())

    def record(self, value: Any) -> str:
        """The record key of a payload."""
        return self.keys.done(str(self.key(value)))

    async def claim(self, record: str) -> str:
        """Claim ``record`` and return the claim's token; raise Skip if it is done, Defer
        if another worker (or another coroutine) holds it."""
        token = next(self.tokens)
        state = await self.connector.run(scripts.idempotency(record, "claim", token, self.claim_ms))
        if state == b"done":
            raise Skip
        if state:
            left = int(state) / 1000
            running = max(0.0, self.claim_ms / 1000 - left)
            wait = min(left, max(self.recheck, running / 2))
            raise Defer(wait, "a duplicate is being handled by another worker")
        return token

    async def done(self, record: str, token: str) -> None:
        """Mark ``record`` handled for the window."""
        await self.connector.run(scripts.idempotency(record, "done", token, self.ttl_ms))

    async def drop(self, record: str, token: str) -> None:
        """Release our claim after a failure."""
        await self.connector.run(scripts.idempotency(record, "drop", token, 0))

    async def consume(self, msg: Message[Any], call_next: ConsumeNext) -> Any:
        """Run the rest of the chain once per key and window (raises Skip or Defer
        instead)."""
        record = self.record(msg.payload)
        token = await self.claim(record)
        try:
            result = await call_next(msg)
        except Exception:
            await self.drop(record, token)
            raise
        try:
            await self.done(record, token)
        except Exception as exc:  # handled: never run it again for a lost record
            log.warning("idempotency record of %s not written (%r); its claim expires"
                        " instead", msg.id, exc)  # fmt: skip
        return result
