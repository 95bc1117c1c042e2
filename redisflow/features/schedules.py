"""Schedules: when the ticks of ``@flow.cron`` and ``@flow.every`` fall, and which of the
ticks due at a claim run (the missed-tick policies).

Pure time arithmetic on epoch milliseconds, the same in every process: a tick is claimed
in Redis on the server's clock by ``consumers/schedule.py``, which runs each tick as a
message of the schedule's internal queue.

- ``every(period)``: real time, not wall time; ticks fall on the multiples of the period
  since the Unix epoch (``every(60)`` on each minute), so every process computes the same
  ticks with nothing shared but the period.
- ``cron(expr, tz)``: a cron expression (``cronsim``: five fields, or six with seconds
  first) in an IANA zone (default UTC). In the hour a DST change skips, a tick whose wall
  time does not exist runs at the first instant after the gap (Debian cron's rule, which
  cronsim follows), once even when several such ticks fall on it; in the hour that
  repeats, each wall-clock tick runs at its first occurrence only (the second pass has no
  ticks). docs/design.md, "Schedules".
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from ..errors import ConfigError
from ..keys import check_name

Missed = Literal["skip", "once", "all"]
MISSED: tuple[Missed, ...] = ("skip", "once", "all")
#: ``missed="all"`` runs at most this many of the ticks due at once (the latest).
MAX_CATCH_UP = 100
#: The latest due tick is on time (it runs under ``missed="skip"``) when at most this late.
LATE_MS = 60_000
#: Due ticks counted one by one at most (a long outage of a frequent cron schedule).
COUNT_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class Plan:
    """What one claim does: ``runs`` (tick ms, and the missed ticks each stands for), how
    many due ticks get no run of their own (``missed``), the ``next`` tick after now and
    the ``last`` tick that was due."""

    runs: list[tuple[int, int]]
    missed: int
    next: int
    last: int


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a schedule ticks, and what it does with ticks no worker claimed in time.

    ``period_ms`` for ``every``; else ``cron`` and ``tz``. ``missed``: ``skip`` (ticks that
    were superseded by a later one before any worker claimed them, or are more than a minute
    late, do not run), ``once`` (one run stands for all the ticks due at a claim), ``all``
    (each runs, the latest ``MAX_CATCH_UP``).
    """

    name: str
    missed: Missed
    period_ms: int | None = None
    cron: str | None = None
    tz: str | None = None

    @classmethod
    def every(cls, name: str, period: object, missed: object = "skip") -> Schedule:
        """A schedule every ``period`` (seconds, or a ``timedelta``); ConfigError if it is
        not a positive duration of at least a millisecond."""
        seconds = period.total_seconds() if isinstance(period, timedelta) else period
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or round(seconds * 1000) < 1
        ):
            raise ConfigError(
                f"every() takes a period of at least 0.001 s (seconds or a timedelta),"
                f" got {period!r}"
            )
        return cls(check_name(name, "schedule name"), _missed(missed), round(seconds * 1000))

    @classmethod
    def from_cron(
        cls, name: str, expr: object, tz: object = None, missed: object = "skip"
    ) -> Schedule:
        """A schedule on the ticks of a cron expression in zone ``tz``; ConfigError for an
        invalid expression, an unknown zone, or cronsim not installed."""
        if not isinstance(expr, str):
            raise ConfigError(f"a cron expression is a string, got {expr!r}")
        if tz is not None and not isinstance(tz, str):
            raise ConfigError(f"tz is the name of an IANA zone ('Europe/Paris'), got {tz!r}")
        schedule = cls(check_name(name, "schedule name"), _missed(missed), None, expr, tz)
        schedule.after(0)  # parses: ConfigError now, not at the first tick
        return schedule

    @property
    def spec(self) -> str:
        """What the ticks depend on, as stored in Redis (a change resets the next tick)."""
        if self.period_ms is not None:
            return f"every {self.period_ms} ms"
        return f"cron {self.cron} {self.tz or 'UTC'}"

    def __str__(self) -> str:
        if self.period_ms is not None:
            return f"every {self.period_ms / 1000:g} s"
        return f"{self.cron} ({self.tz or 'UTC'})"

    def tick_id(self, tick: int) -> str:
        """The message id of the run of ``tick``: the same for every delivery of it."""
        digest = hashlib.blake2b(self.name.encode(), digest_size=5).hexdigest()
        return f"{digest}-{tick}"

    # -- ticks ----------------------------------------------------------------------------

    def after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        if self.period_ms is not None:
            return (ms // self.period_ms + 1) * self.period_ms
        for tick in self._cron_ticks(ms):
            return tick
        raise ConfigError(f"the cron expression {self.cron!r} has no tick in the next 50 years")

    def plan(self, due: int, now: int) -> Plan:
        """The claim at ``now`` (server ms) of the ticks from ``due`` (a tick, <= now): which
        run, by the ``missed`` policy, and the next tick."""
        count, latest = self._due(due, now)
        on_time = now - latest[-1] <= LATE_MS
        if self.missed == "skip":
            runs = [(latest[-1], 0)] if on_time else []
        elif self.missed == "once":
            runs = [(latest[-1], count - 1)]
        else:
            runs = [(tick, 0) for tick in latest[-MAX_CATCH_UP:]]
        return Plan(runs, count - len(runs), self.after(now), latest[-1])

    def _due(self, due: int, now: int) -> tuple[int, list[int]]:
        """How many ticks fall in [due, now], and the latest of them (``MAX_CATCH_UP`` at
        most), oldest first."""
        if self.period_ms is not None:
            count = (now - due) // self.period_ms + 1
            first = due + max(0, count - MAX_CATCH_UP) * self.period_ms
            return count, list(range(first, now + 1, self.period_ms))
        latest: deque[int] = deque([due], maxlen=MAX_CATCH_UP)
        count = 1
        for tick in self._cron_ticks(due):
            if tick > now:
                return count, list(latest)
            latest.append(tick)
            count += 1
            if count >= COUNT_LIMIT:  # an outage of a frequent schedule: take the tail
                break
        tail = [t for t in self._cron_ticks(now + 1, reverse=True) if t > latest[-1]]
        return count + len(tail), [*latest, *reversed(tail)][-MAX_CATCH_UP:]

    def _cron_ticks(self, ms: int, reverse: bool = False) -> Iterator[int]:
        """The ticks of the cron expression after ``ms`` (before, ``reverse``: at most
        ``MAX_CATCH_UP`` of them), without the repeated hour's second pass."""
        try:
            from cronsim import CronSim, CronSimError
        except ImportError:
            raise ConfigError(
                "@flow.cron needs the cronsim package: pip install cronsim (the cron extra)"
            ) from None
        zone = _zone(self.tz)
        start = datetime.fromtimestamp(ms / 1000, zone)
        try:
            found = iter(CronSim(self.cron or "", start, reverse=reverse))
        except CronSimError as exc:
            raise ConfigError(f"invalid cron expression {self.cron!r}: {exc}") from None
        for n, when in enumerate(found):
            if reverse and n >= MAX_CATCH_UP:
                return
            if when.fold and when.replace(fold=0).utcoffset() != when.utcoffset():
                continue  # the repeated hour's second pass: this wall time already ticked
            yield round(when.timestamp() * 1000)


def _missed(value: object) -> Missed:
    for policy in MISSED:
        if value == policy:
            return policy
    raise ConfigError(f"missed must be one of {', '.join(MISSED)}, got {value!r}")


def _zone(name: str | None) -> tzinfo:
    if name is None:
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {name!r} ({exc}); an IANA name such as 'Europe/Paris'"
            " (pip install tzdata where the system has no zone database)"
        ) from None
