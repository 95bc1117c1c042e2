"""Cancelling messages: ``Client.cancel(name, message_id)`` marks a message of a queue,
priority queue or stream cancelled, in Redis, for ``ttl`` seconds; no worker of the prefix
runs it from then on, and one that runs it now has its handler cancelled within a second.

The marks of a source live in its own slot (``Keys.cancels``: a hash, a field per message,
with its deadline, reason and stream group; ``Keys.cancels_version``: a number that grows
with each cancel), one pair per partition, so a fetch reads the version on its own link in
the same round trip as the messages (a ``GET`` pipelined behind the fetch: whatever was
cancelled before the fetch is seen by it). A worker reloads the marks only when the version
changed, and polls the version every ``POLL`` seconds while it runs handlers, to cancel a
running one (``consumers/cancelling.py``). Redis 7.0 has no per-field expiry: the cancel
script sweeps marks past their deadline and sets both keys to expire with the last one, so
nothing is left after the TTL (docs/design.md, "Cancellation").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..keys import Keys, check_name, check_text
from ..protocol.cancels import Mark, cancel, parse_marks

if TYPE_CHECKING:
    from ..connection import Connector

#: How long a mark is kept by default, in seconds: a message delayed or retried later than
#: that runs after all.
DEFAULT_TTL = 86_400.0
#: How often a worker that runs handlers looks for new cancellations, in seconds.
POLL = 0.25
#: The reason of a cancel that gives none.
DEFAULT_REASON = "cancelled"


def check_cancel(
    name: object, message_id: object, kinds: Collection[str], group: object, ttl: object
) -> None:
    """ConfigError unless the message ``message_id`` of ``name`` (the ``kinds`` known under
    that name; none: workers not started yet) can be cancelled."""
    check_name(name, "source name")
    if not isinstance(message_id, str) or not message_id:
        raise ConfigError(f"message id: expected a non-empty string, got {message_id!r}")
    check_text(message_id, "message id")
    if group is not None:
        check_name(group, "consumer group")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ConfigError(f"ttl: expected a positive number of seconds, got {ttl!r}")
    if kinds and set(kinds) <= {"channel"}:
        raise ConfigError(
            f"{name!r} is a Pub/Sub channel: a channel keeps no message to cancel (a"
            " published message is delivered at once or never); cancel in the handler"
        )
    if group is not None and kinds and "stream" not in kinds:
        raise ConfigError(
            f"group={group!r}: group names a consumer group of a stream, and {name!r} is a"
            f" {' and '.join(sorted(kinds))}: cancel without a group"
        )


class Cancels:
    """Write and read the cancel marks of the prefix ``prefix``."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.prefix = prefix

    async def cancel(
        self, keys: Collection[str], message_id: str, reason: str, group: str | None,
        ttl: float,
    ) -> None:  # fmt: skip
        """Mark ``message_id`` cancelled in each of ``keys`` (the source's partitions)."""
        ttl_ms = max(1, int(ttl * 1000))
        calls = []
        for key in keys:
            k = Keys(self.prefix, key)
            calls.append(cancel(k.cancels, k.cancels_version, message_id, reason, group, ttl_ms))
        await asyncio.gather(*(self.connector.run(call) for call in calls))

    async def version(self, keys: Keys) -> Any:
        """The version of the marks of one key (None: none kept)."""
        return await self.connector.send("GET", keys.cancels_version)

    async def read(self, keys: Keys) -> tuple[Any, dict[str, Mark]]:
        """The version and the live marks of one key, by message id (the version is read
        first: a cancel between the two reads is in the marks, and changes the version
        again, so the next reading reloads them)."""
        version, flat = await self.connector.send.many(
            ("GET", keys.cancels_version), ("HGETALL", keys.cancels)
        )
        return version, parse_marks(flat, int(time.time() * 1000))

    async def marks(self, keys: Collection[str]) -> dict[str, Mark]:
        """The live marks of a source, all its ``keys`` (partitions) together."""
        found: dict[str, Mark] = {}
        for key in keys:
            found.update((await self.read(Keys(self.prefix, key)))[1])
        return found
