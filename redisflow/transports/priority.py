"""Priority queues on a sorted set, at-least-once, with exact order.

Scores are ``priority * 2**40 + seq`` (seq from a per-queue INCR): integers below 2**53, so a
lower priority always goes first and FIFO holds within a level, whatever the age of the
messages. A fetch script moves the most urgent items into a batch list of score/member
pairs owned by this worker, so a release puts them back at their exact place.

There is no non-destructive blocking pop on a sorted set (BZPOPMIN loses the item if the
reply is lost), so an idle consumer waits on a one-entry wake stream that producers touch in
the same script as their ZADD: ``XREAD BLOCK`` from the last id seen is race-free and wakes
every consumer. Items added by other clients are picked up within ``block_timeout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codec import reenvelope
from ..connection import Script
from .base import Failure
from .queue import FETCH as QUEUE_FETCH
from .queue import Batch, QueueConsumer

if TYPE_CHECKING:
    from ..app import Settings
    from ..handler import Handler

FETCH = Script("priority_fetch")
PUSH = Script("priority_push")
STATS = Script("priority_stats")

#: Priorities are integers in [0, MAX_PRIORITY]; 0 is the most urgent.
MAX_PRIORITY = 8191
SHIFT = 2**40


def priority_of(score: bytes | float) -> int:
    """The priority level encoded in a score."""
    return int(float(score)) // SHIFT


class PriorityConsumer(QueueConsumer):
    """Consumes a sorted-set priority queue, lowest priority number first."""

    mode = "zset"
    scripts = (FETCH, QUEUE_FETCH)

    def __init__(self, handler: Handler, settings: Settings) -> None:
        super().__init__(handler, settings)
        self._wake_id = b"0-0"

    def _fetch(self, key: str, n: int, acks: list[str]) -> list[Any]:
        name = self.handler.source.name
        if self.options.at_most_once:
            return ["ZPOPMIN", name, n]
        return FETCH.args([name, key, self.wset, self.keys.wake, *acks], [n])

    def _items(self, reply: Any, batch: Batch | None) -> list[Any]:
        if not reply:
            return []
        if len(reply) == 1:  # empty queue: the id of the last wake-up
            self._wake_id = reply[0]
            return []
        return [(reply[i], reply[i + 1], batch) for i in range(0, len(reply), 2)]

    async def _block(self) -> list[Any]:
        ms = int(self.settings.block_timeout * 1000)
        reply = await self.link.call("XREAD", "BLOCK", ms, "STREAMS", self.keys.wake, self._wake_id)
        if reply:
            self._wake_id = reply[0][1][-1][0]
        return []  # the next fetch takes the items

    def _dead_fields(self, item: Any, failure: Failure, attempt: int) -> dict[Any, Any]:
        return {**super()._dead_fields(item, failure, attempt), "priority": priority_of(item[1])}

    def _retry_member(self, item: Any, attempt: int) -> bytes:
        return b"%d:%s" % (priority_of(item[1]), reenvelope(item[0], attempt))

    def _release_items(self, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            out += (item[1], item[0])
        return out
