"""What redisflow's keys weigh: ``Client.memory`` and the MEMORY column of ``stats``."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import PermissionDenied
from ..keys import Keys
from ..protocol.replies import LENGTH, info

if TYPE_CHECKING:
    from ..connection import Connector


async def measure(
    connector: Connector, prefix: str, names: Iterable[str], *, channels: Collection[str] = ()
) -> dict[str, Any]:
    """Redis's ``used_memory`` (summed over the masters of a cluster), and the type, length
    and bytes (MEMORY USAGE) of every key redisflow keeps for the sources ``names``: the
    queues and streams themselves, delayed sets, dead letters, counters, stream indexes
    (``Keys.owned`` and the index sets) and the lists of fair groups holding messages with
    their ring, parked and paused sets (``Keys.groups``). Four pipelined round trips."""
    sources = sorted(set(names))
    send = connector.send
    # Per source: its index registry and its fair groups holding messages (none: not grouped).
    registries = [k for name in sources for k in (Keys(prefix, name).indexes,
                                                  Keys(prefix, name).groups[3])]  # fmt: skip
    found = await send.many(*(("SMEMBERS", key) for key in registries)) if registries else []
    indexed, held = found[0::2], found[1::2]
    try:
        replies = await connector.on_masters("INFO", "memory")
        used: int | None = sum(int(info(r).get("used_memory", 0)) for r in replies)
    except PermissionDenied:  # a user without INFO (+@all -@dangerous): no server figure
        used = None
    candidates: list[str] = []
    for name, index_keys, groups in zip(sources, indexed, held, strict=True):
        keys = Keys(prefix, name)
        candidates += [k for k in keys.owned if k not in channels]
        candidates += [key.decode() for key in index_keys]
        if name not in channels:
            candidates += keys.groups[1:6] + tuple(keys.group(g.decode()) for g in groups)
    types = await send.many(*(("TYPE", key) for key in candidates)) if candidates else []
    present = [(k, t.decode()) for k, t in zip(candidates, types, strict=True) if t != b"none"]
    commands = [
        cmd for key, kind in present for cmd in ((LENGTH[kind], key), ("MEMORY", "USAGE", key))
    ]
    sizes = await send.many(*commands) if commands else []
    return {
        "used_memory": used,
        "keys": {
            key: {"type": kind, "length": int(sizes[2 * i]), "bytes": int(sizes[2 * i + 1])}
            for i, (key, kind) in enumerate(present)
            if sizes[2 * i + 1] is not None  # deleted since its TYPE (a queue just drained)
        },
    }
