"""Streams with consumer groups, at-least-once.

The group is created with MKSTREAM from the start of the stream (``start="0"``). A consumer
first re-reads its own pending entries (id ``0``: what it held when it last stopped), then
new ones (``>``), in batches: one request carries the acks of the previous batch
(``XACK`` pipelined with ``XREADGROUP``), and the next request is written before the
current batch is dispatched. Entries of dead consumers are reclaimed with ``XAUTOCLAIM``
(keeping its cursor) once idle for ``claim_idle``; a live consumer keeps its own long
running entries fresh with ``XCLAIM ... JUSTID`` so they are never stolen. Delivery counts
decide the dead-letter verdict. A retry keeps the entry pending, bumps its delivery count
(``XCLAIM`` without JUSTID) and delivers it again locally after the backoff.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from pydantic import ValidationError
from redis.exceptions import ResponseError

from ..connection import CONNECTION_ERRORS, Script
from ..message import Message
from .base import Consumer, Failure

if TYPE_CHECKING:
    from ..app import Settings
    from ..handler import Handler

CLAIM = Script("stream_claim")
FORGET = Script("stream_forget")
PARKED_IDLE_MS = 10**9  # handed-back entries look idle at once to XAUTOCLAIM


class Batch:
    """Entries read in one request; kept fresh while any of them is unsettled."""

    __slots__ = ("ids", "left", "touched")

    def __init__(self, ids: list[bytes]) -> None:
        self.ids = ids
        self.left = len(ids)
        self.touched = time.monotonic()


def entry_fields(fields: list[bytes]) -> dict[str, str]:
    """A flat stream field list as a str dict (for entries written by other clients)."""
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


class StreamConsumer(Consumer):
    """Consumes a stream through a consumer group."""

    def __init__(self, handler: Handler, settings: Settings) -> None:
        super().__init__(handler, settings)
        group = handler.source.group
        assert group is not None
        self.stream = handler.source.name
        self.group = group
        self.consumer = settings.consumer_name
        self.keys_dead = self.keys.dead
        self.prefetch = max(settings.prefetch, self.options.concurrency)
        self._acks: list[bytes] = []
        self._batches: list[Batch] = []
        self._own_pel = True  # read our own pending entries first
        self._pel_cursor = b"0"
        self._waiting: dict[bytes, tuple[asyncio.TimerHandle, Any]] = {}
        self._ack_now = anyio.Event()
        self._room = anyio.Event()
        self._room_wanted = False  # the fetch loop waits for room: ``done`` must wake it
        self._validate_json = handler.adapter.validator.validate_json
        self._validate = handler.adapter.validator.validate_python
        self._cursor = b"0-0"

    async def connect(self) -> None:
        await self.link.open((CLAIM,))
        try:
            await self.link.call(
                "XGROUP", "CREATE", self.stream, self.group, self.settings.stream_start, "MKSTREAM"
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._own_pel = True
        self._pel_cursor = b"0"

    def _want(self) -> int:
        return max(0, min(self.settings.batch_size, self.prefetch - self.backlog))

    async def _send(self, n: int, block: bool) -> None:
        cmds: list[list[Any]] = []
        if self._acks:
            acks, self._acks = self._acks, []
            cmds.append(["XACK", self.stream, self.group, *acks])
        read = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", n]
        if block and not self._own_pel:
            read += ["BLOCK", int(self.settings.block_timeout * 1000)]
        read += ["STREAMS", self.stream, self._pel_cursor if self._own_pel else ">"]
        cmds.append(read)
        self._blocked = block
        try:
            await self.link.send(*cmds)
            if len(cmds) == 2:
                await self.link.read()  # XACK count, read in order
        except BaseException:
            if len(cmds) == 2:  # keep them: acked twice is harmless, never is a duplicate
                self._acks.extend(acks)
            raise

    def recoverable(self, exc: ResponseError) -> bool:
        # The group (or the stream) was deleted under us: connecting creates it again.
        return str(exc).startswith("NOGROUP")

    async def fetch_loop(self) -> None:
        pending = False
        block = False
        while True:
            if not pending:
                if self.stopping:
                    return
                n = self._want()
                if n == 0:
                    self._room = anyio.Event()
                    self._room_wanted = True
                    await self._room.wait()
                    continue
                await self._send(n, block)
                pending = True
            try:
                reply = await self.link.read()
            finally:
                self._blocked = False
            pending = False
            entries = reply[0][1] if reply else []
            own = self._own_pel
            if own and not entries:
                self._own_pel = False
            if own and entries:
                self._pel_cursor = entries[-1][0]
                entries = self._not_held(entries)
            items = self._items(entries, own)
            if own and items:
                items = await self._with_counts(items)
            block = not items
            if items:
                n = self._want() - len(items)
                if n > 0 and not self.stopping and not own:
                    await self._send(n, block=False)  # Redis works while we dispatch
                    pending = True
                self.feed(items)

    def _not_held(self, entries: list[Any]) -> list[Any]:
        """Our pending entries re-read after a reconnect, less those this process still
        holds (queued, running, waiting for a retry, or settled with the ack not yet sent):
        delivering those again would run them twice while we live."""
        held = set(self._acks)
        for batch in self._batches:
            held.update(batch.ids)
        return [e for e in entries if e[0] not in held] if held else entries

    def _items(self, entries: list[Any], own: bool) -> list[Any]:
        gone = [e[0] for e in entries if e[1] is None]  # trimmed while pending
        if gone:
            self._acks.extend(gone)
            entries = [e for e in entries if e[1] is not None]
        if not entries:
            return []
        batch = Batch([e[0] for e in entries])
        self._batches.append(batch)
        return [(e[0], e[1], batch, 1) for e in entries]

    async def _with_counts(self, items: list[Any]) -> list[Any]:
        """Entries re-read from our own PEL were delivered before: take their counts."""
        if not items:
            return items
        pending = await self.link.call(
            "XPENDING",
            self.stream,
            self.group,
            items[0][0],
            items[-1][0],
            len(items),
            self.consumer,
        )
        counts = {p[0]: int(p[3]) for p in pending}
        return await self._admit([(i[0], i[1], i[2], counts.get(i[0], 1)) for i in items])

    async def idle(self) -> bool:
        if self.backlog or self._waiting:
            return False
        for info in await self.redis.xinfo_groups(self.stream):
            if info["name"] == self.group.encode():
                if info["pending"] or self.backlog:
                    return False
                # Not "lag": on Redis 7.0 it also counts entries trimmed before being read.
                last = (await self.redis.xinfo_stream(self.stream))["last-generated-id"]
                return bool(info["last-delivered-id"] == last)
        return False

    async def maintain(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._acker)
            last_claim = last_forget = 0.0
            forget = self.settings.forget_consumers_after
            while True:
                try:
                    await self._touch()
                    now = time.monotonic()
                    if now - last_claim >= self.settings.claim_interval and not self.stopping:
                        last_claim = now
                        await self._reclaim()
                    if forget is not None and now - last_forget >= min(forget / 2, 60):
                        last_forget = now
                        await self._forget(forget)
                except CONNECTION_ERRORS:
                    pass
                except Exception:  # a bug here must not stop the handlers: log, go on
                    self.settings.log.exception("%s: maintenance failed", self)
                await anyio.sleep(self.settings.tick)

    async def _touch(self) -> None:
        """Reset the idle time of entries we still hold, so no peer reclaims them."""
        self._batches = [b for b in self._batches if b.left > 0]
        stale = time.monotonic() - self.settings.claim_idle / 3
        ids: list[Any] = []
        for batch in self._batches:
            if batch.touched < stale:
                batch.touched = time.monotonic()
                ids += batch.ids
        if ids:
            await self.redis.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)

    async def _reclaim(self) -> None:
        n = self._want()
        if n <= 0:
            return
        cursor, entries, _deleted = await CLAIM(
            self.redis,
            [self.stream],
            [self.group, self.consumer, int(self.settings.claim_idle * 1000), self._cursor, n],
        )
        self._cursor = cursor
        if not entries:
            return
        batch = Batch([e[0] for e in entries])
        self._batches.append(batch)
        self.settings.log.warning("%s: reclaimed %d idle entries", self, len(entries))
        self.feed(await self._admit([(e[0], e[1], batch, int(e[2])) for e in entries]))

    async def _forget(self, after: float) -> None:
        """Delete consumers of our group that hold nothing and were not seen for ``after``
        seconds (workers that stopped or died), so the group does not grow with restarts."""
        gone = await FORGET(
            self.redis, [self.stream], [self.group, int(after * 1000), self.consumer]
        )
        if gone:
            names = ", ".join(g.decode() for g in gone)
            self.settings.log.info("%s: deleted %d idle consumers: %s", self, len(gone), names)

    async def _admit(self, items: list[Any]) -> list[Any]:
        """Dead-letter entries delivered more than max_attempts times without an ack: they
        were handed to consumers that died before finishing (a poison message)."""
        limit = self.options.max_attempts
        over = [item for item in items if item[3] > limit]
        for item in over:
            failure = Failure(f"delivered {item[3]} times without completing")
            await self._settle(item, failure, item[3], final=True)
        return [item for item in items if item[3] <= limit] if over else items

    async def _acker(self) -> None:
        """Flush acks through the pool while the fetch loop waits in Redis."""
        while True:
            await self._ack_now.wait()
            self._ack_now = anyio.Event()
            await anyio.sleep(0.005)
            if self._acks and self._blocked:
                acks, self._acks = self._acks, []
                try:
                    await self.redis.xack(self.stream, self.group, *acks)
                except CONNECTION_ERRORS:
                    self._acks.extend(acks)
                except BaseException:  # cancelled at stop: release sends them
                    self._acks.extend(acks)
                    raise

    # -- verdicts -------------------------------------------------------------------------

    def decode(self, item: Any) -> Any:
        fields = item[1]
        try:
            if fields[:1] == [b"data"]:
                return self._validate_json(fields[1])
            for i in range(2, len(fields), 2):
                if fields[i] == b"data":
                    return self._validate_json(fields[i + 1])
            return self._validate(entry_fields(fields))
        except ValidationError as exc:
            raise self.invalid(exc) from None
        except ValueError as exc:
            raise self.invalid(exc) from None

    def message(self, item: Any, value: Any) -> Message[Any]:
        entry_id: bytes = item[0]
        fields = dict(zip(item[1][::2], item[1][1::2], strict=False))
        headers: dict[str, str] = {}
        if b"headers" in fields:
            try:  # written by another client, it may be anything: then there are none
                parsed = orjson.loads(fields[b"headers"])
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                headers = parsed
        ms = int(entry_id.split(b"-", 1)[0])
        return Message(
            entry_id.decode(),
            self.handler.source,
            item[3],
            Message.time(ms),
            headers,
            fields.get(b"data", b""),
            value,
        )

    def attempt(self, item: Any) -> int:
        attempt: int = item[3]
        return attempt

    def raw(self, item: Any) -> bytes:
        fields = item[1]
        for i in range(0, len(fields), 2):
            if fields[i] == b"data":
                data: bytes = fields[i + 1]
                return data
        # A dead letter must be written whatever the bytes: escape what is not UTF-8.
        text = [f.decode("utf-8", "backslashreplace") for f in fields]
        return orjson.dumps(dict(zip(text[::2], text[1::2], strict=False)))

    def done(self, item: Any) -> None:
        self._acks.append(item[0])
        item[2].left -= 1
        if self._blocked:
            self._ack_now.set()
        if self._room_wanted:  # a plain bool: this runs once per message
            self._room_wanted = False
            self._room.set()

    async def retry(self, item: Any, delay: float, count: bool = True) -> None:
        entry_id = item[0]
        # Bumps the delivery count (so a crash still counts this attempt) and resets idle;
        # a deferral (JUSTID) only resets idle.
        await self.redis.xclaim(
            self.stream, self.group, self.consumer, 0, [entry_id], justid=not count
        )
        again = (entry_id, item[1], item[2], item[3] + count)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._redeliver, entry_id)
        self._waiting[entry_id] = (handle, again)

    def _redeliver(self, entry_id: bytes) -> None:
        if not self.stopping:  # else it stays waiting, and release hands it back
            _, item = self._waiting.pop(entry_id)
            self.feed([item])

    async def bury(self, item: Any, fields: dict[Any, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys_dead, fields, maxlen=self.settings.dead_maxlen, approximate=True)
            pipe.xack(self.stream, self.group, item[0])
            await pipe.execute()
        item[2].left -= 1
        if self._room_wanted:
            self._room_wanted = False
            self._room.set()

    async def release(self, started: list[Any], unstarted: list[Any]) -> None:
        for handle, item in self._waiting.values():
            handle.cancel()
            unstarted.append(item)
        self._waiting.clear()
        if self._acks:
            acks, self._acks = self._acks, []
            await self.redis.xack(self.stream, self.group, *acks)
        # Park them: idle "forever" so the next XAUTOCLAIM takes them at once, with the
        # delivery count set to the attempts really made (the next delivery adds one).
        made: dict[int, list[Any]] = {}
        for item in started:
            made.setdefault(item[3], []).append(item[0])
        for item in unstarted:
            made.setdefault(item[3] - 1, []).append(item[0])
        for count, ids in made.items():
            await self.redis.xclaim(
                self.stream, self.group, self.consumer, 0, ids,
                idle=PARKED_IDLE_MS, retrycount=count, justid=True,
            )  # fmt: skip
        if made:
            self.settings.log.info(
                "%s: handed back %d entries", self, len(started) + len(unstarted)
            )
