"""Priority queues on a sorted set, at-least-once, with exact order.

Scores encode the priority and a per-queue sequence exactly (``protocol/priority.py``), so a
lower priority always goes first and FIFO holds within a level. A fetch script moves the most
urgent items into a batch list of score/member pairs owned by this worker, so a release puts
them back at their exact place.

There is no non-destructive blocking pop on a sorted set (BZPOPMIN loses the item if the
reply is lost), so an idle consumer waits on a one-entry wake stream that producers touch in
the same script as their ZADD: ``XREAD BLOCK`` from the last id seen is race-free and wakes
every consumer. Items added by other clients are picked up within ``block_timeout``.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any, ClassVar

from ..message import Kind
from ..protocol import scripts
from ..protocol.priority import delayed_member, priority_of
from .queue import RAW, SCORE, Batch, QueueConsumer, QueueItem

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..handler import Handler
    from .contract import Context


class PriorityConsumer(QueueConsumer):
    """Consumes a sorted-set priority queue, lowest priority number first."""

    kind: ClassVar[Kind] = "priority"
    mode: ClassVar[str] = "zset"
    scripts: ClassVar[tuple[scripts.Script, ...]] = scripts.PRIORITY_SCRIPTS

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:
        super().__init__(handler, ctx, middleware, key)
        self._wake_id = b"0-0"

    def fetch_command(self, key: str, n: int, acks: list[str]) -> list[Any]:
        if self.options.at_most_once:
            return ["ZPOPMIN", self.name, n]
        return scripts.priority_fetch(self.name, key, self.wset, self.keys.wake, acks, n).command()

    def items(self, reply: Any, batch: Batch | None) -> list[QueueItem]:
        if not reply:
            return []
        if len(reply) == 1:  # empty queue: the id of the last wake-up
            self._wake_id = reply[0]
            return []
        return list(zip(reply[::2], repeat(batch), reply[1::2]))

    async def block(self) -> list[QueueItem]:
        ms = int(self.config.block_timeout * 1000)
        reply = await self.link.call("XREAD", "BLOCK", ms, "STREAMS", self.keys.wake, self._wake_id)
        if reply:
            self._wake_id = reply[0][1][-1][0]
        return []  # the next fetch takes the items

    def release_args(self, items: list[QueueItem]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            out += (item[SCORE], item[RAW])
        return out

    def retry_member(self, item: QueueItem, raw: bytes) -> bytes:
        return delayed_member(priority_of(item[SCORE] or 0), raw)

    def dead_extra(self, item: QueueItem) -> dict[str, Any]:
        return {"priority": priority_of(item[SCORE] or 0)}
