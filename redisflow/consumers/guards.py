"""What runs around a handler call when the handler asks for it (``Guards``): its
idempotency claim, its rate limit, status tracking, and the run-time observer of metrics.

A handler with none of these runs on the plain path of ``base.Consumer._work``; the guards
are built once per handler (``Guards.build``) and passed to its consumer, never patched in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ..idempotency import Defer, Idempotency, Skip
from ..keys import Keys
from ..ratelimit import Limiter
from ..tracking import Tracker

if TYPE_CHECKING:
    from ..config import FlowConfig
    from ..connection import Connector
    from ..handler import Handler
    from ..message import Message
    from ..tracking import Status
    from .contract import Settling

log = logging.getLogger("redisflow")

__all__ = ["Defer", "Guards", "Skip"]


@dataclass(frozen=True, slots=True)
class Guards:
    """The guards of one handler; ``active`` when any is set."""

    idempotency: Idempotency | None = None
    limiter: Limiter | None = None
    tracker: Tracker | None = None
    observe: Callable[[float], object] | None = None  # handler run time, in seconds

    @classmethod
    def build(
        cls,
        handler: Handler,
        config: FlowConfig,
        connector: Connector,
        observe: Callable[[float], object] | None = None,
    ) -> Guards:
        """The guards ``handler``'s options ask for (``observe``: a metrics histogram)."""
        options = handler.options
        keys = Keys(config.prefix, handler.source.name)
        track = config.track if options.track is None else options.track
        idempotency = None
        if options.idempotency_key is not None:
            claim = max(config.lease, options.timeout or 0) * 2
            idempotency = Idempotency(
                connector, keys, options.idempotency_key, options.idempotency_ttl, claim
            )
        return cls(
            idempotency,
            Limiter(connector, keys, options.rate_limit) if options.rate_limit else None,
            Tracker(connector, config.prefix, config.track_ttl) if track else None,
            observe,
        )

    @property
    def active(self) -> bool:
        """Whether any guard is set (else the consumer calls its handler directly)."""
        return bool(self.idempotency or self.limiter or self.tracker or self.observe)

    async def call(self, consumer: Settling[Any], item: Any, value: Any) -> None:
        """Call the handler of ``consumer`` on ``value`` inside the guards (raises Skip or
        Defer instead of calling it)."""
        msg = consumer.message(item, value)
        idem, limiter = self.idempotency, self.limiter
        record = token = ""
        if idem is not None:
            record = idem.record(value)
            token = await idem.claim(record)
        if limiter is not None:
            rate = limiter.rate
            wait = await limiter.try_acquire(str(rate.key(value)) if rate.key else "")
            if wait > 0:
                if idem is not None:
                    await idem.drop(record, token)
                raise Defer(wait, "rate limited")
        await self.track(consumer, msg, "processing")
        timeout = consumer.options.timeout
        began = time.perf_counter()
        try:
            call = consumer.invoke(value, msg)
            if timeout is None:
                await call
            else:
                with anyio.fail_after(timeout):
                    await call
        except Exception:
            if idem is not None:
                await idem.drop(record, token)
            raise
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - began)
        if idem is not None:
            try:
                await idem.done(record, token)
            except Exception as exc:  # handled: never run it again for a lost record
                log.warning("%s: idempotency record of %s not written (%r); its claim"
                            " expires instead", consumer, msg.id, exc)  # fmt: skip
        await self.track(consumer, msg, "completed")

    async def track(
        self, consumer: Settling[Any], msg: Message[Any], status: Status, error: str | None = None
    ) -> None:
        """Record a status change if the handler is tracked; best effort: a status record
        is never worth failing or repeating the message's own verdict."""
        if self.tracker is not None:
            try:
                await self.tracker.moved(msg, consumer.handler.name, status, error)
            except Exception as exc:  # lost connection, a full Redis, a foreign key
                log.warning("%s: status of message %s not recorded: %r", consumer, msg.id, exc)
