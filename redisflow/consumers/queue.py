"""List queues, at-least-once: producers RPUSH, consumers lease batches with a Lua script.

One script call per batch acks the finished batches and moves up to ``batch_size`` items from
the queue into a fresh batch list owned by this worker (``Keys.batch``). A batch list is
deleted when all its messages are settled. Only on an empty queue does the loop block, in
``BLMOVE`` of one item into a batch list registered beforehand, so nothing is ever between
Redis and a known key. The worker's lease is renewed by ``maintain``; a dead worker's
batches are moved back by whoever sees its lease expire, each message with one more attempt
counted (``recover.lua``: one past ``max_attempts`` is dead-lettered).

``at_most_once=True`` pops destructively (``LMPOP``/``BLMPOP``): faster, but a crash loses
what was popped. Blocking pops are stopped with ``CLIENT UNBLOCK``, never by cancellation
(docs/design.md, "Stopping a blocked fetch").
"""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pydantic import ValidationError

from ..connection import REDIS_ERRORS
from ..errors import DecodeError
from ..message import Kind, Message
from ..middleware import Outgoing
from ..protocol import scripts
from ..protocol.envelope import MARK, content_id, payload_of, reenvelope, split
from ..protocol.replies import text
from .base import Consumer, log
from .contract import Context
from .leases import Leases
from .verdicts import invalid

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..handler import Handler


def _decode_error(consumer: QueueConsumer, item: QueueItem) -> BaseException:
    """The DecodeError of an item that did not validate."""
    try:
        consumer.decode(item)
    except DecodeError as exc:
        return exc
    return DecodeError("invalid payload")  # pragma: no cover - it failed a moment ago


class Batch:
    """Messages leased in one fetch; its key is deleted when ``left`` reaches 0."""

    __slots__ = ("key", "left")

    def __init__(self, key: str, left: int) -> None:
        self.key = key
        self.left = left


#: A message of a list or priority queue: the item as stored (``RAW``), the batch it was
#: leased in (``BATCH``; None when at-most-once), and for a priority queue its score
#: (``SCORE``: its exact place); a queue of fair groups adds the item's group and its index
#: in the batch (``consumers/groups.py``). A plain tuple, read by these named indexes: a
#: class instance per message costs ~1,500 CPU instructions (8% of a drain, measured with
#: callgrind), a tuple next to nothing (docs/design.md, "The hot path").
QueueItem = tuple[bytes, "Batch | None", "bytes | None", *tuple[Any, ...]]
RAW: Final = 0
BATCH: Final = 1
SCORE: Final = 2


class QueueConsumer(Leases, Consumer[QueueItem]):
    """Consumes a list queue (or, in the subclass, a priority queue)."""

    kind: ClassVar[Kind] = "queue"
    mode: ClassVar[str] = "list"
    scripts: ClassVar[tuple[scripts.Script, ...]] = scripts.QUEUE_SCRIPTS

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:
        super().__init__(handler, ctx, middleware, key)
        self.name = self.key
        self.worker = ctx.worker_id
        self.wset = self.keys.batches(self.worker)
        self._seq = 0
        self._wait_key: str | None = None
        self._known: dict[str, Batch] = {}
        self._validate = handler.adapter.validator.validate_json

    # -- what differs for a priority queue ----------------------------------------------

    def fetch_command(self, key: str, n: int, acks: list[str]) -> list[Any]:
        """The request that acks ``acks`` and leases up to ``n`` items into ``key``."""
        if self.options.at_most_once:
            return ["LMPOP", 1, self.name, "LEFT", "COUNT", n]
        return scripts.queue_fetch(self.name, key, self.wset, acks, n).command()

    def items(self, reply: Any, batch: Batch | None) -> list[QueueItem]:
        """The items of a fetch reply."""
        if self.options.at_most_once:
            return list(zip(reply[1], repeat(None), repeat(None))) if reply else []
        return list(zip(reply, repeat(batch), repeat(None)))

    async def block(self) -> list[QueueItem]:
        """Wait in Redis for the queue to be non-empty; the items it gave (and the version
        of the cancel marks, read once the wait is over)."""
        timeout = self.config.block_timeout
        version = ["GET", self.keys.cancels_version]
        if self.options.at_most_once:
            want = self.want()
            await self.link.send(["BLMPOP", timeout, 1, self.name, "LEFT", "COUNT", want], version)
            reply = await self.link.read()
            await self.cancels_seen(await self.link.read())
            return self.items(reply, None)
        # The key is registered before the move, so a crash never leaves a message in an
        # unknown key; after a timeout it is empty and serves the next wait.
        key = self._wait_key = self._wait_key or self._next_key()
        await self.link.send(
            ["SADD", self.wset, key], ["BLMOVE", self.name, key, "LEFT", "RIGHT", timeout],
            version,
        )  # fmt: skip
        await self.link.read()
        raw = await self.link.read()
        await self.cancels_seen(await self.link.read())
        if raw is None:
            return []
        self._wait_key = None
        batch = self._known[key] = Batch(key, 1)
        return [(raw, batch, None)]

    def head(self) -> Callable[[QueueItem], bytes]:
        return itemgetter(RAW)  # the item: its envelope holds the headers

    def release_args(self, items: list[QueueItem]) -> list[Any]:
        """Unfinished items as release.lua takes them."""
        return [item[RAW] for item in items]

    def retry_member(self, item: QueueItem, raw: bytes) -> bytes:
        """The delayed-set member of a retry whose item is now ``raw``."""
        return raw

    # -- setup, fetch, maintain -----------------------------------------------------------

    async def connect(self) -> None:
        await self.link.open(self.scripts)
        await self._maintain_once()  # hold a lease before leasing any message (a full Redis too)
        await self._recover_own()

    def adopt(self, key: str, reply: list[Any]) -> list[QueueItem]:
        """The items of ``reply`` (as a fetch returns them), now held in the batch ``key``."""
        batch = Batch(key, 0)
        items = self.items(reply, batch)
        batch.left = len(items)
        self._known[key] = batch
        return items

    def _next_key(self) -> str:
        self._seq += 1
        return self.keys.batch(self.worker, self._seq)

    async def _send_fetch(self, n: int) -> str:
        key = self._next_key()
        # the version of the cancel marks, read right after the fetch, in its round trip
        version = ["GET", self.keys.cancels_version]
        await self.link.send(self.fetch_command(key, n, self.take_acks()), version)
        return key

    async def fetch_loop(self) -> None:
        pending: str | None = None
        while True:
            if pending is None:
                if self.halted:
                    return
                n = self.want()
                if n == 0:
                    await self.wait_for_room()
                    continue
                pending = await self._send_fetch(n)
            reply = await self.link.read()
            version = await self.link.read()
            self.acks_answered()
            if version != self._cancel_version:  # before its messages reach the workers
                await self.cancels_seen(version)
            key, pending = pending, None
            batch = None if self.options.at_most_once else Batch(key, 0)
            items = self.items(reply, batch)
            if items and batch is not None:
                batch.left = len(items)
                self._known[key] = batch
            if items:
                n = self.want() - len(items)
                try:
                    if n > 0 and not self.halted:
                        pending = await self._send_fetch(n)  # Redis works while we dispatch
                finally:  # a send that fails must not drop them: their batch is known
                    self.feed(items)
                continue
            if self.halted:
                return
            self._blocked = True
            try:
                if self.acks:
                    self._ack_now.set()
                items = await self.block()
            finally:
                self._blocked = False
            if items:
                self.feed(items)

    async def flush_acks(self, acks: list[Any]) -> None:
        await self.connector.send(*self.fetch_command(self._next_key(), 0, acks))

    async def idle(self) -> bool:
        if self.backlog or self._known:
            return False
        size = "ZCARD" if self.mode == "zset" else "LLEN"
        waiting, delayed = await self.connector.send.many(
            (size, self.name), ("ZCARD", self.keys.delayed)
        )
        return not waiting and not delayed and not self.backlog

    async def drained(self) -> bool:
        if not await self.idle():
            return False
        holders = await self.connector.send("ZRANGE", self.keys.leases, 0, -1)
        return {text(w) for w in holders} <= {self.worker}

    # -- one message ----------------------------------------------------------------------

    def decode(self, item: QueueItem) -> Any:
        raw = item[RAW]
        if raw[:1] == MARK:  # payload_of, inlined (once per message)
            nl = raw.find(b"\n")
            if nl != -1:
                raw = raw[nl + 1 :]
        try:
            return self._validate(raw)
        except ValidationError as exc:
            raise invalid(exc) from None
        except ValueError as exc:
            raise DecodeError(f"undecodable payload: {exc}") from None

    def decode_many(
        self, items: list[QueueItem]
    ) -> tuple[list[Any], list[QueueItem], list[tuple[QueueItem, BaseException]]]:
        # ``decode``, inlined: a batch handler's hot path (docs/design.md, "Batches").
        validate = self._validate
        values: list[Any] = []
        bad: list[tuple[QueueItem, BaseException]] = []
        append = values.append
        for item in items:
            raw = item[RAW]
            if raw and raw[0] == 30:  # MARK, read as an int: no slice object per message
                nl = raw.find(b"\n")
                if nl != -1:
                    raw = raw[nl + 1 :]
            try:
                append(validate(raw))
            except ValueError:  # ValidationError too: decode says which, for the letter
                bad.append((item, _decode_error(self, item)))
        if not bad:
            return values, items, bad
        failed = {id(item) for item, _ in bad}
        return values, [item for item in items if id(item) not in failed], bad

    def done_many(self, items: list[QueueItem]) -> None:
        # ``done`` for a batch handler's batch: the messages of one leased batch come one
        # after the other, so its count drops once per run of them.
        last: Batch | None = None
        run = 0
        for item in items:
            batch = item[BATCH]
            if batch is not last:
                if last is not None:
                    self._settle_run(last, run)
                last, run = batch, 0
            run += 1
        if last is not None:
            self._settle_run(last, run)
        if self._room_wanted:
            self._room_wanted = False
            self._room.set()

    def _settle_run(self, batch: Batch, count: int) -> None:
        batch.left -= count
        if not batch.left:
            del self._known[batch.key]
            self.acks.append(batch.key)
            if self._blocked:
                self._ack_now.set()

    def message(self, item: QueueItem, value: Any) -> Message[Any]:
        raw = item[RAW]
        head, payload = split(raw)
        source, most = self.handler.source, self.options.max_attempts
        if head is None:
            return Message(content_id(raw), source, 1, None, {}, payload, value, most)
        when = Message.time(head[1])
        return Message(head[0], source, head[2], when, head[3] or {}, payload, value, most)

    def attempt(self, item: QueueItem) -> int:
        head, _ = split(item[RAW])
        return int(head[2]) if head else 1

    def raw(self, item: QueueItem) -> bytes:
        return payload_of(item[RAW])

    def done(self, item: QueueItem) -> None:
        # ``settled``, inlined: this runs once per message (~600 CPU instructions saved).
        batch = item[BATCH]
        if batch is not None:
            batch.left -= 1
            if not batch.left:
                del self._known[batch.key]
                self.acks.append(batch.key)
                if self._blocked:
                    self._ack_now.set()
        if self._room_wanted:
            self._room_wanted = False
            self._room.set()

    async def retry(self, item: QueueItem, delay: float, count: bool = True) -> None:
        attempt = self.attempt(item) + count
        wrote = False

        async def write(out: Outgoing | None) -> None:
            nonlocal wrote
            changes = {} if out is None else {"payload": out.payload, "headers": out.headers}
            member = self.retry_member(item, reenvelope(item[RAW], attempt, **changes))
            delay_ms = int(delay * 1000)
            await self.connector.run(scripts.delay(self.keys.delayed, delay_ms, [member]))
            wrote = True

        produce = self.ctx.produce
        if produce is None or not count:  # a deferral is no new attempt: no send
            await write(None)
        else:
            msg = self.message(item, None)
            out = Outgoing(
                self.kind, self.handler.source.name, msg.raw, dict(msg.headers),
                reason="retry", id=msg.id, attempt=attempt,
            )  # fmt: skip
            try:
                await produce(out, write)
            except Exception as exc:
                if isinstance(exc, REDIS_ERRORS) or wrote:
                    raise
                log.exception("%s: produce middleware failed on the retry of %s: written"
                              " without it", self, msg.id)  # fmt: skip
                await write(None)
        self.done(item)

    async def bury(self, item: QueueItem, fields: dict[str, Any]) -> None:
        await self.connector.send(
            "XADD", self.keys.dead, "MAXLEN", "~", self.config.dead_maxlen, "*",
            *(part for pair in fields.items() for part in pair),
        )  # fmt: skip
        self.done(item)
