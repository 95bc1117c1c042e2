"""The prefetch window and the acks of a consumer (a base class of ``base.Consumer``).

A consumer holds at most ``prefetch`` messages; a fetch asks for what fits (``want``), or
waits for a settled message to make room. Acks of settled messages ride on the next fetch
(``take_acks``, answered with its reply); while the fetch link blocks in Redis, ``_acker``
sends them through the shared connections after 5 ms, so a burst shares one call. After a
lost connection, acks whose reply never came are sent again, and so are those answered in the
last ``RESEND`` seconds: a primary that acknowledged them may have died before its replica
had them (replication is asynchronous), and the promoted replica would deliver them again.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ..connection import REDIS_ERRORS

if TYPE_CHECKING:
    from ..config import FlowConfig


#: Seconds an answered ack is kept to be sent again after a reconnect (a failover loses what
#: the dead primary had not replicated: well under a second on a healthy link).
RESEND = 1.0


class Window:
    """The prefetch window and pending acks of one consumer."""

    config: FlowConfig
    prefetch: int

    def __init__(self) -> None:
        self._blocked = False  # a request that may block in Redis is outstanding on ``link``
        self._room = anyio.Event()
        self._room_wanted = False  # the fetch loop waits for room: ``done`` must wake it
        self.acks: list[Any] = []  # settled; the ack is not sent yet
        self.acks_sent: list[Any] = []  # sent with the fetch whose reply is awaited
        self.acks_flushing: list[Any] = []  # sent by the acker, reply awaited
        self._ack_now = anyio.Event()
        self._answered: deque[tuple[float, list[Any]]] = deque()  # (when, acks): RESEND

    @property
    def backlog(self) -> int:
        """Messages held here: queued locally or in a handler."""
        raise NotImplementedError

    async def flush_acks(self, acks: list[Any]) -> None:
        """Send ``acks`` through the shared connections (while the fetch link blocks)."""

    def want(self) -> int:
        """How many messages the next fetch may take (0: wait for room)."""
        return max(0, min(self.config.batch_size, self.prefetch - self.backlog))

    async def wait_for_room(self) -> None:
        """Wait until a settled message makes room in the prefetch window."""
        self._room = anyio.Event()
        self._room_wanted = True
        await self._room.wait()

    def settled(self, ack: Any | None) -> None:
        """Note a settled message (``ack``: what to acknowledge, if anything)."""
        if ack is not None:
            self.acks.append(ack)
            if self._blocked:
                self._ack_now.set()
        if self._room_wanted:  # a plain bool: this runs once per message
            self._room_wanted = False
            self._room.set()

    def take_acks(self) -> list[Any]:
        """The acks to send with the next fetch (kept in ``acks_sent`` until its reply)."""
        acks, self.acks = self.acks, []
        self.acks_sent += acks
        return acks

    def acks_answered(self) -> None:
        """The fetch carrying ``acks_sent`` was answered."""
        if self.acks_sent:
            self._remember(self.acks_sent)
            self.acks_sent = []

    def _remember(self, acks: list[Any]) -> None:
        now = time.monotonic()
        answered = self._answered
        answered.append((now, acks))
        while answered[0][0] < now - RESEND:
            answered.popleft()

    def acks_unanswered(self) -> None:
        """After a lost connection: acks whose reply never came are sent again, and those
        answered in the last ``RESEND`` seconds (lost if a failover came with it)."""
        recent = [ack for when, acks in self._answered for ack in acks]
        self._answered.clear()
        self.acks[:0], self.acks_sent = [*recent, *self.acks_sent], []

    def unsent(self) -> list[Any]:
        """Every ack not known to be answered (to send before taking idle entries)."""
        return [*self.acks_sent, *self.acks_flushing, *self.acks]

    async def _acker(self) -> None:
        """Flush acks through the shared connections while the fetch loop waits in Redis."""
        while True:
            await self._ack_now.wait()
            self._ack_now = anyio.Event()
            await anyio.sleep(0.005)  # let a burst of completions share one call
            if self._blocked:
                await self.send_acks()

    async def send_acks(self) -> None:
        """Send the pending acks now, through the shared connections (those that fail go
        with the next request)."""
        if not self.acks:
            return
        acks, self.acks = self.acks, []
        self.acks_flushing += acks
        try:
            await self.flush_acks(acks)
            self._remember(acks)
        except REDIS_ERRORS:  # they go with the next request
            self.acks.extend(acks)
        except BaseException:  # cancelled at stop: release sends them
            self.acks.extend(acks)
            raise
        finally:
            del self.acks_flushing[: len(acks)]
