"""What a stream consumer holds and keeps from its peers (a base class of
``stream.StreamConsumer``): the entries of each read (``Batch``), kept fresh with ``XCLAIM
... JUSTID`` while any of them is unsettled so that no peer reclaims them; the entries of
dead consumers, reclaimed with ``XAUTOCLAIM`` (keeping its cursor) once idle for
``claim_idle``; and consumers of stopped workers, forgotten once they hold nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import anyio

from ..connection import REDIS_ERRORS
from ..protocol import scripts
from ..protocol.replies import text
from .base import log

if TYPE_CHECKING:
    from ..config import FlowConfig
    from ..connection import Connector


class Batch:
    """Entries read in one request; kept fresh while any of them is unsettled."""

    __slots__ = ("ids", "left", "touched")

    def __init__(self, ids: list[bytes]) -> None:
        self.ids = ids
        self.left = len(ids)
        self.touched = time.monotonic()


#: How long a stop waits for a round of housekeeping in flight (``Claims.end_maintenance``).
SHIELD_FOR: Final = 1.0

#: A stream entry: its id (``ID``), its flat field list (``FIELDS``), the batch it was read
#: in (``BATCH``) and its delivery count (``ATTEMPT``); a plain tuple, as a queue item.
StreamItem = tuple[bytes, list[bytes], Batch, int]
ID: Final = 0
FIELDS: Final = 1
BATCH: Final = 2
ATTEMPT: Final = 3


class Claims:
    """The housekeeping of a stream consumer: touch, reclaim, forget."""

    # What ``StreamConsumer`` (and its bases) provide.
    stream: str
    group: str
    consumer: str
    config: FlowConfig
    connector: Connector
    halted: bool
    _batches: list[Batch]
    _cursor: bytes
    _connected: bool
    #: The round of ``maintain`` in flight, shielded from the stop.
    _round: anyio.CancelScope | None = None

    if TYPE_CHECKING:

        async def _acker(self) -> None: ...

        def want(self) -> int: ...

        async def _dispatch(self, batch: Batch, items: list[StreamItem]) -> None: ...

        def unsent(self) -> list[Any]: ...

        def _held(self) -> set[bytes]: ...

        async def refresh_cancels(self) -> None: ...

    async def maintain(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._acker)
            last_claim = last_forget = 0.0
            forget = self.config.forget_consumers_after
            while True:
                # A stop cancels this loop, then hands our entries back. A call cancelled
                # while in flight still runs in Redis, perhaps after the hand-back: a claim
                # would take the handed-back entries (one more delivery counted, idle again
                # for claim_idle) and its reply, with them, would be dropped. So each round
                # ends before the stop goes on (within SHIELD_FOR of the stop: a dead server
                # must not hold it up), and what it claimed is handed back with the rest.
                with anyio.CancelScope(shield=True) as self._round:
                    try:
                        await self._touch()
                        now = time.monotonic()
                        if now - last_claim >= self.config.claim_interval and not self.halted:
                            last_claim = now
                            await self._reclaim()
                        if forget is not None and now - last_forget >= min(forget / 2, 60):
                            last_forget = now
                            await self._forget(forget)
                    except REDIS_ERRORS:
                        pass
                    except Exception:  # a bug here must not stop the handlers: log, go on
                        log.exception("%s: maintenance failed", self)
                self._round = None
                await anyio.sleep(self.config.tick)

    def end_maintenance(self) -> None:
        if self._round is not None:
            self._round.deadline = anyio.current_time() + SHIELD_FOR

    async def _touch(self) -> None:
        """Reset the idle time of entries we still hold, so no peer reclaims them; while the
        fetch link is down, send its acks through the shared connections (before a peer's
        reclaim takes those entries)."""
        if not self._connected and (unsent := self.unsent()):
            await self.connector.send("XACK", self.stream, self.group, *unsent)
        self._batches = [b for b in self._batches if b.left > 0]
        stale = time.monotonic() - self.config.claim_idle / 3
        ids: list[Any] = []
        for batch in self._batches:
            if batch.touched < stale:
                batch.touched = time.monotonic()
                ids += batch.ids
        if ids:
            await self.connector.send(
                "XCLAIM", self.stream, self.group, self.consumer, 0, *ids, "JUSTID"
            )

    async def _reclaim(self) -> None:
        """Take entries idle for ``claim_idle`` (their consumer died), once our unanswered
        acks went out (their entries look idle too); one we hold (a failover kept us from
        touching it) is never delivered again."""
        n = self.want()
        if n <= 0:
            return
        if unsent := self.unsent():
            await self.connector.send("XACK", self.stream, self.group, *unsent)
        await self.refresh_cancels()  # before the claim: nothing awaits between it and dispatch
        call = scripts.stream_claim(
            self.stream, self.group, self.consumer, int(self.config.claim_idle * 1000),
            self._cursor, n,
        )  # fmt: skip
        cursor, entries, _deleted = await self.connector.run(call)
        self._cursor = cursor
        held = self._held()
        entries = [e for e in entries if e[0] not in held]
        if entries:
            log.warning("%s: reclaimed %d idle entries", self, len(entries))
            batch = Batch([e[0] for e in entries])
            await self._dispatch(batch, [(e[0], e[1], batch, int(e[2])) for e in entries])

    async def _forget(self, after: float) -> None:
        """Delete consumers of our group that hold nothing and were not seen for ``after``
        seconds (workers that stopped or died), so the group does not grow with restarts."""
        call = scripts.stream_forget(self.stream, self.group, int(after * 1000), self.consumer)
        gone = await self.connector.run(call)
        if gone:
            names = ", ".join(text(g) for g in gone)
            log.info("%s: deleted %d idle consumers: %s", self, len(gone), names)
