"""Request/reply over every kind: ``request`` sends and waits for the handler's result,
``result`` waits for the result of a message sent earlier (``result_ttl=``).

The waits are pushed, never polled: ``features/inbox.py`` subscribes to the result's
channel before the message is sent, on one Pub/Sub connection per node that every wait of
the process shares; ``features/results.py`` says what a result record holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import orjson
from pydantic import TypeAdapter

from .errors import ConfigError, RemoteError, RequestTimeout
from .features.results import RESULT_TTL, ask, own_id, read
from .protocol import envelope

if TYPE_CHECKING:
    from .features.inbox import Inbox

T = TypeVar("T")
RequestKind = Literal["queue", "priority", "stream", "channel"]
_adapters: dict[Any, TypeAdapter[Any]] = {}


def _decode(json: bytes, model: Any) -> Any:
    if model is Any:
        return orjson.loads(json)
    adapter = _adapters.get(model)
    if adapter is None:
        adapter = _adapters[model] = TypeAdapter(model)
    return adapter.validate_json(json)


class Requests:
    """``request`` and ``result``, a base class of ``Client`` (beside its producers)."""

    inbox: Inbox
    enqueue: Callable[..., Awaitable[Any]]
    enqueue_priority: Callable[..., Awaitable[Any]]
    append: Callable[..., Awaitable[Any]]
    publish: Callable[..., Awaitable[Any]]

    @overload
    async def request(
        self, name: str, data: Any, *, kind: RequestKind = ..., timeout: float | None = ...,
        model: type[T], result_ttl: float = ..., headers: dict[str, str] | None = ...,
        **options: Any,
    ) -> T: ...  # fmt: skip

    @overload
    async def request(
        self, name: str, data: Any, *, kind: RequestKind = ..., timeout: float | None = ...,
        result_ttl: float = ..., headers: dict[str, str] | None = ..., **options: Any,
    ) -> Any: ...  # fmt: skip

    async def request(
        self,
        name: str,
        data: Any,
        *,
        kind: RequestKind = "queue",
        timeout: float | None = None,
        model: Any = Any,
        result_ttl: float = RESULT_TTL,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> Any:
        """Send ``data`` to the source ``name`` of ``kind`` (``queue``, ``priority``,
        ``stream``, ``channel``: the first channel handler to reply answers) and return its
        handler's result, decoded JSON or validated as ``model``. ``options`` go to the
        producer (``priority=``, ``key=``, ``group=``, ``delay=``, ``maxlen=``...).

        ``RemoteError`` when the handler failed for good (``where``: dead-lettered,
        rejected, cancelled); ``RequestTimeout`` (a ``TimeoutError``) after ``timeout``
        seconds without a result: the message was sent and still runs, and its result is
        kept ``result_ttl`` seconds for ``result(exc.id)``. A channel without a subscriber
        raises ``RemoteError(where="undelivered")`` at once."""
        send = self._producer(kind)
        if "dedup_key" in options:
            raise ConfigError("a request cannot be deduplicated (its duplicate would not reply)")
        rid = envelope.new_id()
        asked = ask(dict(envelope.encode_headers(headers) or {}), result_ttl, rid)

        async def sent() -> None:
            receivers = await send(name, data, headers=asked, **options)
            if kind == "channel" and not receivers:
                raise RemoteError("undelivered", f"no subscriber on channel {name!r}", rid)

        record = await self.inbox.wait(rid, timeout, sent, read_first=False)
        if record is None:
            raise RequestTimeout(f"no result for request {rid} within {timeout}s", rid)
        return _decode(read(record, rid), model)

    @overload
    async def result(
        self, message_id: str, *, timeout: float | None = ..., model: type[T],
        stream: str | None = ...,
    ) -> T | None: ...  # fmt: skip

    @overload
    async def result(
        self, message_id: str, *, timeout: float | None = ..., stream: str | None = ...
    ) -> Any: ...

    async def result(
        self,
        message_id: str,
        *,
        timeout: float | None = 0,
        model: Any = Any,
        stream: str | None = None,
    ) -> Any:
        """The result of a message sent with ``result_ttl=`` (or to a handler with
        ``result_ttl``), or of a request that timed out (its ``RequestTimeout.id``):
        decoded JSON, or validated as ``model``. Waits up to ``timeout`` seconds for it
        (default 0: look once; None: for ever), and returns None when there is none by
        then (not yet, expired, or never asked for): a handler that returns None is told
        apart by ``request``, or by returning a value. ``stream``: the stream of an
        ``append`` entry id. ``RemoteError`` when the handler failed for good."""
        rid = own_id(message_id, stream)
        record = await self.inbox.wait(rid, timeout)
        if record is None:
            return None
        return _decode(read(record, rid), model)

    def _producer(self, kind: str) -> Callable[..., Awaitable[Any]]:
        producers = {
            "queue": self.enqueue,
            "priority": self.enqueue_priority,
            "stream": self.append,
            "channel": self.publish,
        }
        if kind not in producers:
            raise ConfigError(f"kind must be one of {', '.join(producers)}, got {kind!r}")
        return producers[kind]
