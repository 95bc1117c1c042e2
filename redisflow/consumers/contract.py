"""What the parts of a consumer agree on: the run-time ``Context`` the consumers of a flow
share, their counters (``Stats``), and ``Settling``, what a consumer offers the code that
settles its messages (``verdicts.py``).
``base.Consumer`` implements ``Settling``; each kind implements the rest of ``Consumer``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    from ..config import FlowConfig, HandlerOptions
    from ..connection import Backoff, Connector
    from ..features.tracking import Status
    from ..handler import Handler
    from ..keys import Keys
    from ..message import Message
    from ..middleware import ProduceChain

Item = TypeVar("Item")
Item_contra = TypeVar("Item_contra", contravariant=True)


@dataclass(frozen=True)
class Context:
    """What the consumers of one running flow share (built by ``Flow.start``)."""

    config: FlowConfig
    connector: Connector
    worker_id: str
    resources: Mapping[Any, Any] = field(default_factory=dict)
    spawn: Callable[..., Any] = lambda fn: None  # starts a task in the flow's task group
    produce: ProduceChain | None = None  # the flow's produce middleware (retries, replays)


@dataclass(slots=True)
class Stats:
    """Counters of one consumer since it started (``FIELDS`` lists them, in this order)."""

    processed: int = 0
    retried: int = 0
    dead: int = 0
    dropped: int = 0
    reconnects: int = 0
    skipped: int = 0  # duplicates of an idempotency key already handled
    deferred: int = 0  # delivered again later by a rate limit or a running duplicate
    results: int = 0  # results written for their callers (``results.py``)
    cancelled: int = 0  # cancelled (Flow.cancel): not run, or interrupted

    FIELDS: ClassVar[tuple[str, ...]]

    def __str__(self) -> str:
        return " ".join(f"{name}={getattr(self, name)}" for name in self.FIELDS)


Stats.FIELDS = tuple(f.name for f in fields(Stats))


class Settling(Protocol[Item_contra]):
    """What verdicts use of a consumer of items of type ``Item_contra``."""

    handler: Handler
    options: HandlerOptions
    keys: Keys
    stats: Stats
    stopping: bool
    backoff: Backoff
    invoke: Callable[[Any, Any], Awaitable[Any]]

    def message(self, item: Item_contra, value: Any) -> Message[Any]:
        """The Message envelope of an item."""
        ...

    def attempt(self, item: Item_contra) -> int:
        """The delivery attempt of an item, 1 on first delivery."""
        ...

    def raw(self, item: Item_contra) -> bytes:
        """The payload bytes of an item, for the dead letters."""
        ...

    def dead_extra(self, item: Item_contra) -> dict[str, Any]:
        """What the kind adds to an item's dead letter."""
        ...

    async def retry(self, item: Item_contra, delay: float, count: bool = True) -> None:
        """Deliver the item again after ``delay`` seconds, then settle it."""
        ...

    async def bury(self, item: Item_contra, fields: dict[str, Any]) -> None:
        """Write the item to the dead letters, then settle it."""
        ...

    def keep(self, item: Item_contra) -> None:
        """Leave the item unsettled: it is handed back to Redis when the consumer stops."""
        ...

    async def track(self, msg: Message[Any], status: Status, error: str | None = None) -> None:
        """Record a status change of a tracked handler's message (best effort)."""
        ...

    async def reply_failed(self, item: Item_contra, failure: Any) -> None:
        """Record a final failure for the waiters of the item's result (best effort)."""
        ...


class Gate:
    """The concurrency the partitions of one handler share: ``free`` slots, taken without
    awaiting when there is one (``take``), else by ``wait``; each ``release`` hands its
    slot to the longest waiter. (``anyio.Semaphore`` checks for cancellation on every
    acquire, which cost ~1 µs per message here.)"""

    __slots__ = ("_waiters", "free")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot now, if there is one."""
        if self.free:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot (``take`` found none)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # handed a slot it will not use
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, if any."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
