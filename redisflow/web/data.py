"""What the dashboard's pages show, read through ``ops/`` like ``redisflow stats`` and
``redisflow dlq``: one stats ``Snapshot`` shared by every page and viewer (taken at most
once a second, whatever the number of open tabs), the rates of ``history.py``, dead letters
through ``DeadLetters``, status records through ``Client.status``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .. import asyncapi
from ..ops.deadletters import DeadLetters
from ..ops.stats import Row, Snapshot, collect
from .history import FIELDS, History, last, polyline

if TYPE_CHECKING:
    from ..app import Flow
    from ..client import Client
    from ..features.tracking import MessageStatus
    from ..handler import Handler
    from ..message import Kind
    from .history import Key

log = logging.getLogger("redisflow")

#: A snapshot younger than this (s) is served again instead of reading Redis.
FRESH = 1.0
SPARK = (120, 26)  # width, height of a row's chart
CHART = (640, 64)  # the overview's totals


@dataclass
class Chart:
    """One chart: per field, its SVG polylines and latest rate; the scale's top."""

    lines: dict[str, list[str]]
    now: dict[str, float | None]
    top: float
    width: int
    height: int
    span: float  # seconds from its left edge to now


@dataclass
class RowView:
    """A stats row and its chart."""

    row: Row
    chart: Chart


@dataclass
class SourceView:
    """One source of the overview: its rows (a handler or consumer group each)."""

    kind: str
    name: str
    partitions: int
    dead_letters: int
    rows: list[RowView] = field(default_factory=list)

    @property
    def waiting(self) -> int | None:
        """The source's depth (a queue) or the largest group lag (a stream)."""
        known = [r.row.waiting for r in self.rows if r.row.waiting is not None]
        return max(known) if known else None


@dataclass
class Overview:
    """The overview page: every source, the totals chart, the server."""

    snapshot: Snapshot
    sources: list[SourceView]
    totals: Chart
    url: str
    schedules: list[RowView] = field(default_factory=list)  # their own panel


def row_key(row: Row) -> Key:
    """The history key of a stats row."""
    return (row.kind, row.source, row.group or "", row.handler or "")


class Dashboard:
    """The data behind the pages, for one client (and the flow, when given one)."""

    def __init__(self, client: Client, flow: Flow | None = None) -> None:
        self.client, self.flow = client, flow
        self.history = History()
        self.latest: Snapshot | None = None
        self.taken = 0.0
        self._lock: anyio.Lock | None = None
        self._document: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        """The Redis URL with its passwords hidden."""
        return self.client.connector.display

    async def snapshot(self) -> Snapshot:
        """The latest stats snapshot (read again when older than ``FRESH``)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            now = time.monotonic()
            if self.latest is None or now - self.taken >= FRESH:
                handlers = None
                if self.flow is not None:
                    handlers = [(h.source, h.name) for h in self.flow.handlers.values()]
                snapshot = await collect(self.client, handlers)
                self.latest, self.taken = snapshot, time.monotonic()
                readings = [(row_key(r), r.counters or {}) for r in snapshot.rows]
                self.history.add(self.taken, readings)
                self.history.forget(key for key, _ in readings)
            return self.latest

    def forget(self) -> None:
        """Read Redis again for the next page (after an action changed what it shows)."""
        self.latest = None

    async def sample(self, every: float = 2.0) -> None:
        """Take a snapshot every ``every`` seconds, so the charts have a history before
        anyone opens the page (``redisflow ui`` runs this; a mounted dashboard reads when
        its pages poll)."""
        while True:
            try:
                await self.snapshot()
            except Exception as exc:  # Redis away: the pages say so; keep sampling
                log.debug("dashboard: no snapshot: %r", exc)
            await anyio.sleep(every)

    async def overview(self) -> Overview:
        """The overview's data."""
        snapshot = await self.snapshot()
        now = time.monotonic()
        sources: dict[tuple[str, str], SourceView] = {}
        schedules: list[RowView] = []
        for row in snapshot.rows:
            if row.kind == "schedule":
                schedules.append(RowView(row, self.chart(row_key(row), now, *SPARK)))
                continue
            view = sources.get((row.kind, row.source))
            if view is None:
                view = SourceView(row.kind, row.source, row.partitions, row.dead_letters)
                sources[(row.kind, row.source)] = view
            view.rows.append(RowView(row, self.chart(row_key(row), now, *SPARK)))
        totals = self.chart(None, now, *CHART)
        return Overview(snapshot, list(sources.values()), totals, self.url, schedules)

    def chart(self, key: Key | None, now: float, width: int, height: int) -> Chart:
        """The chart of one row (``key``) or of all (None)."""
        rates = self.history.rates(key, now)
        top = max((v for f in FIELDS for v in rates[f] if v is not None), default=0.0)
        lines = {f: polyline(rates[f], top, width, height) for f in FIELDS}
        now_rates = {f: last(rates[f]) for f in FIELDS}
        return Chart(lines, now_rates, top, width, height, self.history.span(now))

    async def source_rows(self, kind: str, name: str) -> tuple[Snapshot, list[RowView]]:
        """The rows of one source, from the shared snapshot."""
        snapshot = await self.snapshot()
        now = time.monotonic()
        rows = [
            RowView(row, self.chart(row_key(row), now, *SPARK))
            for row in snapshot.rows
            if row.kind == kind and row.source == name
        ]
        return snapshot, rows

    def handlers(self, kind: str, name: str) -> list[Handler]:
        """The flow's handlers of one source (none without a flow)."""
        if self.flow is None:
            return []
        return [
            h
            for h in self.flow.handlers.values()
            if h.source.kind == kind and h.source.name == name
        ]

    def dead_letters(self, kind: Kind, name: str) -> DeadLetters:
        """The dead letters of one source."""
        return DeadLetters(self.client, name, kind)

    async def status(self, message_id: str) -> MessageStatus | None:
        """The status record of a tracked message."""
        return await self.client.status(message_id)

    def document(self, title: str) -> dict[str, Any] | None:
        """The flow's AsyncAPI document (None without a flow), built once."""
        if self.flow is None:
            return None
        if self._document is None:
            self._document = asyncapi.document(self.flow, title=title)
        return self._document
