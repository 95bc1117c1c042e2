"""Pausing sources: a paused queue, priority queue, stream (one consumer group, or all) or
schedule is fetched by no worker of the prefix until it is resumed; producers go on.

The state is one hash per prefix (``paused_key``: its format is in ``protocol/records.py``),
a field per paused source or stream group. Every running flow reads it (one ``HGETALL``)
every ``POLL`` seconds and before its consumers start, so a worker that starts while a source is
paused fetches nothing, and a pause reaches every worker of every process within about
``POLL`` seconds; a consumer that learns it is paused wakes its blocked fetch (``CLIENT
UNBLOCK``, as a stop does) and finishes what it holds. Keyspace notifications are not used:
they are off by default, and managed services often refuse to turn them on
(docs/design.md, "Pause").

``group`` is a stream's consumer group for now; a queue takes none (a ConfigError says so),
which leaves ``[name, group]`` free to name a part of a queue later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from ..connection import REDIS_ERRORS
from ..errors import ConfigError, ReplyError
from ..keys import check_name, paused_key, sources_key
from ..protocol.envelope import now_ms
from ..protocol.records import Target, parse_paused, parse_source, paused_field
from ..protocol.replies import pairs

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ..connection import Connector
    from ..message import Kind

log = logging.getLogger("redisflow")

#: How often a running flow reads what is paused, in seconds.
POLL = 0.25


@dataclass(frozen=True, slots=True)
class Paused:
    """A paused source: its ``name``, the stream ``group`` paused (None: the whole source,
    every group of a stream), and when it was paused (None: not recorded)."""

    name: str
    group: str | None
    since: datetime | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        since = self.since.isoformat() if self.since else None
        return {"name": self.name, "group": self.group, "since": since}


def check_target(name: object, group: object, kinds: Collection[Kind | str]) -> None:
    """ConfigError unless ``name`` (``group``) can be paused, given the ``kinds`` of source
    known under that name (none known: a source whose workers have not started yet, which
    will find it paused)."""
    check_name(name, "source name")
    if group is not None:
        check_name(group, "consumer group")
    if kinds and set(kinds) <= {"channel"}:
        raise ConfigError(
            f"{name!r} is a Pub/Sub channel: a channel cannot be paused (a message published"
            " while nobody listens is gone; stop its workers, or use a stream)"
        )
    if group is not None and kinds and "stream" not in kinds:
        raise ConfigError(
            f"group={group!r}: group names a stream's consumer group, and {name!r} is a"
            f" {' and '.join(sorted(k for k in kinds if k != 'channel'))}: pause it whole"
        )


class Pauses:
    """Pause, resume and read what is paused, for the prefix ``prefix``."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.key = paused_key(prefix)
        self.sources = sources_key(prefix)

    async def pause(self, name: str, group: str | None = None) -> None:
        """Pause ``name`` (one stream ``group``, or all of it)."""
        await self.connector.send("HSET", self.key, paused_field(name, group), now_ms())

    async def resume(self, name: str, group: str | None = None) -> bool:
        """Resume ``name`` (``group`` None: all of it, every group paused alone too); whether
        anything was paused. ConfigError for one group of a source paused whole."""
        held = [(target, raw) for raw, target in await self._fields() if target[0] == name]
        if group is not None and any(target[1] is None for target, _ in held):
            raise ConfigError(
                f"{name!r} is paused whole (every group): resume it whole"
                f" (resume({name!r})), then pause the groups that should stay paused"
            )
        gone = [raw for target, raw in held if group is None or target[1] == group]
        if gone:
            await self.connector.send("HDEL", self.key, *gone)
        return bool(gone)

    async def read(self) -> list[Paused]:
        """Every paused source, by name."""
        flat = await self.connector.send("HGETALL", self.key)
        found = []
        for raw, at in pairs(flat):
            target = parse_paused(raw)
            if target is not None:
                ms = int(at) if at.isdigit() else None
                since = datetime.fromtimestamp(ms / 1000, UTC) if ms is not None else None
                found.append(Paused(target[0], target[1], since))
        return sorted(found, key=lambda p: (p.name, p.group or ""))

    async def kinds(self, name: str) -> set[str]:
        """The kinds of source the flows of the prefix registered under ``name``."""
        found = (parse_source(m) for m in await self.connector.send("SMEMBERS", self.sources))
        return {source.kind for source in found if source is not None and source.name == name}

    async def targets(self) -> set[Target]:
        """What is paused, as ``(name, group)`` pairs."""
        return {target for _, target in await self._fields()}

    async def _fields(self) -> list[tuple[bytes, Target]]:
        flat = await self.connector.send("HGETALL", self.key)
        found = ((raw, parse_paused(raw)) for raw, _ in pairs(flat))
        return [(raw, target) for raw, target in found if target is not None]

    async def watch(
        self,
        apply: Callable[[set[Target]], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read what is paused every ``POLL`` seconds and ``apply`` it when it changed (the
        first reading before reporting started). Redis unreachable keeps the last state (the
        consumers' own loops report the outage); a refusal (an ACL without the prefix's
        keys) is logged once until a reading works again."""
        last: set[Target] | None = None
        started = failing = False
        while True:
            try:
                now = await self.targets()
            except REDIS_ERRORS as exc:
                if isinstance(exc, ReplyError) and not failing:
                    log.warning("cannot read the paused sources (%s): pauses are not followed"
                                " until it can", exc)  # fmt: skip
                failing = failing or isinstance(exc, ReplyError)
            else:
                if failing:
                    log.warning("the paused sources are read again")
                failing = False
                if now != last:
                    apply(now)
                    last = now
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(POLL)


def paused_for(targets: Iterable[Target], kind: str, name: str, group: str | None) -> bool:
    """Whether a source (``kind``, ``name``, stream ``group``) is paused by ``targets``."""
    for paused_name, paused_group in targets:
        if paused_name != name:
            continue
        if paused_group is None or (kind == "stream" and paused_group == group):
            return True
    return False
