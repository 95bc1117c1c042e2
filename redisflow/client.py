"""``Client``: what a producer or an ops tool needs, over the connections of one process.

The producers (``produce.py``, its base class: publish, enqueue, enqueue_priority, append
and their ``_many`` forms) and the reads that go with what they wrote (status records,
priority levels, stream indexes, memory), for the sources of one prefix, on a single server
or a cluster, partitioned or not. A ``Flow`` is a ``Client`` with handlers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, overload

from .config import FlowConfig, RateLimit
from .connection import Connector
from .features.cancels import DEFAULT_REASON, DEFAULT_TTL, Cancels, check_cancel
from .features.groups import GroupedQueues, Groups
from .features.inbox import Inbox
from .features.indexes import StreamIndexes
from .features.memory import measure
from .features.partitions import Layouts, check_partitions
from .features.pauses import Paused, Pauses, check_target
from .features.ratelimit import Limiter
from .features.results import RESULT_TTL, Results, failure, own_id
from .features.tracking import MessageStatus, Tracker
from .handler import Produced
from .keys import Keys
from .message import Kind
from .middleware import check, produce_chain
from .produce import Producers
from .protocol import scripts
from .protocol.cancels import Mark
from .requests import Requests

T = TypeVar("T")


class Client(Producers, Requests):
    """Producers and reads over one process's connections, configured by ``config``.

    Build one directly for a process that only sends (``Client(FlowConfig.build(url))``).
    ``send`` runs any command, auto-pipelined. ``middleware``: objects whose ``produce``
    wraps every send (``redisflow.middleware``). Close it with ``aclose()`` (a running flow
    closes its own when it stops); the next call connects again.
    """

    def __init__(self, config: FlowConfig, middleware: Iterable[object] = ()) -> None:
        self.middleware: list[object] = []
        self.produced: list[Produced] = []  # what ``produces`` declared
        self._setup(config)
        for item in middleware:
            self.add_middleware(item)

    def _setup(self, config: FlowConfig) -> None:
        """Build the connections and what reads through them for ``config`` (checks the
        URL now)."""
        connector = Connector(config.url)
        self.config = config
        self.connector = connector
        self.layouts = Layouts(connector, config.prefix)
        self.grouped = GroupedQueues(connector, config.prefix)
        self.tracker = Tracker(connector, config.prefix, config.track_ttl)
        self.indexes = StreamIndexes(connector, config.prefix)
        self.pauses = Pauses(connector, config.prefix)
        self.results = Results(connector, config.prefix)  # ``results.failed`` for a cancel
        self.inbox = Inbox(connector, config.prefix)
        self.cancels = Cancels(connector, config.prefix)

    def add_middleware(self, middleware: object) -> None:
        """Add a middleware, inside those added before (the first added is the outermost);
        its ``produce`` wraps every send from now on. ConfigError for an object with
        neither an async ``consume`` nor an async ``produce``."""
        self.middleware.append(check(middleware))
        self.produce_chain = produce_chain(self.middleware)

    @property
    def open(self) -> bool:
        """Whether connections are open (or being opened)."""
        return self.connector.target is not None

    async def aclose(self) -> None:
        """Close the connections (the next call opens them again)."""
        await self.connector.aclose()  # and the inbox's

    async def send(self, *args: Any) -> Any:
        """Run one Redis command (auto-pipelined with concurrent calls); its raw reply."""
        return await self.connector.send(*args)

    async def send_many(self, *commands: Sequence[Any]) -> list[Any]:
        """Run several commands back to back in one round trip; their raw replies."""
        return await self.connector.send.many(*commands)

    def keys(self, name: str) -> Keys:
        """The auxiliary keys redisflow keeps for a queue, stream or channel ``name`` (of
        one partition, for a partitioned source: see ``partitions``)."""
        return Keys(self.config.prefix, name)

    def partitions(self, name: str, partitions: int) -> None:
        """Send to ``name`` over ``partitions`` partitions from this process (recorded in
        Redis if it is not, so that consumers read it), until consumers retire that layout;
        then to the current one. A process that registers a handler for ``name`` makes its
        own current; a producer learns it from Redis otherwise."""
        self.layouts.declare(name, check_partitions(name, partitions))

    def produces(
        self, name: str, payload: Any = Any, *, kind: Kind = "queue", summary: str | None = None
    ) -> None:
        """Declare that this app sends messages of type ``payload`` to the source ``name``
        (a ``kind``: queue, priority, stream or channel), for its AsyncAPI document
        (``redisflow docs``): a ``send`` operation with the payload's JSON Schema. Several
        types may be declared for one source. Documentation only: sends are not checked."""
        declared = Produced.build(name, payload, kind, summary)
        if not any(p.source == declared.source and p.payload == payload for p in self.produced):
            self.produced.append(declared)

    async def pause(self, name: str, *, group: str | None = None) -> None:
        """Pause the queue, priority queue, stream or schedule ``name``: every worker of
        every process of the prefix stops fetching it within about a second (workers that
        start later too) and finishes what it holds; producers go on. ``group``: one
        consumer group of a stream (None: every group). The state is kept in Redis until
        ``resume``. ``group`` on a queue consumed in fair groups (``groups=``): that group
        alone, at once for every worker (``features/groups.py``). ConfigError for a channel
        (it cannot wait), or a ``group`` on another source that is no stream."""
        kinds = await self.kinds(name)
        fair = await self._fair(name, group)
        check_target(name, group, kinds, fair=fair)
        if fair and group is not None:
            await self.groups(name).pause(group)
        await self.pauses.pause(name, group)
        await self.pauses_changed(True)

    async def resume(self, name: str, *, group: str | None = None) -> bool:
        """Resume what ``pause`` paused (``group`` None: all of ``name``, its groups paused
        one by one too); whether anything was paused. ConfigError for one group of a
        stream paused whole."""
        fair = await self._fair(name, group)
        check_target(name, group, (), fair=fair)
        resumed = False
        if await self.grouped.contains(name):  # its fair groups (all of them for None)
            groups = self.groups(name)
            for fair_group in [group] if group is not None else await groups.paused():
                resumed = await groups.resume(fair_group) or resumed
        resumed = await self.pauses.resume(name, group) or resumed
        await self.pauses_changed(False)
        return resumed

    async def cancel(
        self, name: str, message_id: str, *, reason: str = DEFAULT_REASON,
        group: str | None = None, ttl: float = DEFAULT_TTL, key: str | None = None,
    ) -> None:  # fmt: skip
        """Cancel the message ``message_id`` of the queue, priority queue or stream
        ``name`` (every partition): waiting (queued, delayed, waiting for a retry, an entry
        not yet delivered), no worker runs it; running, its handler is cancelled within
        about a second, wherever it runs (at the end of its ``msg.shield()``), and
        ``msg.cancelled`` is ``reason``. A cancelled message is acknowledged: not retried,
        not dead-lettered. The mark is kept ``ttl`` seconds, through restarts and the
        recovery of a dead worker's messages; a message due later than that runs.
        ``group``: one consumer group of a stream (None: every group). ``key``: the
        partition key the message was sent with (None: every partition is marked; a
        stream's entry id names an entry of one partition, and two partitions may hold the
        same id). ConfigError for a channel (it keeps no message)."""
        kinds = await self.kinds(name)
        check_cancel(name, message_id, kinds, group, ttl)
        if key is None:
            keys = await self.layouts.all_keys(name)
        else:
            keys = [await self.layouts.pick(name, key)]
        reason = reason or DEFAULT_REASON
        await self.cancels.cancel(keys, message_id, reason, group, ttl)
        # Its result's waiters learn it now, not when a worker meets the message (a delayed
        # one: at its due time); a result already written stays (the first record wins).
        rid = own_id(message_id, name if "stream" in kinds else None)
        ttl_ms = int(min(ttl, RESULT_TTL) * 1000)  # gone with the mark, at the latest
        await self.results.write(rid, failure("cancelled", reason), ttl_ms, first=True)

    async def cancelled(self, name: str) -> dict[str, Mark]:
        """The live cancel marks of the source ``name`` (all its partitions), by id."""
        return await self.cancels.marks(await self.layouts.all_keys(name))

    async def _fair(self, name: str, group: str | None) -> bool:
        """Whether ``group`` names a fair group of the queue ``name``."""
        return group is not None and await self.grouped.contains(name)

    async def pauses_changed(self, paused: bool) -> None:
        """Called after a pause (``paused``) or resume made by this client (a running flow
        applies it to its own consumers at once; others read it within 0.25 s)."""

    async def paused(self) -> list[Paused]:
        """The paused sources of the prefix (name, group, since when)."""
        return await self.pauses.read()

    async def kinds(self, name: str) -> set[str]:
        """The kinds of source (``queue``, ``stream``...) that flows of the prefix consume
        under ``name``, as they registered them at start."""
        return await self.pauses.kinds(name)

    async def priority_stats(self, queue: str) -> dict[int, int]:
        """How many messages wait in a priority queue (all its partitions) at each level in
        use, exactly (leased and delayed messages are not counted)."""
        counts: dict[int, int] = {}
        for key in await self.layouts.all_keys(queue):
            flat = await self.connector.run(scripts.priority_stats(key))
            for i in range(0, len(flat), 2):
                counts[int(flat[i])] = counts.get(int(flat[i]), 0) + int(flat[i + 1])
        return dict(sorted(counts.items()))

    @overload
    async def find(
        self,
        stream: str,
        *,
        limit: int = ...,
        newest_first: bool = ...,
        model: type[T],
        **criteria: Any,
    ) -> list[tuple[str, T]]: ...

    @overload
    async def find(
        self, stream: str, *, limit: int = ..., newest_first: bool = ..., **criteria: Any
    ) -> list[tuple[str, Any]]: ...

    async def find(
        self,
        stream: str,
        *,
        limit: int = 100,
        newest_first: bool = False,
        model: Any = Any,
        **criteria: Any,
    ) -> list[tuple[str, Any]]:
        """Entries of ``stream`` appended with ``index=`` whose fields equal ``criteria``, in
        stream order (``newest_first`` reverses it; across partitions, by entry id), at most
        ``limit``; one round trip per partition. Each is ``(entry id, payload)``, the payload
        validated as ``model`` (default: JSON)."""
        found: list[tuple[str, Any]] = []
        for key in await self.layouts.all_keys(stream):
            found += await self.indexes.find(key, limit, newest_first, model, criteria)
        found.sort(key=lambda entry: _entry_order(entry[0]), reverse=newest_first)
        return found[:limit]

    async def prune_indexes(self, stream: str) -> int:
        """Remove index entries of ``stream`` whose entries were trimmed away (``find``
        also drops those it meets); returns how many were removed. Appends with ``index``
        and a trim (``maxlen``/``minid``) run it every 1,000 calls per process."""
        return sum([await self.indexes.prune(key) for key in await self.layouts.all_keys(stream)])

    async def status(self, message_id: str) -> MessageStatus | None:
        """The status record of a tracked message (``track=True``), or None."""
        return await self.tracker.status(message_id)

    async def status_counts(self, source: str) -> dict[str, int]:
        """Counters of a tracked source: ``published`` and ``<handler>:<status>``."""
        return await self.tracker.counts(source)

    def groups(self, name: str, kind: str | None = None) -> Groups:
        """The fair groups of the queue (or priority queue: ``kind``, by default what the
        flows registered under ``name``) ``name``: ``pause``/``resume`` one, the
        ``backlogs`` of the largest (every partition)."""
        return Groups(self.connector, self.layouts, self.config.prefix, name, kind, self.kinds)

    def limiter(self, name: str, rate: RateLimit) -> Limiter:
        """A rate limiter shared by every process using the same ``name`` and prefix::

        limiter = flow.limiter("webhooks", RateLimit(10, per=60))
        async with limiter.acquire(url): ...
        """
        return Limiter(self.connector, self.keys(name), rate)

    async def memory(self, *names: str, channels: Iterable[str] = ()) -> dict[str, Any]:
        """Redis's ``used_memory``, and the type, length and bytes of every key redisflow
        keeps for the sources ``names``, every partition (see ``redisflow.memory``); the
        ``channels`` among them are no keys (a user may lack access to a key of that name)."""
        keys = [key for name in names for key in await self.layouts.all_keys(name)]
        return await measure(self.connector, self.config.prefix, keys, channels=set(channels))


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
