"""Rates over the last minutes, from the counters of successive stats snapshots.

Workers keep cumulative counters in Redis (``processed``, ``retried``, ``dead``...); the
dashboard remembers each reading it takes (at most one a second, for ``WINDOW`` seconds)
and turns the differences into rates per ``BUCKET`` seconds. Nothing is written to Redis:
the history is this process's, and starts when it first reads (a dashboard that nobody
watched for a while shows a gap, not a made-up rate: a difference over more than ``GAP``
seconds is not spread over the buckets it spans).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping

#: How far back the charts go, the width of one point, the longest difference used (s).
WINDOW = 300.0
BUCKET = 10.0
GAP = 30.0
FIELDS = ("processed", "retried", "dead")

Key = tuple[str, ...]
Sample = tuple[float, dict[str, int]]


class History:
    """Counter readings per row key (e.g. ``(kind, source, group, handler)``)."""

    def __init__(self, window: float = WINDOW, bucket: float = BUCKET) -> None:
        self.window, self.bucket = window, bucket
        self.samples: dict[Key, deque[Sample]] = {}
        self.first: float | None = None  # the first reading: the charts start there

    def add(self, at: float, readings: Iterable[tuple[Key, Mapping[str, int]]]) -> None:
        """Record the counters read at ``at`` (seconds, monotonic or epoch: one clock)."""
        if self.first is None:
            self.first = at
        for key, counters in readings:
            kept = self.samples.setdefault(key, deque())
            if kept and at - kept[-1][0] < 0.5:  # two readings in one poll: keep the first
                continue
            kept.append((at, {f: int(counters.get(f, 0)) for f in FIELDS}))
            while kept and kept[0][0] < at - self.window - GAP:
                kept.popleft()

    def span(self, now: float) -> float:
        """How far back the charts go: the window, or less while the history is younger
        (a fresh dashboard draws what it has over the whole width)."""
        known = now - self.first if self.first is not None else 0.0
        return min(self.window, max(self.bucket, math.ceil(known / self.bucket) * self.bucket))

    def rates(self, key: Key | None, now: float) -> dict[str, list[float | None]]:
        """Per field, the rate (per second) in each bucket of ``span``, oldest first; None
        where nothing was read. ``key`` None: the sum over every key."""
        count = round(self.span(now) / self.bucket)
        start = now - count * self.bucket
        amount = {f: [0.0] * count for f in FIELDS}
        covered = [0.0] * count
        keys = list(self.samples) if key is None else [key]
        for k in keys:
            seen = [0.0] * count
            samples = list(self.samples.get(k, ()))
            for (t0, c0), (t1, c1) in itertools.pairwise(samples):
                span = t1 - t0
                if span <= 0 or span > GAP or t1 <= start:
                    continue
                first = max(0, int((t0 - start) // self.bucket))
                last = min(count - 1, int((t1 - start) // self.bucket))
                for b in range(first, last + 1):
                    low, high = start + b * self.bucket, start + (b + 1) * self.bucket
                    overlap = min(high, t1) - max(low, t0)
                    if overlap <= 0:
                        continue
                    seen[b] += overlap
                    for f in FIELDS:  # a counter that went down was reset: no rate
                        amount[f][b] += max(0, c1[f] - c0[f]) * overlap / span
            covered = [max(a, b) for a, b in zip(covered, seen, strict=True)]
        return {
            f: [amount[f][b] / covered[b] if covered[b] > 0 else None for b in range(count)]
            for f in FIELDS
        }

    def forget(self, keep: Iterable[Key]) -> None:
        """Drop the readings of keys no longer shown."""
        wanted = set(keep)
        for key in [k for k in self.samples if k not in wanted]:
            del self.samples[key]


def last(values: list[float | None]) -> float | None:
    """The most recent known value."""
    return next((v for v in reversed(values) if v is not None), None)


def polyline(values: list[float | None], top: float, width: int, height: int) -> list[str]:
    """SVG ``points`` strings, one per run of known values, scaled so ``top`` is the top
    (numbers only: nothing from Redis reaches the markup)."""
    runs: list[str] = []
    current: list[str] = []
    step = width / max(1, len(values) - 1)
    for i, value in enumerate(values):
        if value is None:
            if current:
                runs.append(" ".join(current))
            current = []
            continue
        y = height - 1 - (value / top) * (height - 2) if top > 0 else height - 1
        current.append(f"{i * step:.1f},{y:.1f}")
    if current:
        runs.append(" ".join(current))
    return [run if " " in run else f"{run} {run}" for run in runs]  # a lone point: a dot
