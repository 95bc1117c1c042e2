"""How a cancellation looks in Redis: a field per cancelled message in the hash
``Keys.cancels`` of its source (each partition has its own), valued
``<deadline ms>:<JSON [reason, group]>``, and the version ``Keys.cancels_version`` the
fetches read (``lua/cancel.lua`` writes both; ``features/cancels.py`` uses them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .replies import pairs
from .scripts import Call, Script

CANCEL = Script("cancel")


@dataclass(frozen=True, slots=True)
class Mark:
    """A cancelled message: why (``reason``), for which stream ``group`` (None: every
    consumer of the source), and until when the mark is kept (``deadline``, epoch ms)."""

    reason: str
    group: str | None
    deadline: int

    def applies(self, group: str | None) -> bool:
        """Whether it cancels the message for a consumer of ``group``."""
        return self.group is None or self.group == group


def cancel(marks: str, version: str, message_id: str, reason: str, group: str | None,
           ttl_ms: int) -> Call:  # fmt: skip
    """Mark ``message_id`` cancelled for ``ttl_ms``; the call returns the new version."""
    value = orjson.dumps([reason, group])
    return Call(CANCEL, (marks, version), (message_id, value, ttl_ms))


def parse_mark(raw: bytes) -> Mark | None:
    """A mark as stored, or None for a value that is not one (another client's)."""
    head, sep, body = raw.partition(b":")
    if not sep or not head.isdigit():
        return None
    try:
        reason, group = orjson.loads(body)
    except (ValueError, TypeError):
        return None
    if not isinstance(reason, str) or not (group is None or isinstance(group, str)):
        return None
    return Mark(reason, group, int(head))


def parse_marks(flat: list[Any], now_ms: int) -> dict[str, Mark]:
    """The marks of an ``HGETALL`` reply of ``Keys.cancels``, by message id, less those
    past their deadline at ``now_ms`` (the next cancel sweeps them)."""
    found: dict[str, Mark] = {}
    for raw_id, raw in pairs(flat):
        mark = parse_mark(raw)
        if mark is not None and mark.deadline > now_ms:
            found[raw_id.decode("utf-8", "replace")] = mark
    return found
