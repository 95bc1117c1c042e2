"""Pub/Sub channels, at-most-once (as Redis Pub/Sub is).

One ``ChannelHub`` per flow owns one connection that SUBSCRIBEs every exact channel and
PSUBSCRIBEs every pattern of the process, reads as fast as Redis sends (a slow reader is
disconnected by the server's ``client-output-buffer-limit pubsub``, silently), and hands
each message to its handler's bounded buffer. When a buffer is full the message is dropped,
counted and logged: the alternative is the server dropping the whole connection. After a
reconnect the hub subscribes again; messages published meanwhile are gone.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
from anyio.abc import TaskStatus
from pydantic import ValidationError

from ..connection import CONNECTION_ERRORS, Backoff
from ..errors import DecodeError
from ..message import Kind, Message
from ..protocol.envelope import content_id, payload_of, split
from .base import Consumer, log
from .contract import Context
from .guards import Guards

if TYPE_CHECKING:
    from ..handler import Handler

GLOB_CHARS = frozenset("*?[")


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

    def __init__(self, handler: Handler, ctx: Context, guards: Guards) -> None:
        super().__init__(handler, ctx, guards)
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
            raise DecodeError(f"invalid payload: {exc}") from None
        except ValueError as exc:
            raise DecodeError(f"undecodable payload: {exc}") from None

    def message(self, item: ChannelItem, value: Any) -> Message[Any]:
        raw = item[DATA]
        head, payload = split(raw)
        headers = {"channel": item[CHANNEL].decode("utf-8", "replace")}
        source = self.handler.source
        if head is None:
            return Message(content_id(raw), source, item[ATTEMPT], None, headers, payload, value)
        return Message(
            head[0], source, item[ATTEMPT], Message.time(head[1]),
            {**(head[3] or {}), **headers}, payload, value,
        )  # fmt: skip

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
            *(part for pair in {**fields, "channel": item[CHANNEL]}.items() for part in pair),
        )  # fmt: skip

    async def release(self, started: list[ChannelItem], unstarted: list[ChannelItem]) -> None:
        for handle in self._waiting:
            handle.cancel()
        lost = len(started) + len(unstarted) + len(self._waiting)
        if lost:
            log.warning("%s: %d channel messages were not handled before stopping", self, lost)


class ChannelHub:
    """One Pub/Sub connection for every channel handler of a flow."""

    def __init__(self, consumers: list[ChannelConsumer], ctx: Context) -> None:
        self.exact: dict[bytes, ChannelConsumer] = {}
        self.patterns: dict[bytes, ChannelConsumer] = {}
        for consumer in consumers:
            name = consumer.handler.source.name.encode()
            (self.patterns if consumer.pattern else self.exact)[name] = consumer
        self.link = ctx.connector.link(role="pubsub")
        self.backoff = Backoff("pubsub", ctx.config.give_up_after)
        self.last_read = 0.0
        self.live = False  # subscribed and reading: only then may the watchdog write

    async def _subscribe(self) -> None:
        self.live = False
        await self.link.open()
        commands: list[list[Any]] = []
        if self.exact:
            commands.append(["SUBSCRIBE", *self.exact])
        if self.patterns:
            commands.append(["PSUBSCRIBE", *self.patterns])
        await self.link.send(*commands)
        for _ in range(len(self.exact) + len(self.patterns)):  # one confirmation each
            await self.link.read()
        self.last_read = anyio.current_time()
        self.live = True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe (then report ready) and dispatch until cancelled."""
        await self._subscribe()
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watchdog)
                while True:
                    try:
                        await self._read()
                    except CONNECTION_ERRORS as exc:
                        self.live = False
                        await self.link.close()
                        await self.backoff.wait(exc)
                        try:
                            await self._subscribe()
                            self.backoff.ok()
                        except CONNECTION_ERRORS:
                            continue
        finally:
            with anyio.CancelScope(shield=True):
                await self.link.close()

    async def _read(self) -> None:
        exact, patterns = self.exact, self.patterns
        now = asyncio.get_running_loop().time
        async for replies in self.link.replies():
            for reply in replies:
                kind = reply[0]
                if kind == b"message":
                    exact[reply[1]].push(reply[1], reply[2])
                elif kind == b"pmessage":
                    patterns[reply[1]].push(reply[2], reply[3])
            self.last_read = now()

    async def _watchdog(self) -> None:
        """PING a quiet connection; drop it if even that gets no answer (half-open TCP)."""
        while True:
            await anyio.sleep(5)
            if not self.live:  # reconnecting: a write now would reopen the connection
                continue
            quiet = anyio.current_time() - self.last_read
            if quiet > 30:
                log.warning("pubsub: no reply for %.0fs; reconnecting", quiet)
                self.live = False
                await self.link.close()
            elif quiet > 5:
                try:
                    await self.link.send(["PING"])
                except CONNECTION_ERRORS:
                    pass
