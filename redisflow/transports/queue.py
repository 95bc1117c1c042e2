"""List queues, at-least-once: producers RPUSH, consumers lease batches with a Lua script.

One script call per batch acks the finished batches and moves up to ``batch`` items from the
queue into a fresh batch list owned by this worker (``rf:{q}:proc:<worker>:<n>``). A batch
list is deleted when all its messages are settled. Only on an empty queue does the loop
block, in ``BLMOVE`` of one item into a batch list registered beforehand, so nothing is ever
between Redis and a known key. The worker's lease is renewed by ``maintain``; a dead
worker's batches are moved back by whoever sees its lease expire, each message with one
more attempt counted (``recover.lua``: one past ``max_attempts`` is dead-lettered).

``at_most_once=True`` pops destructively (``LMPOP``/``BLMPOP``): faster, but a crash loses
what was popped. Blocking pops are stopped with ``CLIENT UNBLOCK``, never by cancellation
(cancelling a blocked pop loses the popped item, REDIS-NOTES).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from ..codec import MARK, content_id, payload_of, reenvelope, split
from ..connection import CONNECTION_ERRORS, Script, command
from ..message import Message
from .base import Consumer, Failure

if TYPE_CHECKING:
    from ..app import Settings
    from ..handler import Handler

FETCH = Script("queue_fetch")
RELEASE = Script("release")
RECOVER = Script("recover")
MAINTAIN = Script("maintain")
DELAY = Script("delay")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Batch:
    """Messages leased in one fetch; its key is deleted when ``left`` reaches 0."""

    __slots__ = ("key", "left")

    def __init__(self, key: str, left: int) -> None:
        self.key = key
        self.left = left


class QueueConsumer(Consumer):
    """Consumes a list queue (or, in the subclass, a priority queue)."""

    mode = "list"
    scripts: tuple[Script, ...] = (FETCH,)

    def __init__(self, handler: Handler, settings: Settings) -> None:
        super().__init__(handler, settings)
        self.worker = settings.worker_id
        self.wset = self.keys.batches(self.worker)
        self._seq = 0
        self._wait_key: str | None = None
        self._acks: list[str] = []
        self._sent_acks: list[str] = []  # acks in the fetch whose reply is awaited
        self._known: dict[str, Batch] = {}
        self._ack_now = anyio.Event()
        self._room = anyio.Event()
        self._room_wanted = False  # the fetch loop waits for room: ``done`` must wake it
        self._validate = handler.adapter.validator.validate_json
        self.batch_size = settings.batch_size
        self.prefetch = max(settings.prefetch, self.options.concurrency)

    # -- keys and commands that differ for a priority queue -----------------------------

    def _queue_keys(self) -> list[str]:
        return [
            self.handler.source.name,
            self.keys.delayed,
            self.keys.leases,
            self.keys.seq,
            self.keys.wake,
        ]

    def _fetch(self, key: str, n: int, acks: list[str]) -> list[Any]:
        if self.options.at_most_once:
            return ["LMPOP", 1, self.handler.source.name, "LEFT", "COUNT", n]
        return FETCH.args([self.handler.source.name, key, self.wset, *acks], [n])

    def _items(self, reply: Any, batch: Batch | None) -> list[Any]:
        if self.options.at_most_once:
            return [(raw, None) for raw in (reply[1] if reply else ())]
        return [(raw, batch) for raw in reply]

    async def _block(self) -> list[Any]:
        """Wait in Redis for the queue to be non-empty; return the items it gave."""
        name = self.handler.source.name
        timeout = self.settings.block_timeout
        if self.options.at_most_once:
            reply = await self.link.call("BLMPOP", timeout, 1, name, "LEFT", "COUNT", self._want())
            return self._items(reply, None)
        # The key is registered before the move, so a crash never leaves a message in an
        # unknown key; after a timeout it is empty and serves the next wait.
        key = self._wait_key = self._wait_key or self._next_key()
        await self.link.send(
            ["SADD", self.wset, key], ["BLMOVE", name, key, "LEFT", "RIGHT", timeout]
        )
        await self.link.read()
        raw = await self.link.read()
        if raw is None:
            return []
        self._wait_key = None
        batch = self._known[key] = Batch(key, 1)
        return [(raw, batch)]

    def raw(self, item: Any) -> bytes:
        return payload_of(item[0])

    def _retry_member(self, item: Any, attempt: int) -> bytes:
        return reenvelope(item[0], attempt)

    def _release_items(self, items: list[Any]) -> list[Any]:
        return [item[0] for item in items]

    # -- setup, fetch, maintain -----------------------------------------------------------

    async def connect(self) -> None:
        await self.link.open(self.scripts)
        await self._maintain_once()  # hold a lease before leasing any message
        await self._recover_own()

    async def _recover_own(self) -> None:
        """After a lost connection: acks whose reply was lost are sent again, and batches
        this worker leased but never heard of (the reply of a fetch or of a BLMOVE was
        lost) go back to the queue, instead of waiting for this worker to stop."""
        self._acks[:0], self._sent_acks = self._sent_acks, []
        self._wait_key = None
        held = {_text(b) for b in await self.redis.smembers(self.wset)}
        orphans = sorted(held - set(self._known) - set(self._acks))
        if not orphans:
            return
        moved = await RELEASE(
            self.redis,
            [self.handler.source.name, self.keys.leases, self.wset, *orphans],
            [self.mode, self.worker, 0],
        )
        await self._maintain_once()  # the release drops an empty worker's lease: renew it
        if moved:
            self.settings.log.warning(
                "%s: %d messages whose fetch reply was lost were put back", self, moved
            )

    def _next_key(self) -> str:
        self._seq += 1
        return self.keys.batch(self.worker, self._seq)

    def _want(self) -> int:
        return max(0, min(self.batch_size, self.prefetch - self.backlog))

    async def _send_fetch(self, n: int) -> str:
        key = self._next_key()
        acks, self._acks = self._acks, []
        self._sent_acks += acks
        await self.link.send(self._fetch(key, n, acks))
        return key

    async def fetch_loop(self) -> None:
        pending: str | None = None
        while True:
            if pending is None:
                if self.stopping:
                    return
                n = self._want()
                if n == 0:
                    self._room = anyio.Event()
                    self._room_wanted = True
                    await self._room.wait()
                    continue
                pending = await self._send_fetch(n)
            reply = await self.link.read()
            self._sent_acks.clear()
            key, pending = pending, None
            batch = None if self.options.at_most_once else Batch(key, 0)
            items = self._items(reply, batch)
            if items and batch is not None:
                batch.left = len(items)
                self._known[key] = batch
            if items:
                n = self._want() - len(items)
                if n > 0 and not self.stopping:
                    pending = await self._send_fetch(n)  # Redis works while we dispatch
                self.feed(items)
                continue
            if self.stopping:
                return
            self._blocked = True
            try:
                if self._acks:
                    self._ack_now.set()
                items = await self._block()
            finally:
                self._blocked = False
            if items:
                self.feed(items)

    async def idle(self) -> bool:
        if self.backlog or self._known:
            return False
        size = "ZCARD" if self.mode == "zset" else "LLEN"
        waiting, delayed = await self.settings.connector.send.many(
            (size, self.handler.source.name), ("ZCARD", self.keys.delayed)
        )
        return not waiting and not delayed and not self.backlog

    async def maintain(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._acker)
            while True:
                try:
                    wait = await self._maintain_once()
                except CONNECTION_ERRORS:
                    wait = self.settings.tick
                except Exception:  # a bug here must not stop the handlers: log, go on
                    self.settings.log.exception("%s: maintenance failed", self)
                    wait = self.settings.tick
                await anyio.sleep(wait)

    async def _maintain_once(self) -> float:
        reply = await MAINTAIN(
            self.redis,
            self._queue_keys(),
            [self.mode, self.worker, int(self.settings.lease * 1000), 256],
        )
        next_due, dead = int(reply[0]), [w.decode() for w in reply[2:]]
        for worker in dead:
            if worker != self.worker:
                await self._recover(worker)
        wait = self.settings.tick
        if next_due >= 0:
            wait = min(wait, next_due / 1000)
        return wait

    async def _recover(self, worker: str) -> None:
        """Give a dead worker's batches back, counting an attempt for each message (as a
        stream's delivery count does); those past ``max_attempts`` are dead-lettered here,
        so a message that kills every worker that takes it cannot stall the queue."""
        wset = self.keys.batches(worker)
        batches = [_text(b) for b in await self.redis.smembers(wset)]
        key = self._next_key()
        reply = await RECOVER(
            self.redis,
            [self.handler.source.name, self.keys.leases, wset, key, self.wset, *batches],
            [self.mode, worker, self.options.max_attempts],
        )
        moved, over = int(reply[0]), reply[1:]
        if moved > 0:
            self.settings.log.warning(
                "%s: worker %s died; %d messages delivered again", self, worker, moved
            )
        if moved < 0 or not over:
            return
        batch = Batch(key, 0)
        items = self._items(over, batch)
        batch.left = len(items)
        self._known[key] = batch
        for item in items:  # as a stream's delivery count, the count includes this one
            count = self.attempt(item)
            failure = Failure(f"delivered {count} times without completing (its workers died)")
            await self._settle(item, failure, count, final=True)

    async def _acker(self) -> None:
        """Flush acks through the pool while the fetch loop is blocked in Redis."""
        while True:
            await self._ack_now.wait()
            self._ack_now = anyio.Event()
            await anyio.sleep(0.005)  # let a burst of completions share one call
            if self._acks and self._blocked:
                acks, self._acks = self._acks, []
                try:
                    await command(self.redis, *self._fetch(self._next_key(), 0, acks))
                except CONNECTION_ERRORS:  # they go with the next call
                    self._acks.extend(acks)
                except BaseException:  # cancelled at stop: release drops them
                    self._acks.extend(acks)
                    raise

    # -- verdicts -------------------------------------------------------------------------

    def decode(self, item: Any) -> Any:
        raw = item[0]
        if raw[:1] == MARK:  # payload_of, inlined (once per message)
            nl = raw.find(b"\n")
            if nl != -1:
                raw = raw[nl + 1 :]
        try:
            return self._validate(raw)
        except ValidationError as exc:
            raise self.invalid(exc) from None
        except ValueError as exc:
            raise self.invalid(exc) from None

    def message(self, item: Any, value: Any) -> Message[Any]:
        raw = item[0]
        head, payload = split(raw)
        if head is None:
            return Message(content_id(raw), self.handler.source, 1, None, {}, payload, value)
        return Message(
            head[0],
            self.handler.source,
            head[2],
            Message.time(head[1]),
            head[3] or {},
            payload,
            value,
        )

    def attempt(self, item: Any) -> int:
        head, _ = split(item[0])
        return int(head[2]) if head else 1

    def done(self, item: Any) -> None:
        batch = item[-1]
        if batch is not None:
            batch.left -= 1
            if not batch.left:
                del self._known[batch.key]
                self._acks.append(batch.key)
                if self._blocked:
                    self._ack_now.set()
        if self._room_wanted:  # a plain bool: this runs once per message
            self._room_wanted = False
            self._room.set()

    async def retry(self, item: Any, delay: float, count: bool = True) -> None:
        member = self._retry_member(item, self.attempt(item) + count)
        await DELAY(self.redis, [self.keys.delayed], [int(delay * 1000), member])
        self.done(item)

    async def bury(self, item: Any, fields: dict[Any, Any]) -> None:
        await self.write_dead(fields)
        self.done(item)

    async def release(self, started: list[Any], unstarted: list[Any]) -> None:
        unfinished = started + unstarted
        drop = [*self._sent_acks, *self._acks, *self._known]
        known = set(drop)
        orphans = [_text(b) for b in await self.redis.smembers(self.wset)]
        orphans = [key for key in orphans if key not in known]
        moved = await RELEASE(
            self.redis,
            [self.handler.source.name, self.keys.leases, self.wset, *drop, *orphans],
            [self.mode, self.worker, len(drop), *self._release_items(unfinished)],
        )
        self._acks.clear()
        self._sent_acks.clear()
        self._known.clear()
        if unfinished or moved:
            self.settings.log.info("%s: handed back %d messages", self, len(unfinished) + moved)
