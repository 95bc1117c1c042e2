"""Fair groups: one queue (or priority queue) whose messages belong to groups, typically
tenants, served round robin, each within the same ``GroupLimits`` across every worker.

``await flow.enqueue("jobs", job, group=tenant)`` puts a message at the end of its group's
own list (a sorted set for a priority queue: priority order within the group); a message
sent without a group belongs to the default group, whose list is the queue's own key (so
another client's ``RPUSH jobs ...`` lands there too). Every group with messages that may be
served is in the ring, a sorted set scored by turn: a consumer's fetch takes a share of its
batch from each group in ring order and sends the group to the end of the ring, so a group
with one message waits for one turn of the ring, never behind another group's backlog.
Concurrency and rate limits are decided in the fetch script: a group at its limit leaves
the ring until a message of it finishes or its rate has room (``lua/group_fetch.lua``);
a paused group leaves it until resumed. Every group script declares the source's fixed
keys and builds a group's own keys from the source's base, so all share its slot.

This module is the client side: the push (``push_call``), delayed members, pausing and
the backlogs of the largest groups (``Groups``); ``consumers/groups.py`` consumes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import to_ms
from ..errors import ConfigError
from ..keys import Keys, grouped_key
from ..protocol import scripts
from ..protocol.priority import delayed_member as priority_member
from ..protocol.replies import text
from . import compound

if TYPE_CHECKING:
    from ..connection import Connector, Sender, WaitingSender
    from .partitions import Layouts

#: How long a process trusts what it read of the grouped queues, in seconds (as layouts).
GROUPED_TTL = 5.0
#: The longest group name, in bytes (a key embeds it).
MAX_GROUP = 512
#: Marks a delayed member of a named group: ``\x1d<length>:<group><rest>``.
GROUP_MARK = b"\x1d"


def check_group(group: object, where: str = "group") -> str | None:
    """``group`` if it names a group (None and ``""`` are the default group: None)."""
    if group is None or group == "":
        return None
    if not isinstance(group, str):
        raise ConfigError(f"{where} must be a string, got {group!r}")
    if len(group.encode("utf-8", "surrogatepass")) > MAX_GROUP:
        raise ConfigError(f"{where} is longer than {MAX_GROUP} bytes: {group[:40]!r}...")
    return group


def mode(kind: str) -> str:
    """The mode of the group scripts for a queue of ``kind``: 'list' or 'zset'."""
    return "zset" if kind == "priority" else "list"


def delayed_member(group: str | None, rest: bytes) -> bytes:
    """The delayed-set member of a message of ``group`` (``rest``: the item, or a priority
    queue's ``<priority>:<item>``); the default group's is ``rest`` itself."""
    if not group:
        return rest
    name = group.encode()
    return b"%s%d:%s%s" % (GROUP_MARK, len(name), name, rest)


def push_call(
    keys: Keys,
    kind: str,
    group: str | None,
    items: list[Any],
    *,
    dedup: str | None = None,
    ttl_ms: int = 0,
) -> scripts.Call:
    """The script call that adds ``items`` (a list's items, or priority/item pairs) to
    ``group`` of the source ``keys`` and wakes its consumers."""
    name = group or ""
    return scripts.group_push(
        keys.groups, keys.base, mode(kind), name, keys.group(name), keys.seq, items,
        dedup=dedup, ttl_ms=ttl_ms,
    )  # fmt: skip


async def push(
    connector: Connector,
    keys: Keys,
    kind: str,
    group: str | None,
    items: list[tuple[int, bytes]],
    *,
    delay: float | None = None,
    dedup: str | None = None,
    ttl: float = 0.0,
    through: Sender | WaitingSender | None = None,
) -> bool:
    """Send ``items`` (``(priority, item)`` pairs; the priority is ignored for a list) to
    ``group`` of the source ``keys``, or to its delayed set for ``delay`` seconds; False
    when ``dedup`` (a key) was seen within ``ttl`` seconds."""
    zset = kind == "priority"
    if delay:
        members = [
            delayed_member(group, priority_member(level, item) if zset else item)
            for level, item in items
        ]
        if dedup is None:
            await connector.run(scripts.delay(keys.delayed, to_ms(delay), members), through)
            return True
        due = b"\0due:%d" % to_ms(delay)
        zadd = ("ZADD", keys.delayed, *(x for m in members for x in (due, m)))
        replies = await compound.send(
            connector, dedup, ttl, [(keys.delayed, "zset")], [zadd], through=through
        )
        return replies is not None
    flat: list[Any] = []
    for level, item in items:
        flat += (level, item) if zset else (item,)
    ttl_ms = to_ms(ttl) if dedup else 0
    call = push_call(keys, kind, group, flat, dedup=dedup, ttl_ms=ttl_ms)
    return await connector.run(call, through) is not None


class GroupedQueues:
    """Which queues of a prefix are consumed in fair groups (``grouped_key``): their
    consumers add them at start; a producer reads the set every ``GROUPED_TTL`` seconds and
    sends a message without a group to the default group through the group script, so that
    it wakes the consumers."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.key = grouped_key(prefix)
        self.declared: set[str] = set()  # known here (a handler of this process)
        self._known: set[str] = set()
        self._read_at = -GROUPED_TTL

    def cached(self, name: str) -> bool | None:
        """Whether ``name`` is grouped, as last read (None: time to read again)."""
        if name in self.declared:
            return True
        if time.monotonic() - self._read_at > GROUPED_TTL:
            return None
        return name in self._known

    async def contains(self, name: str) -> bool:
        """Whether ``name`` is consumed in fair groups (read again when stale)."""
        found = self.cached(name)
        if found is None:
            members = await self.connector.send("SMEMBERS", self.key)
            self._known = {text(m) for m in members}
            self._read_at = time.monotonic()
            found = name in self._known
        return found

    async def register(self, name: str) -> None:
        """Record that ``name`` is consumed in fair groups (a consumer, at start)."""
        self.declared.add(name)
        await self.connector.send("SADD", self.key, name)


@dataclass(frozen=True, slots=True)
class Backlog:
    """One group of a source, as ``Groups.backlogs`` reads it: the messages waiting in it,
    those being handled (with a concurrency limit; else 0), and whether it is paused."""

    group: str
    waiting: int
    in_flight: int
    paused: bool


class Groups:
    """The groups of one queue (every partition): pause, resume, and the longest backlogs
    (``flow.groups("jobs")``). ``kind``: ``queue`` or ``priority``; None: a priority queue
    if ``kinds`` (the flows' registry) says so."""

    def __init__(
        self,
        connector: Connector,
        layouts: Layouts,
        prefix: str,
        name: str,
        kind: str | None = None,
        kinds: Callable[[str], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.connector, self.layouts = connector, layouts
        self.prefix, self.name, self.kind, self.kinds = prefix, name, kind, kinds

    async def _mode(self) -> str:
        kind = self.kind
        if kind is None:
            known = await self.kinds(self.name) if self.kinds is not None else set()
            kind = "priority" if "priority" in known else "queue"
        return mode(kind)

    async def _keys(self) -> list[Keys]:
        return [Keys(self.prefix, key) for key in await self.layouts.all_keys(self.name)]

    async def pause(self, group: str) -> bool:
        """Stop serving ``group`` (its messages stay queued; those being handled finish),
        across every worker; whether it was not paused already."""
        return await self._pause(group, True)

    async def resume(self, group: str) -> bool:
        """Serve ``group`` again; whether it was paused."""
        return await self._pause(group, False)

    async def _pause(self, group: str, pause: bool) -> bool:
        name = check_group(group) or ""
        changed = 0
        group_mode = await self._mode()
        for keys in await self._keys():  # a group lives on one partition; pause it on all
            call = scripts.group_pause(keys.groups, keys.base, group_mode, name, pause)
            changed += int(await self.connector.run(call))
        return bool(changed)

    async def paused(self) -> list[str]:
        """The paused groups."""
        found: set[str] = set()
        for keys in await self._keys():
            found.update(text(g) for g in await self.connector.send("SMEMBERS", keys.groups[5]))
        return sorted(found)

    async def backlogs(self, limit: int = 10) -> list[Backlog]:
        """The ``limit`` groups with the most messages waiting, largest first; the default
        group is ``""``. Reads every group holding messages: one length per group."""
        return (await self.summary(limit))[1]

    async def summary(self, limit: int = 10) -> tuple[int, list[Backlog]]:
        """The messages waiting in all the groups (paused ones included), and ``backlogs``."""
        sizes, paused = await self._sizes()
        ranked = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        counts = await self._in_flight([g for g, _ in ranked])
        top = [Backlog(g, n, counts.get(g, 0), g in paused) for g, n in ranked]
        return sum(sizes.values()), top

    async def _sizes(self) -> tuple[dict[str, int], set[str]]:
        """Messages waiting per group (those holding some), and the paused groups."""
        sizes: dict[str, int] = {}
        paused: set[str] = set()
        group_mode = await self._mode()
        for keys in await self._keys():
            found, stopped = await sizes_at(self.connector, keys, group_mode)
            for group, count in found.items():
                sizes[group] = sizes.get(group, 0) + count
            paused |= stopped
        return sizes, paused

    async def _in_flight(self, groups: list[str]) -> dict[str, int]:
        if not groups:
            return {}
        counts: dict[str, int] = {}
        for keys in await self._keys():
            replies = await self.connector.send.many(
                *(("SCARD", keys.group_tokens(g)) for g in groups)
            )
            for group, n in zip(groups, replies, strict=True):
                counts[group] = counts.get(group, 0) + int(n)
        return counts


async def sizes_at(
    connector: Connector, keys: Keys, group_mode: str
) -> tuple[dict[str, int], set[str]]:
    """The messages waiting in each group of one key (a queue or one partition; the
    default group is ``""``; groups holding none are left out), and its paused groups:
    two round trips, the second one length per group that holds messages."""
    length = "ZCARD" if group_mode == "zset" else "LLEN"
    source, _, _, held_key, _, paused_key, _ = keys.groups
    held, default, stopped = await connector.send.many(
        ("SMEMBERS", held_key), (length, source), ("SMEMBERS", paused_key)
    )
    names = [text(g) for g in held]
    counts = await connector.send.many(*((length, keys.group(g)) for g in names)) if names else []
    sizes = {group: int(n) for group, n in zip(names, counts, strict=True) if int(n)}
    if int(default):
        sizes[""] = sizes.get("", 0) + int(default)
    return sizes, {text(g) for g in stopped}
