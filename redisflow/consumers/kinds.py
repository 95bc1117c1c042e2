"""What each kind of source looks like from outside its consumer, described once: the Redis
type of its key, how deep it is, which commands its consumer runs (for ``redisflow check``),
and how a dead letter goes back to it. Metrics, stats, check and the dead letters read these
instead of branching on the kind (``TRAITS[kind]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..protocol import envelope, scripts
from ..protocol.priority import MAX_PRIORITY

if TYPE_CHECKING:
    from ..keys import Keys
    from ..message import Kind, Source
    from ..protocol.records import DeadLetter

#: A dead letter on its way back: its entry id, the item to write, and the third value
#: ``lua/dlq_replay.lua`` takes (a priority level, a channel, a stream entry's headers).
Letter = tuple[str, bytes, int | str]


@dataclass(frozen=True, slots=True)
class Traits:
    """One kind of source. ``redis_type``: what ``TYPE`` says of its key (None: a channel,
    which is no key). ``depth``: the command that measures what waits at one key (a length,
    or a stream's consumer groups). ``delays``: retries and delayed sends wait in
    ``Keys.delayed`` (a stream retries in its pending list, a channel in memory).
    ``internal``: its messages wait in a list of its own under the prefix (``Keys.ticks``,
    a schedule's runs), not in a key of its name."""

    kind: Kind
    redis_type: str | None
    depth: tuple[str, ...] | None
    delays: bool
    internal: bool = False

    @property
    def keyed(self) -> bool:
        """Whether the source is a Redis key (all but channels)."""
        return self.redis_type is not None

    @property
    def named(self) -> bool:
        """Whether the source's name is its Redis key (not a channel's, not a schedule's)."""
        return self.keyed and not self.internal

    def holder(self, key: str, keys: Keys) -> str:
        """The key where the messages of ``key`` wait: itself, or a schedule's internal
        queue."""
        return keys.ticks if self.internal else key

    @property
    def grouped(self) -> bool:
        """Whether the source is read through consumer groups (streams)."""
        return self.redis_type == "stream"

    def keys(self, key: str, keys: Keys) -> list[str]:
        """The keys a consumer of ``key`` (a source or one partition) reads and writes (a
        schedule: its internal queue and its state)."""
        if not self.keyed:
            return []
        own = [keys.ticks, keys.schedule] if self.internal else [key]
        return [*own, keys.dead, keys.delayed, keys.cancels, keys.cancels_version]

    def commands(
        self, source: Source, key: str, keys: Keys, *, pattern: bool, sharded: bool
    ) -> Iterator[Sequence[Any]]:
        """The commands its consumer runs on ``key``, one per key or channel it touches
        (what ``redisflow check`` asks ``ACL DRYRUN`` about)."""
        if not self.keyed:
            subscribe = "PSUBSCRIBE" if pattern else "SSUBSCRIBE" if sharded else "SUBSCRIBE"
            yield [subscribe, source.name]
            return
        for touched in self.keys(key, keys):
            yield ["EVALSHA", scripts.QUEUE_FETCH.sha, 1, touched]
        if self.grouped:
            group = source.group or ""
            yield ["XREADGROUP", "GROUP", group, "c", "COUNT", 1, "STREAMS", key, ">"]
            yield ["XACK", key, group, "0-1"]

    def letter(
        self,
        dead: DeadLetter,
        data: bytes,
        headers: dict[str, str] | None,
        priority: int | None,
        channel: str,
    ) -> Letter:
        """A dead letter as ``lua/dlq_replay.lua`` sends it back: a queue item gets a fresh
        envelope (its message id and ``headers`` kept), a priority item its recorded level
        (or ``priority``), a stream entry its headers as JSON, a channel message an
        envelope only when it has headers."""
        if self.redis_type in ("list", "zset"):
            item = envelope.envelope(data, dead.message_id or envelope.new_id(), headers=headers)
            level = priority if priority is not None else min(dead.priority or 0, MAX_PRIORITY)
            return dead.id, item, level
        if self.redis_type == "stream":
            return dead.id, data, orjson.dumps(headers).decode() if headers else ""
        if headers:
            data = envelope.envelope(data, dead.message_id, headers=headers)
        return dead.id, data, dead.channel or channel


TRAITS: dict[Kind, Traits] = {
    "queue": Traits("queue", "list", ("LLEN",), delays=True),
    "priority": Traits("priority", "zset", ("ZCARD",), delays=True),
    "stream": Traits("stream", "stream", ("XINFO", "GROUPS"), delays=False),
    "channel": Traits("channel", None, None, delays=False),
    "schedule": Traits("schedule", "list", ("LLEN",), delays=True, internal=True),
}
#: The depth command of each Redis type a source may have.
DEPTH = {t.redis_type: t.depth for t in TRAITS.values() if t.redis_type and t.depth}
