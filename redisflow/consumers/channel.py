"""Pub/Sub channels, at-most-once (as Redis Pub/Sub is).

The ``ChannelHub`` of a flow (``pubsub.py``) subscribes for every channel handler, reads as
fast as Redis sends (a slow reader is disconnected by the server's ``client-output-buffer-
limit pubsub``, silently), and hands each message to its handler's bounded buffer. When a
buffer is full the message is dropped, counted and logged: the alternative is the server
dropping the whole connection.
"""

from __future__ import annotations

import asyncio
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
from pydantic import ValidationError

from ..errors import DecodeError
from ..message import Kind, Message
from ..protocol.envelope import content_id, payload_of, split
from .base import Consumer, log
from .contract import Context
from .verdicts import invalid

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..handler import Handler

#: A `[` alone (`news[1]`) is not enough: brackets are common in literal names, and a
#: class needs `pattern=True` (docs/security.md, "Least privilege").
GLOB_CHARS = frozenset("*?")


def is_pattern(channel: str) -> bool:
    """Whether a channel name looks like a glob pattern (PSUBSCRIBE) rather than a channel."""
    return any(c in GLOB_CHARS for c in channel)


#: A Pub/Sub message: the channel it was published to (``CHANNEL``), its bytes (``DATA``)
#: and its attempt (``ATTEMPT``); a plain tuple, as a queue item.
ChannelItem = tuple[bytes, bytes, int]
CHANNEL: Final = 0
DATA: Final = 1
ATTEMPT: Final = 2


class ChannelConsumer(Consumer[ChannelItem]):
    """The worker pool of one channel handler; the hub feeds it."""

    kind: ClassVar[Kind] = "channel"

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:
        super().__init__(handler, ctx, middleware, key)
        self._stop = anyio.Event()
        self._validate = handler.adapter.validator.validate_json
        self.buffer = max(ctx.config.channel_buffer, self.options.concurrency)
        self._waiting: set[asyncio.TimerHandle] = set()

    @property
    def pattern(self) -> bool:
        """Whether this handler subscribes to a pattern (PSUBSCRIBE)."""
        return bool(self.options.pattern)

    def push(self, channel: bytes, data: bytes) -> None:
        """Take one message from the hub, or drop it if the buffer is full."""
        if len(self._dq) >= self.buffer:
            self.stats.dropped += 1
            if self.stats.dropped in (1, 10, 100, 1000) or not self.stats.dropped % 10000:
                log.warning(
                    "%s: handlers cannot keep up; %d messages dropped so far (buffer %d)",
                    self, self.stats.dropped, self.buffer,
                )  # fmt: skip
            return
        self.feed(((channel, data, 1),))

    async def connect(self) -> None:
        """Nothing to open: the hub subscribes for every channel handler."""

    async def idle(self) -> bool:
        return not self.backlog and not self._waiting

    async def fetch_loop(self) -> None:
        await self._stop.wait()

    def interrupt(self) -> None:
        self._stop.set()

    def decode(self, item: ChannelItem) -> Any:
        try:
            return self._validate(payload_of(item[DATA]))
        except ValidationError as exc:
            raise invalid(exc) from None
        except ValueError as exc:
            raise DecodeError(f"undecodable payload: {exc}") from None

    def message(self, item: ChannelItem, value: Any) -> Message[Any]:
        raw = item[DATA]
        head, payload = split(raw)
        channel = item[CHANNEL].decode("utf-8", "replace")
        headers = {"channel": channel}
        source, most = self.handler.source, self.options.max_attempts
        if head is None:
            msg_id, attempt = content_id(raw), item[ATTEMPT]
            return Message(
                msg_id, source, attempt, None, headers, payload, value, most, channel=channel
            )
        return Message(
            head[0], source, item[ATTEMPT], Message.time(head[1]),
            {**(head[3] or {}), **headers}, payload, value, most, channel=channel,
        )  # fmt: skip

    def head(self) -> Callable[[ChannelItem], bytes]:
        return itemgetter(DATA)  # only an envelope has headers

    def dead_extra(self, item: ChannelItem) -> dict[str, Any]:
        return {"channel": item[CHANNEL]}

    def attempt(self, item: ChannelItem) -> int:
        return item[ATTEMPT]

    def raw(self, item: ChannelItem) -> bytes:
        return payload_of(item[DATA])

    def done(self, item: ChannelItem) -> None:
        """Nothing to acknowledge."""

    async def retry(self, item: ChannelItem, delay: float, count: bool = True) -> None:
        # Pub/Sub cannot deliver again: the retry is held in memory, lost if the process dies.
        again = (item[CHANNEL], item[DATA], item[ATTEMPT] + count)

        def redeliver() -> None:
            self._waiting.discard(handle)
            self.feed((again,))

        handle = asyncio.get_running_loop().call_later(delay, redeliver)
        self._waiting.add(handle)

    async def bury(self, item: ChannelItem, fields: dict[str, Any]) -> None:
        await self.connector.send(
            "XADD", self.keys.dead, "MAXLEN", "~", self.config.dead_maxlen, "*",
            *(part for pair in fields.items() for part in pair),
        )  # fmt: skip

    async def release(self, started: list[ChannelItem], unstarted: list[ChannelItem]) -> None:
        for handle in self._waiting:
            handle.cancel()
        lost = len(started) + len(unstarted) + len(self._waiting)
        if lost:
            log.warning("%s: %d channel messages were not handled before stopping", self, lost)
