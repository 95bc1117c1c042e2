"""Pub/Sub channels, at-most-once (as Redis Pub/Sub is).

One ``ChannelHub`` per flow owns one connection that SUBSCRIBEs every exact channel and
PSUBSCRIBEs every glob pattern of the process, reads as fast as Redis sends (a slow reader
is disconnected by the server's ``client-output-buffer-limit pubsub``, silently), and hands
each message to its handler's bounded buffer. When a buffer is full the message is dropped,
counted and logged: the alternative is the server dropping the whole connection. After a
reconnect the hub subscribes again; messages published meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from pydantic import ValidationError

from ..codec import content_id, payload_of, split
from ..connection import CONNECTION_ERRORS, Backoff
from ..message import Message
from .base import Consumer

if TYPE_CHECKING:
    from ..app import Settings

log = logging.getLogger("redisflow")

GLOB_CHARS = frozenset("*?[")


def is_pattern(channel: str) -> bool:
    """Whether a channel name is a glob pattern (PSUBSCRIBE) rather than a channel."""
    return any(c in GLOB_CHARS for c in channel)


class ChannelConsumer(Consumer):
    """The worker pool of one channel handler; the hub feeds it."""

    def __init__(self, handler: Any, settings: Settings) -> None:
        super().__init__(handler, settings)
        self._stop = anyio.Event()
        self._validate = handler.adapter.validator.validate_json
        self.buffer = max(settings.channel_buffer, self.options.concurrency)
        self._waiting: set[asyncio.TimerHandle] = set()

    def push(self, channel: bytes, data: bytes) -> None:
        """Take one message from the hub, or drop it if the buffer is full."""
        if len(self._dq) >= self.buffer:
            self.stats.dropped += 1
            if self.stats.dropped in (1, 10, 100, 1000) or not self.stats.dropped % 10000:
                log.warning(
                    "%s: handlers cannot keep up; %d messages dropped so far (buffer %d)",
                    self,
                    self.stats.dropped,
                    self.buffer,
                )
            return
        self.feed(((channel, data, 1),))

    async def idle(self) -> bool:
        return not self.backlog and not self._waiting

    async def fetch_loop(self) -> None:
        await self._stop.wait()

    def interrupt(self) -> None:
        self._stop.set()

    def decode(self, item: Any) -> Any:
        try:
            return self._validate(payload_of(item[1]))
        except ValidationError as exc:
            raise self.invalid(exc) from None
        except ValueError as exc:
            raise self.invalid(exc) from None

    def message(self, item: Any, value: Any) -> Message[Any]:
        raw = item[1]
        head, payload = split(raw)
        headers = {"channel": item[0].decode()}
        if head is None:
            return Message(
                content_id(raw), self.handler.source, item[2], None, headers, payload, value
            )
        return Message(
            head[0],
            self.handler.source,
            item[2],
            Message.time(head[1]),
            {**(head[3] or {}), **headers},
            payload,
            value,
        )

    def attempt(self, item: Any) -> int:
        attempt: int = item[2]
        return attempt

    def raw(self, item: Any) -> bytes:
        data: bytes = item[1]
        return data

    async def retry(self, item: Any, delay: float, count: bool = True) -> None:
        # Pub/Sub cannot deliver again: the retry is held in memory, lost if the process dies.
        again = (item[0], item[1], item[2] + count)

        def redeliver() -> None:
            self._waiting.discard(handle)
            self.feed((again,))

        handle = asyncio.get_running_loop().call_later(delay, redeliver)
        self._waiting.add(handle)

    async def bury(self, item: Any, fields: dict[Any, Any]) -> None:
        fields["channel"] = item[0]
        await self.write_dead(fields)

    async def release(self, started: list[Any], unstarted: list[Any]) -> None:
        for handle in self._waiting:
            handle.cancel()
        lost = len(started) + len(unstarted) + len(self._waiting)
        if lost:
            log.warning("%s: %d channel messages were not handled before stopping", self, lost)


class ChannelHub:
    """One Pub/Sub connection for every channel handler of a flow."""

    def __init__(self, consumers: list[ChannelConsumer], settings: Settings) -> None:
        self.settings = settings
        self.exact: dict[bytes, ChannelConsumer] = {}
        self.patterns: dict[bytes, ChannelConsumer] = {}
        for consumer in consumers:
            name = consumer.handler.source.name.encode()
            (self.patterns if is_pattern(consumer.handler.source.name) else self.exact)[name] = (
                consumer
            )
        self.link = settings.connector.link()
        self.backoff = Backoff("pubsub", settings.give_up_after)
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
