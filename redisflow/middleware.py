"""Middleware: one interception point around every handler attempt and every send.

A middleware is any object with either or both of these methods (``Middleware`` is a base
class whose defaults pass through)::

    async def consume(self, msg: Message, call_next) -> Any:
        # before the handler
        result = await call_next(msg)      # the rest of the chain, then the handler
        # after it; an exception that escapes fails the attempt like the handler's
        return result

    async def produce(self, out: Outgoing, call_next) -> Any:
        out.headers["x-tenant"] = tenant.get()   # reaches msg.headers in the consumer
        return await call_next(out)        # the rest of the chain, then the send

The first registered is the outermost, on both sides. Chains are built once (per handler,
per flow). Without one the consumer calls the handler directly and a producer writes
directly, building no ``Outgoing`` (docs/design.md, "Middleware"). The built-in
extras (idempotency, rate limits, status tracking, Prometheus timing) are consume
middleware the flow adds inside the user's, per handler.

A batch handler's chain is called once per batch, with a ``MessageBatch`` (a ``Message``
whose ``messages`` are the batch's); ``each`` helps a middleware that decides per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from .message import Kind, Message, MessageBatch

T = TypeVar("T")

ConsumeNext = Callable[["Message[Any]"], Awaitable[Any]]
ProduceNext = Callable[["Outgoing"], Awaitable[Any]]
#: A built produce chain: ``run(out, send)`` passes ``out`` through every middleware, then
#: to ``send``.
ProduceChain = Callable[["Outgoing", ProduceNext], Awaitable[Any]]

Reason = Literal["send", "retry", "replay"]


@dataclass(slots=True)
class Outgoing:
    """A send on its way through the produce chain, before its payload is encoded.

    ``kind`` and ``name``: where it goes (a channel, queue, priority queue or stream).
    ``payload``: what the caller gave (a ``*_many`` call: the list of payloads, ``many`` is
    True); for a retry or a replay, the payload's JSON bytes as stored. ``headers``: a
    mutable map of strings, written with the message and read back as ``msg.headers`` (on
    channels only with ``Flow(channel_headers=True)``, or headers given by the caller).
    ``reason``: ``send`` (a producer call), ``retry`` (a queue or priority-queue message
    written back for another attempt: ``attempt`` is that attempt), or ``replay`` (a dead
    letter sent back). ``id``: the message id when it is known before the send (retries,
    replays); a send's id is what ``call_next`` returns. ``options``: the call's other
    options (``delay``, ``priority``, ``dedup_key``...), for information.

    A middleware may change ``name`` (not for a retry or a replay: those go back where they
    came from), ``payload`` and ``headers``.
    """

    kind: Kind
    name: str
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    many: bool = False
    reason: Reason = "send"
    id: str | None = None
    attempt: int = 1
    options: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """A base class for middleware: both methods pass through; override either or both.
    Any object with an async ``consume`` and/or ``produce`` method of these signatures is a
    middleware too."""

    async def consume(self, msg: Message[Any], call_next: ConsumeNext) -> Any:
        """Wrap one handler attempt: ``call_next(msg)`` runs the rest and returns the
        handler's result. Raise to fail the attempt (``Retry``/``Reject`` steer it)."""
        return await call_next(msg)

    async def produce(self, out: Outgoing, call_next: ProduceNext) -> Any:
        """Wrap one send: ``call_next(out)`` sends it and returns the producer call's result
        (a message id, an entry id, a number of receivers...)."""
        return await call_next(out)


def takes(middleware: object, side: Literal["consume", "produce"]) -> bool:
    """Whether ``middleware`` has its own ``consume`` or ``produce`` (the base class's
    pass-through does not count: it would only cost a call)."""
    method = getattr(type(middleware), side, None)
    return method is not None and method is not getattr(Middleware, side)


def check(middleware: object) -> object:
    """``middleware`` if it has an async ``consume`` or ``produce``, else ConfigError."""
    import inspect

    from .errors import ConfigError

    if isinstance(middleware, type):
        raise ConfigError(f"middleware {middleware.__name__}: give an instance, not the class")
    found = [side for side in ("consume", "produce") if callable(getattr(middleware, side, None))]
    if not found:
        raise ConfigError(
            f"middleware {middleware!r} has neither a consume nor a produce method"
            " (subclass redisflow.Middleware, or define async consume/produce)"
        )
    for side in found:
        if not inspect.iscoroutinefunction(getattr(middleware, side)):
            raise ConfigError(f"middleware {middleware!r}: {side} must be an async method")
    return middleware


def consume_chain(middlewares: Sequence[object], handler: ConsumeNext) -> ConsumeNext:
    """``handler`` wrapped in the ``consume`` of each middleware, the first outermost."""
    call = handler
    for middleware in reversed(middlewares):
        if takes(middleware, "consume"):
            call = _consume_step(middleware.consume, call)  # type: ignore[attr-defined]
    return call


def _consume_step(consume: Callable[..., Awaitable[Any]], call_next: ConsumeNext) -> ConsumeNext:
    def step(msg: Message[Any]) -> Awaitable[Any]:
        return consume(msg, call_next)

    return step


def produce_chain(middlewares: Sequence[object]) -> ProduceChain | None:
    """What passes a send through the ``produce`` of each middleware (the first
    outermost), or None when none has one: the send is then called directly."""
    steps = [m.produce for m in middlewares if takes(m, "produce")]  # type: ignore[attr-defined]
    if not steps:
        return None

    def run(out: Outgoing, send: ProduceNext) -> Awaitable[Any]:
        call = send
        for produce in reversed(steps):
            call = _produce_step(produce, call)
        return call(out)

    return run


def _produce_step(produce: Callable[..., Awaitable[Any]], call_next: ProduceNext) -> ProduceNext:
    def step(out: Outgoing) -> Awaitable[Any]:
        return produce(out, call_next)

    return step


async def each(
    batch: MessageBatch[Any], check: Callable[[Message[Any]], Awaitable[T]]
) -> tuple[list[tuple[Message[Any], T]], list[tuple[Message[Any], BaseException]]]:
    """Run ``check`` on every message of ``batch`` at once (so their Redis calls share round
    trips): the messages it passed, with what it returned, and those it raised for (a
    ``Skip``, a ``Defer``, an error: what the message's verdict will be)."""
    messages = batch.messages
    results = await asyncio.gather(*(check(m) for m in messages), return_exceptions=True)
    passed: list[tuple[Message[Any], T]] = []
    failed: list[tuple[Message[Any], BaseException]] = []
    for msg, result in zip(messages, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):  # cancelled: not a verdict
                raise result
            failed.append((msg, result))
        else:
            passed.append((msg, result))
    return passed, failed
