"""The wire format of priority queues: exact scores, and the members of the delayed set.

A priority queue is a sorted set scored ``priority * 2**40 + seq``, ``seq`` from a per-queue
``INCR``. Scores stay integers below 2**53, which a float64 holds exactly, so a lower
priority always goes first and FIFO holds within a level whatever the messages' age
(docs/design.md, "Exact priorities"): 8192 levels, 2**40 messages per level.

A priority message waiting in the delayed set (a retry, or ``delay=``) is stored as
``<priority>:<item>``, so it goes back at its level. The Lua scripts use ``SHIFT`` from the
prelude that ``scripts.py`` builds from these constants.
"""

from __future__ import annotations

from ..errors import ConfigError

#: Priorities are integers in [0, MAX_PRIORITY]; 0 is the most urgent.
MAX_PRIORITY = 8191
SHIFT = 2**40


def check_priority(priority: object) -> int:
    """``priority`` if it is an int from 0 to MAX_PRIORITY (not a bool), else ConfigError."""
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise ConfigError(f"priority must be an integer from 0 to {MAX_PRIORITY}: {priority!r}")
    return priority


def priority_of(score: bytes | float) -> int:
    """The priority level encoded in a score."""
    return int(float(score)) // SHIFT


def delayed_member(priority: int, item: bytes) -> bytes:
    """The delayed-set member of a priority item: ``<priority>:<item>``."""
    return b"%d:%s" % (priority, item)
