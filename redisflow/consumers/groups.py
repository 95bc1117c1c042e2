"""Queues and priority queues of fair groups (``groups=GroupLimits(...)``), at-least-once.

The queue's messages are in one list (a sorted set for a priority queue) per group, the
default group's being the source's own key; ``features/groups.py`` says how they are laid
out. A fetch (``lua/group_fetch.lua``) acks finished batches, releases the lease tokens of
finished messages (each frees a place under its group's concurrency limit), and leases a
batch round robin over the groups, within their limits, into a batch list of this worker
(a run per group: the group, its count, its items). An idle consumer waits on the wake stream,
as a priority queue's does (``XREAD BLOCK`` from the last wake-up the fetch saw); pushes,
releases, resumes and the housekeeping (``lua/group_tick.lua``: due retries, parked groups
whose rate limit has room) write to it whenever a group becomes servable.

A worker's lease, its recovery by peers and its hand-back at stop are a plain queue's
(``leases.py``), through group scripts that put each message back at the head of its
group and release its lease token: a dead worker's in-flight count is given back.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ..keys import grouped_key
from ..message import Kind, Message
from ..protocol import scripts
from ..protocol.priority import delayed_member, priority_of
from ..protocol.scripts import Call
from .queue import BATCH, RAW, SCORE, Batch, QueueConsumer, QueueItem

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..handler import Handler
    from .contract import Context

#: The group of a message (bytes; b"" for the default group) and its index in its batch
#: (the lease token is ``<batch key>#<index>``).
GROUP: Final = 3
INDEX: Final = 4


class GroupQueueConsumer(QueueConsumer):
    """Consumes a list queue of fair groups."""

    kind: ClassVar[Kind] = "queue"
    mode: ClassVar[str] = "glist"  # maintain.lua: lease only, the group tick moves retries
    group_mode: ClassVar[str] = "list"
    scripts: ClassVar[tuple[scripts.Script, ...]] = scripts.GROUP_SCRIPTS

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:
        super().__init__(handler, ctx, middleware, key)
        limits = self.options.groups
        assert limits is not None
        rate = limits.rate_limit
        self.concurrency = limits.concurrency or 0
        self.limits = (
            self.concurrency,
            rate.limit if rate else 0,
            max(1, round(rate.per * 1_000_000)) if rate else 0,
        )
        if self.concurrency or rate:
            # A group's limits count leased messages: lease only what runs now, so a group's
            # places are not taken by messages waiting here behind others.
            self.prefetch = self.options.concurrency * (self.options.batch or 1)
        self._wake_id = b"0-0"

    async def connect(self) -> None:
        # Producers then send a message without a group through the group script (which
        # wakes consumers): features/groups.py, GroupedQueues.
        await self.connector.send("SADD", grouped_key(self.config.prefix), self.handler.source.name)
        await super().connect()

    # -- fetch ----------------------------------------------------------------------------

    def fetch_command(self, key: str, n: int, acks: list[Any]) -> list[Any]:
        done = [a for a in acks if isinstance(a, str)]
        released = [part for a in acks if isinstance(a, tuple) for part in a]
        call = scripts.group_fetch(
            self.keys.groups, self.keys.base, self.group_mode, key, self.wset, done, released,
            n, self.limits,
        )  # fmt: skip
        return call.command()

    def items(self, reply: Any, batch: Batch | None) -> list[QueueItem]:
        if not reply:
            return []
        if len(reply) == 1:  # nothing leased: the id of the last wake-up
            self._wake_id = reply[0]
            return []
        # Runs: a group, its count, then its items (score/item pairs in a sorted set).
        zset = self.group_mode == "zset"
        out: list[QueueItem] = []
        i = index = 0
        while i < len(reply):
            group, count = reply[i], int(reply[i + 1])
            i += 2
            if zset:
                part = reply[i : i + 2 * count]
                raws, scores = part[1::2], part[::2]
                i += 2 * count
            else:
                raws, scores = reply[i : i + count], repeat(None)
                i += count
            out += zip(raws, repeat(batch), scores, repeat(group), range(index, index + count))
            index += count
        return out

    async def block(self) -> list[QueueItem]:
        ms = int(self.config.block_timeout * 1000)
        reply = await self.link.call("XREAD", "BLOCK", ms, "STREAMS", self.keys.wake, self._wake_id)
        if reply:
            self._wake_id = reply[0][1][-1][0]
        return []  # the next fetch takes the items

    async def idle(self) -> bool:
        if self.backlog or self._known:
            return False
        source, _, _, held, _, _, _ = self.keys.groups
        length = "ZCARD" if self.group_mode == "zset" else "LLEN"
        replies = await self.connector.send.many(
            (length, source), ("SCARD", held), ("ZCARD", self.keys.delayed)
        )
        return not any(replies) and not self.backlog

    # -- settling -------------------------------------------------------------------------

    def done(self, item: QueueItem) -> None:
        super().done(item)
        if self.concurrency:  # the group's place is free again: released with the next call
            self.acks.append(_token(item))
            if self._blocked:
                self._ack_now.set()

    def done_many(self, items: list[QueueItem]) -> None:
        super().done_many(items)
        if self.concurrency:
            self.acks += [_token(item) for item in items]
            if self._blocked:
                self._ack_now.set()

    def message(self, item: QueueItem, value: Any) -> Message[Any]:
        msg = super().message(item, value)
        group = item[GROUP]
        if group:
            msg.group = group.decode("utf-8", "replace")
        return msg

    def retry_member(self, item: QueueItem, raw: bytes) -> bytes:
        group = item[GROUP]
        return b"\x1d%d:%s%s" % (len(group), group, raw) if group else raw

    def dead_extra(self, item: QueueItem) -> dict[str, Any]:
        return {"group": item[GROUP]} if item[GROUP] else {}

    # -- the lease ------------------------------------------------------------------------

    def release_call(
        self, acked: list[Any], known: list[str], whole: list[str], items: list[Any]
    ) -> Call:
        drop = [*(a for a in acked if isinstance(a, str)), *known]
        released = [part for a in acked if isinstance(a, tuple) for part in a]
        args: list[Any] = []
        for item in items:
            args += _token(item)
            if self.group_mode == "zset":
                args.append(item[SCORE])
            args.append(item[RAW])
        return scripts.group_release(
            self.keys.groups, self.keys.base, self.group_mode, self.keys.leases, self.wset,
            worker=self.worker, limit=self.concurrency, released=released, drop=drop,
            whole=whole, items=args,
        )  # fmt: skip

    def recover_call(self, worker: str, dead_set: str, key: str, held: list[str]) -> Call:
        return scripts.group_recover(
            self.keys.groups, self.keys.base, self.group_mode, self.keys.leases, dead_set,
            key, self.wset, held, worker=worker, max_attempts=self.options.max_attempts,
            limit=self.concurrency,
        )  # fmt: skip

    async def tick(self) -> float:
        keys = self.keys
        call = scripts.group_tick(
            keys.groups, keys.base, self.group_mode, keys.delayed, keys.seq, 256, self.concurrency
        )
        due = int(await self.connector.run(call))
        return self.config.tick if due < 0 else due / 1000


class GroupPriorityConsumer(GroupQueueConsumer):
    """Consumes a priority queue of fair groups: priority order within each group."""

    kind: ClassVar[Kind] = "priority"
    mode: ClassVar[str] = "gzset"
    group_mode: ClassVar[str] = "zset"

    def retry_member(self, item: QueueItem, raw: bytes) -> bytes:
        return super().retry_member(item, delayed_member(priority_of(item[SCORE] or 0), raw))

    def dead_extra(self, item: QueueItem) -> dict[str, Any]:
        return {**super().dead_extra(item), "priority": priority_of(item[SCORE] or 0)}


def _token(item: QueueItem) -> tuple[bytes, str]:
    """The group of a leased message and its lease token (``lua/group_fetch.lua``)."""
    batch = item[BATCH]
    return item[GROUP], f"{batch.key if batch else ''}#{item[INDEX]}"
