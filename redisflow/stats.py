"""``redisflow stats``: what each handler's source holds and what its workers did.

Everything comes from Redis in at most four pipelined round trips (shared with those of
``Flow.memory``): the sources (``sources_key``, when no app is given), per source its type, the
counters the consumers report every 2 s (``Keys.stats``), the in-flight gauges of live
workers (``Keys.inflight``; entries older than ``STALE_MS`` belong to dead workers and are
removed), the delayed set and the dead letters, then the queue length or the stream's
consumer groups (``XINFO GROUPS``: lag and pending).

Rendered as a plain-text table, or with ``rich`` when it is installed and the output is a
terminal (``pip install 'redisflow[cli]'``), or as JSON.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import orjson

from .codec import now_ms
from .keys import sources_key
from .message import Source
from .transports.base import STAT_FIELDS

if TYPE_CHECKING:
    from .producer import Producer

#: In-flight gauges older than this (ms) belong to workers that died without a goodbye.
STALE_MS = 10_000
KINDS = ("channel", "queue", "priority", "stream")


@dataclass(frozen=True, slots=True)
class Row:
    """One handler (or, without the app, one source or one handler) and its numbers.

    ``waiting``: queue depth (LLEN / ZCARD) or the stream group's lag (None: a channel, or
    a lag Redis cannot tell). ``pending``: stream entries delivered to the group and not yet
    acked. ``delayed``: queue messages waiting for a retry or a delay. ``in_flight``:
    messages held by live ``workers``. ``counters``: ``processed``, ``retried``, ``dead``...
    summed over every worker since the keys were created (None when the handler is not
    known). ``dead_letters``: entries now in the dead-letter stream. ``memory``: bytes of
    the source's keys (the queue or stream, delayed set, dead letters, indexes).
    """

    kind: str
    source: str
    group: str | None
    handler: str | None
    waiting: int | None
    pending: int | None
    delayed: int | None
    in_flight: int | None
    workers: int | None
    counters: dict[str, int] | None
    dead_letters: int
    memory: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rows of one reading, with Redis's ``used_memory``."""

    prefix: str
    taken_at: datetime
    used_memory: int
    rows: list[Row]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "prefix": self.prefix,
            "taken_at": self.taken_at.isoformat(),
            "used_memory": self.used_memory,
            "handlers": [asdict(row) for row in self.rows],
        }


def parse_source(member: bytes | str) -> Source | None:
    """A ``kind|name|group`` member of ``sources_key`` (None if it is not one)."""
    text = member.decode() if isinstance(member, bytes) else member
    kind, _, rest = text.partition("|")
    name, _, group = rest.rpartition("|")
    if kind not in KINDS or not name:
        return None
    return Source(kind, name, group or None)  # type: ignore[arg-type]


async def registered_sources(flow: Producer) -> list[Source]:
    """The sources the flows of this prefix consume (what they registered at start)."""
    members = await flow._send("SMEMBERS", sources_key(flow.prefix))
    found = (parse_source(m) for m in members)
    return sorted(
        (s for s in found if s is not None), key=lambda s: (s.name, s.kind, s.group or "")
    )


async def collect(flow: Producer, handlers: Sequence[tuple[Source, str]] | None = None) -> Snapshot:
    """Read the numbers of ``handlers`` (source, handler name), or without them of every
    source registered under the flow's prefix."""
    if handlers is None:
        targets: list[tuple[Source, str | None]] = [
            (s, None) for s in await registered_sources(flow)
        ]
    else:
        targets = list(handlers)
    names = sorted({source.name for source, _ in targets})
    memory: dict[str, Any] = {}
    reads: dict[str, _Reads] = {}

    async def read_memory() -> None:
        memory.update(await flow.memory(*names))

    async def read_sources() -> None:
        reads.update(await _read(flow, names))

    async with anyio.create_task_group() as tg:  # the Pipeliner merges their round trips
        tg.start_soon(read_memory)
        tg.start_soon(read_sources)
    rows: list[Row] = []
    for name in names:
        keys = flow.keys(name)
        owned = {name, keys.delayed, keys.dead, keys.counts, keys.indexes}
        size = sum(
            info["bytes"]
            for key, info in memory["keys"].items()
            if key in owned or key.startswith(keys.indexes + ":")
        )
        entries = [(s, h) for s, h in targets if s.name == name]
        rows += reads[name].rows(entries, size)
    return Snapshot(flow.prefix, datetime.now(UTC), int(memory["used_memory"]), rows)


class _Reads:
    """What Redis holds for one source name."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.type = name, kind
        self.counters: dict[str, dict[str, int]] = {}
        self.inflight: dict[str, list[int]] = {}
        self.stale: list[bytes] = []
        self.delayed = self.dead = self.length = 0
        self.groups: dict[str, dict[bytes, Any]] = {}

    def parse(self, stats: list[bytes], inflight: list[bytes], now: int) -> None:
        for field, value in _pairs(stats):
            handler, _, counter = field.decode().rpartition(":")
            self.counters.setdefault(handler, dict.fromkeys(STAT_FIELDS, 0))[counter] = int(value)
        for field, value in _pairs(inflight):
            held, _, at = value.partition(b":")
            if not at.isdigit() or now - int(at) > STALE_MS:
                self.stale.append(field)
                continue
            handler = field.decode().rpartition(":")[0]
            self.inflight.setdefault(handler, []).append(int(held))

    def rows(self, entries: list[tuple[Source, str | None]], memory: int) -> list[Row]:
        if all(handler is not None for _, handler in entries):
            return [self._row(source, handler, memory) for source, handler in entries]
        known: list[str | None] = [*sorted(self.counters.keys() | self.inflight.keys())]
        if len(entries) == 1:  # no app: the handlers are those the workers reported
            return [self._row(entries[0][0], h, memory) for h in known or [None]]
        # No app and several groups (or kinds): which handler serves which is unknown, so
        # the sources get rows without counters, the handlers rows without a group.
        anonymous = Source(entries[0][0].kind, self.name)
        return [self._row(s, None, memory, counters=False) for s, _ in entries] + [
            self._row(anonymous, h, memory) for h in known
        ]

    def _row(self, source: Source, handler: str | None, memory: int, counters: bool = True) -> Row:
        waiting = pending = delayed = None
        if source.kind in ("queue", "priority"):
            waiting, delayed = self.length, self.delayed
        elif source.kind == "stream":
            group = self.groups.get(source.group or "")
            if group is not None:
                lag = group.get(b"lag")
                waiting = int(lag) if lag is not None else None
                pending = int(group[b"pending"])
            elif self.type == "none" and source.group:  # nothing appended yet
                waiting = pending = 0
        held = self.inflight.get(handler, []) if handler is not None else []
        return Row(
            kind=source.kind,
            source=source.name,
            group=source.group,
            handler=handler,
            waiting=waiting,
            pending=pending,
            delayed=delayed,
            in_flight=sum(held) if counters else None,
            workers=len(held) if counters else None,
            counters=self._counters(handler) if counters else None,
            dead_letters=self.dead,
            memory=memory,
        )

    def _counters(self, handler: str | None) -> dict[str, int]:
        found = self.counters.get(handler or "")
        return dict(found) if found else dict.fromkeys(STAT_FIELDS, 0)


async def _read(flow: Producer, names: list[str]) -> dict[str, _Reads]:
    send = flow._send
    first: list[tuple[Any, ...]] = []
    for name in names:
        keys = flow.keys(name)
        first += [
            ("TYPE", name),
            ("HGETALL", keys.stats),
            ("HGETALL", keys.inflight),
            ("ZCARD", keys.delayed),
            ("XLEN", keys.dead),
        ]
    replies = await send.many(*first) if first else []
    now = now_ms()  # workers stamp their gauges with their own clock (codec.now_ms)
    reads: dict[str, _Reads] = {}
    second: list[tuple[Any, ...]] = []
    for i, name in enumerate(names):
        kind, stats, inflight, delayed, dead = replies[5 * i : 5 * i + 5]
        read = reads[name] = _Reads(name, kind.decode())
        read.parse(stats, inflight, now)
        read.delayed, read.dead = int(delayed), int(dead)
        if read.type in _LENGTH:
            second.append((*_LENGTH[read.type], name))
        if read.stale:
            second.append(("HDEL", flow.keys(name).inflight, *read.stale))
    answers = iter(await send.many(*second) if second else [])
    for name in names:
        read = reads[name]
        if read.type == "stream":
            for group in next(answers):
                info = dict(_pairs(group))
                read.groups[info[b"name"].decode()] = info
        elif read.type in _LENGTH:
            read.length = int(next(answers))
        if read.stale:
            next(answers)
    return reads


_LENGTH = {"list": ("LLEN",), "zset": ("ZCARD",), "stream": ("XINFO", "GROUPS")}


def _pairs(flat: list[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)


# -- rendering ---------------------------------------------------------------------------

COLUMNS = (
    ("KIND", "kind"),
    ("SOURCE", "source"),
    ("GROUP", "group"),
    ("HANDLER", "handler"),
    ("WAITING", "waiting"),
    ("PENDING", "pending"),
    ("DELAYED", "delayed"),
    ("IN FLIGHT", "in_flight"),
    ("WORKERS", "workers"),
    ("PROCESSED", "processed"),
    ("RETRIED", "retried"),
    ("DEAD", "dead"),
    ("DLQ", "dead_letters"),
    ("MEMORY", "memory"),
)
TEXT_COLUMNS = 4  # the first four are left-aligned text, the rest numbers


def cells(row: Row) -> list[str]:
    """The table cells of a row, as text (``-`` for what does not apply or is unknown)."""
    values = asdict(row)
    counters = row.counters or {}
    out = []
    for _, field in COLUMNS:
        value = counters.get(field) if field in STAT_FIELDS else values[field]
        if row.counters is None and field in STAT_FIELDS:
            value = None
        if value is None:
            out.append("-")
        elif field == "memory":
            out.append(human_bytes(value))
        elif isinstance(value, int):
            out.append(f"{value:,}")
        else:
            out.append(str(value))
    return out


def title(snapshot: Snapshot, url: str) -> str:
    """The line above the table: where, when, how much memory."""
    at = snapshot.taken_at.astimezone().strftime("%H:%M:%S")
    return (
        f"redisflow stats  {url}  prefix {snapshot.prefix}  "
        f"used memory {human_bytes(snapshot.used_memory)}  {at}"
    )


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def render_text(snapshot: Snapshot, url: str) -> str:
    """The snapshot as a plain-text table."""
    if not snapshot.rows:
        return f"{title(snapshot, url)}\nno sources registered under prefix {snapshot.prefix!r}"
    table = text_table([h for h, _ in COLUMNS], [cells(r) for r in snapshot.rows], TEXT_COLUMNS)
    return f"{title(snapshot, url)}\n\n{table}"


def render_rich(snapshot: Snapshot, url: str) -> Any:
    """The snapshot as a ``rich`` Table (rich must be installed)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title(snapshot, url), box=box.SIMPLE_HEAD, title_justify="left")
    for i, (header, _) in enumerate(COLUMNS):
        table.add_column(header, justify="left" if i < TEXT_COLUMNS else "right", no_wrap=True)
    for row in snapshot.rows:
        table.add_row(
            *(
                f"[{style}]{escape(cell)}[/]" if style else escape(cell)
                for style, cell in zip(_styles(row), cells(row), strict=True)
            )
        )
    if not snapshot.rows:
        table.caption = f"no sources registered under prefix {snapshot.prefix!r}"
    return table


def _styles(row: Row) -> list[str]:
    """The rich style of each cell: numbers that need attention stand out, zeros fade."""
    counters = row.counters or {}

    def warn(value: int | None, style: str = "yellow") -> str:
        return style if value else "dim"

    return [
        "cyan",
        "bold",
        "",
        "",
        warn(row.waiting),
        warn(row.pending),
        warn(row.delayed),
        warn(row.in_flight, ""),
        "red" if row.workers == 0 and row.counters is not None else "",
        warn(counters.get("processed"), "green"),
        warn(counters.get("retried")),
        warn(counters.get("dead"), "red"),
        warn(row.dead_letters, "bold red"),
        "",
    ]


def human_bytes(n: int) -> str:
    """1536 -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def rich_available() -> bool:
    """Whether ``rich`` can be imported (``pip install 'redisflow[cli]'``)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


async def show(
    flow: Producer,
    handlers: Sequence[tuple[Source, str]] | None,
    *,
    url: str,
    as_json: bool = False,
    every: float | None = None,
    out: TextIO | None = None,
) -> None:
    """Print the stats once, or every ``every`` seconds until SIGINT/SIGTERM: JSON (one
    object per line), a rich table on a terminal when rich is installed, else plain text."""
    out = out or sys.stdout
    if every is not None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_show, flow, handlers, url, as_json, every, out)
                async for _ in signals:
                    break
                tg.cancel_scope.cancel()
        return
    await _show(flow, handlers, url, as_json, every, out)


async def _show(
    flow: Producer,
    handlers: Sequence[tuple[Source, str]] | None,
    url: str,
    as_json: bool,
    every: float | None,
    out: TextIO,
) -> None:
    terminal = out.isatty()
    if not as_json and terminal and rich_available():
        await _show_rich(flow, handlers, url, every, out)
        return
    while True:
        snapshot = await collect(flow, handlers)
        if as_json:
            out.write(orjson.dumps(snapshot.to_json()).decode() + "\n")
        else:
            clear = "\x1b[H\x1b[J" if terminal and every is not None else ""
            out.write(clear + render_text(snapshot, url) + "\n")
        out.flush()
        if every is None:
            return
        if not terminal and not as_json:
            out.write("\n")
        await anyio.sleep(every)


async def _show_rich(
    flow: Producer,
    handlers: Sequence[tuple[Source, str]] | None,
    url: str,
    every: float | None,
    out: TextIO,
) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    if every is None:
        console.print(render_rich(await collect(flow, handlers), url))
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(render_rich(await collect(flow, handlers), url), refresh=True)
            await anyio.sleep(every)
