"""Streams with consumer groups, at-least-once.

The group is created with MKSTREAM from ``stream_start`` (``0``: the whole stream). A
consumer first reads its own pending entries (what it held when it last stopped, died or
lost its connection; ``lua/stream_own.lua``, which counts a delivery only after a restart),
then new ones (``>``), in batches: one request carries the acks of the previous batch
(``XACK`` pipelined with ``XREADGROUP``), and the next request is written before the current
batch is dispatched. Entries of dead consumers are reclaimed with ``XAUTOCLAIM`` (keeping its
cursor) once idle for ``claim_idle``, after our own unanswered acks; a live consumer keeps
its own long-running entries fresh with ``XCLAIM ... JUSTID``, and never reclaims them.
Delivery counts decide the dead-letter verdict. A retry keeps the entry pending, bumps its
delivery count (``XCLAIM`` without JUSTID) and delivers it again locally after the backoff.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from pydantic import ValidationError

from ..errors import DecodeError, ReplyError
from ..message import Kind, Message
from ..protocol import scripts
from ..protocol.envelope import parse_headers
from ..protocol.replies import mapping, text
from .base import Consumer, log
from .claims import ATTEMPT, BATCH, FIELDS, ID, Batch, Claims, StreamItem
from .contract import Context
from .verdicts import Failure, invalid

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..handler import Handler

PARKED_IDLE_MS = 10**9  # handed-back entries look idle at once to XAUTOCLAIM


def entry_fields(fields: list[bytes]) -> dict[str, str]:
    """A flat stream field list as a str dict (for entries written by other clients)."""
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields) - 1, 2)}


class StreamConsumer(Claims, Consumer[StreamItem]):
    """Consumes a stream through a consumer group."""

    kind: ClassVar[Kind] = "stream"

    def __init__(
        self, handler: Handler, ctx: Context, middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(handler, ctx, middleware, key)
        assert handler.source.group is not None
        self.stream = self.key
        self.group = handler.source.group
        self.consumer = ctx.config.name
        self._batches: list[Batch] = []
        self._own_pel = True  # read our own pending entries first
        self._restart = True  # ... and count a delivery for them: the previous run held them
        self._pel_cursor: bytes | str = "-"
        self._waiting: dict[bytes, tuple[asyncio.TimerHandle, StreamItem]] = {}
        self._validate_json = handler.adapter.validator.validate_json
        self._validate = handler.adapter.validator.validate_python
        self._cursor = b"0-0"

    async def connect(self) -> None:
        await self.link.open(scripts.STREAM_SCRIPTS)
        try:
            await self.link.call(
                "XGROUP", "CREATE", self.stream, self.group, self.config.stream_start, "MKSTREAM"
            )
        except ReplyError as exc:
            if exc.code != "BUSYGROUP":
                raise
        # Join the group now: a blocked XREADGROUP that gets nothing does not add us.
        await self.link.call("XGROUP", "CREATECONSUMER", self.stream, self.group, self.consumer)
        self.acks_unanswered()  # acks whose reply was lost go with the next request
        self._own_pel = True
        await self.refresh_cancels()  # before our own pending entries: no fetch carries it
        if not self._restart:  # a restart's pages already read were counted: go on after them
            self._pel_cursor = "-"

    def recoverable(self, exc: ReplyError) -> bool:
        # The group or stream was deleted (XGROUP DESTROY, DEL...): connecting creates them.
        return exc.code in ("NOGROUP", "UNBLOCKED")

    # -- fetching -------------------------------------------------------------------------

    async def fetch_loop(self) -> None:
        while self._own_pel:
            if self.halted:
                return
            n = self.want()
            if n == 0:
                await self.wait_for_room()
                continue
            await self._read_own(n)
        self._restart = False
        await self._read_new()

    async def _read_own(self, n: int) -> None:
        """One page of our own pending entries, less those this process still holds."""
        call = scripts.stream_own(
            self.stream, self.group, self.consumer, self._pel_cursor, n, restart=self._restart
        )
        rows = await self.link.call(*call.command())
        if not rows:
            self._own_pel = False
            return
        self._pel_cursor = b"(" + rows[-1][0]
        held = self._held()
        gone = [row[0] for row in rows if row[1] is None and row[0] not in held]
        self.acks.extend(gone)  # trimmed while pending: nothing to deliver
        rows = [row for row in rows if row[1] is not None and row[0] not in held]
        if rows:
            batch = Batch([row[0] for row in rows])
            await self._dispatch(batch, [(r[0], r[1], batch, int(r[2])) for r in rows])

    async def _read_new(self) -> None:
        pending = block = False
        while True:
            if not pending:
                if self.halted:
                    return
                n = self.want()
                if n == 0:
                    await self.wait_for_room()
                    continue
                await self._send(n, block)
                pending = True
            try:
                reply = await self.link.read()
            finally:
                self._blocked = False
            version = await self.link.read()  # of the cancel marks, read after the entries
            self.acks_answered()
            pending = False
            entries = reply[0][1] if reply else []
            gone = [e[0] for e in entries if e[1] is None]  # trimmed before we read them
            if gone:
                self.acks.extend(gone)
                entries = [e for e in entries if e[1] is not None]
            block = not entries
            if entries:
                n = self.want() - len(entries)
                if n > 0 and not self.halted:
                    await self._send(n, block=False)  # Redis works while we dispatch
                    pending = True
                if version != self._cancel_version:
                    await self.cancels_seen(version)
                batch = Batch([e[0] for e in entries])
                self._batches.append(batch)
                self.feed((e[0], e[1], batch, 1) for e in entries)
            elif version != self._cancel_version:
                await self.cancels_seen(version)

    async def _send(self, n: int, block: bool) -> None:
        cmds: list[list[Any]] = []
        acks = self.take_acks()
        if acks:
            cmds.append(["XACK", self.stream, self.group, *acks])
        read = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", n]
        if block:
            read += ["BLOCK", int(self.config.block_timeout * 1000)]
        cmds.append([*read, "STREAMS", self.stream, ">"])
        cmds.append(["GET", self.keys.cancels_version])
        self._blocked = block
        await self.link.send(*cmds)
        if acks:
            await self.link.read()  # XACK count, read in order
        if block and self.acks:
            self._ack_now.set()

    def _held(self) -> set[bytes]:
        """Entries this process still holds (queued, running, waiting for a retry, or
        settled with the ack not yet answered): delivering those again would run them twice
        while we live."""
        held = set(self.acks) | set(self.acks_sent) | set(self.acks_flushing)
        for batch in self._batches:
            held.update(batch.ids)
        return held

    async def _dispatch(self, batch: Batch, items: list[StreamItem]) -> None:
        """Dead-letter the entries delivered too often, then hand the rest to the workers.
        The batch is registered only now: if an await above fails, nothing is held and the
        next read of our pending entries delivers them."""
        limit = self.options.max_attempts
        for item in items:
            if item[ATTEMPT] > limit and self.marks and self.mark_of(item) is not None:
                continue  # cancelled: settled as such by the worker that takes it
            if item[ATTEMPT] > limit:
                failure = Failure(f"delivered {item[ATTEMPT]} times without completing")
                await self.verdicts.settle(item, failure, item[ATTEMPT], final=True)
        self._batches.append(batch)
        cancelled = self.mark_of if self.marks else lambda item: None
        self.feed(item for item in items if item[ATTEMPT] <= limit or cancelled(item))

    async def flush_acks(self, acks: list[Any]) -> None:
        await self.connector.send("XACK", self.stream, self.group, *acks)

    async def idle(self) -> bool:
        return not (self.backlog or self._waiting) and await self._read_all(self.group)

    async def drained(self) -> bool:
        return not (self.backlog or self._waiting) and await self._read_all(None)

    async def _read_all(self, group: str | None) -> bool:
        """Whether the group (every group, for None) has read the whole stream and holds
        nothing pending. Not XINFO's "lag": on 7.0 it counts entries trimmed unread too."""
        groups = [mapping(g) for g in await self.connector.send("XINFO", "GROUPS", self.stream)]
        groups = [g for g in groups if group is None or text(g[b"name"]) == group]
        if not groups:
            return False
        last = mapping(await self.connector.send("XINFO", "STREAM", self.stream))
        done = last[b"last-generated-id"]
        return all(not g[b"pending"] and g[b"last-delivered-id"] == done for g in groups)

    # -- one message ----------------------------------------------------------------------

    def decode(self, item: StreamItem) -> Any:
        fields = item[FIELDS]
        try:
            if fields[:1] == [b"data"]:
                return self._validate_json(fields[1])
            for i in range(2, len(fields) - 1, 2):
                if fields[i] == b"data":
                    return self._validate_json(fields[i + 1])
            return self._validate(entry_fields(fields))
        except ValidationError as exc:
            raise invalid(exc) from None
        except ValueError as exc:
            raise DecodeError(f"undecodable payload: {exc}") from None

    def message(self, item: StreamItem, value: Any) -> Message[Any]:
        entry_id = item[ID]
        fields = dict(zip(item[FIELDS][::2], item[FIELDS][1::2], strict=False))
        when, most = Message.time(int(entry_id.split(b"-", 1)[0])), self.options.max_attempts
        return Message(
            entry_id.decode(), self.handler.source, item[ATTEMPT], when,
            parse_headers(fields.get(b"headers")), fields.get(b"data", b""), value, most,
        )  # fmt: skip

    def head(self) -> Callable[[StreamItem], bytes]:
        return _headers_field

    def attempt(self, item: StreamItem) -> int:
        return item[ATTEMPT]

    def raw(self, item: StreamItem) -> bytes:
        fields = item[FIELDS]
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == b"data":
                data: bytes = fields[i + 1]
                return data
        # A dead letter must be written whatever the bytes: escape what is not UTF-8.
        decoded = [f.decode("utf-8", "backslashreplace") for f in fields]
        return orjson.dumps(dict(zip(decoded[::2], decoded[1::2], strict=False)))

    def done(self, item: StreamItem) -> None:
        # ``settled``, inlined: this runs once per message.
        item[BATCH].left -= 1
        self.acks.append(item[ID])
        if self._blocked:
            self._ack_now.set()
        if self._room_wanted:
            self._room_wanted = False
            self._room.set()

    def done_many(self, items: list[StreamItem]) -> None:
        # ``done`` for a batch handler's batch, in one go.
        for item in items:
            item[BATCH].left -= 1
        self.acks += [item[ID] for item in items]
        if self._blocked:
            self._ack_now.set()
        if self._room_wanted:
            self._room_wanted = False
            self._room.set()

    def decode_many(
        self, items: list[StreamItem]
    ) -> tuple[list[Any], list[StreamItem], list[tuple[StreamItem, BaseException]]]:
        # ``decode``, inlined for entries whose first field is ``data`` (redisflow's own).
        validate = self._validate_json
        values: list[Any] = []
        append = values.append
        for i, item in enumerate(items):
            fields = item[FIELDS]
            try:
                if fields and fields[0] == b"data":
                    append(validate(fields[1]))
                    continue
            except ValueError:
                pass
            done = super().decode_many(items[i:])  # the long way, from this one on
            return values + done[0], items[:i] + done[1], done[2]
        return values, items, []

    async def retry(self, item: StreamItem, delay: float, count: bool = True) -> None:
        entry_id = item[ID]
        # Bumps the delivery count (so a crash still counts this attempt) and resets idle;
        # a deferral (JUSTID) only resets idle.
        justid = () if count else ("JUSTID",)
        await self.connector.send(
            "XCLAIM", self.stream, self.group, self.consumer, 0, entry_id, *justid
        )
        again = (entry_id, item[FIELDS], item[BATCH], item[ATTEMPT] + count)
        handle = asyncio.get_running_loop().call_later(delay, self._redeliver, entry_id)
        self._waiting[entry_id] = (handle, again)

    def holding(self) -> bool:
        return bool(self.backlog or self._waiting)

    def _redeliver(self, entry_id: bytes) -> None:
        if not self.stopping:  # else it stays waiting, and release hands it back
            self.feed([self._waiting.pop(entry_id)[1]])

    async def bury(self, item: StreamItem, fields: dict[str, Any]) -> None:
        flat = [part for pair in fields.items() for part in pair]
        call = scripts.stream_bury(
            self.keys.dead, self.stream, self.group, item[ID], self.config.dead_maxlen, flat
        )
        await self.connector.run(call)
        item[BATCH].left -= 1
        self.settled(None)

    async def release(self, started: list[StreamItem], unstarted: list[StreamItem]) -> None:
        for handle, item in self._waiting.values():
            handle.cancel()
            unstarted.append(item)
        self._waiting.clear()
        if acks := [*self.acks_sent, *self.acks]:
            await self.connector.send("XACK", self.stream, self.group, *acks)
        self.acks.clear()
        self.acks_sent.clear()
        # Park them: idle "forever" so the next XAUTOCLAIM takes them at once, with the
        # delivery count set to the attempts really made (the next delivery adds one).
        made: dict[int, list[Any]] = {}
        for item in started:
            made.setdefault(item[ATTEMPT], []).append(item[ID])
        for item in unstarted:
            made.setdefault(item[ATTEMPT] - 1, []).append(item[ID])
        for count, ids in made.items():
            await self.connector.send(
                "XCLAIM", self.stream, self.group, self.consumer, 0, *ids,
                "IDLE", PARKED_IDLE_MS, "RETRYCOUNT", count, "JUSTID",
            )  # fmt: skip
        if made:
            log.info("%s: handed back %d entries", self, len(started) + len(unstarted))


def _headers_field(item: StreamItem) -> bytes:
    """What an entry has beside its ``data`` (its ``headers``), where ``ASKS`` would be."""
    fields = item[FIELDS]
    return b"" if len(fields) < 3 else b"".join(fields[2:])
