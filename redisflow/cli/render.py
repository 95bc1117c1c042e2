"""What the command line prints: the ``stats`` table (plain, ``rich`` or JSON) and dead
letters (a table for ``dlq list``, every field for ``dlq show``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import orjson

from ..ops.stats import STAT_FIELDS, Row, Snapshot, collect

if TYPE_CHECKING:
    from ..client import Client
    from ..message import Source
    from ..protocol.records import DeadLetter

COLUMNS = (
    ("KIND", "kind"),
    ("SOURCE", "source"),
    ("GROUP", "group"),
    ("HANDLER", "handler"),
    ("PAUSED", "paused"),
    ("WAITING", "waiting"),
    ("PENDING", "pending"),
    ("DELAYED", "delayed"),
    ("IN FLIGHT", "in_flight"),
    ("WORKERS", "workers"),
    ("PROCESSED", "processed"),
    ("RETRIED", "retried"),
    ("DEAD", "dead"),
    ("CANCELLED", "cancelled"),
    ("DLQ", "dead_letters"),
    ("MEMORY", "memory"),
)
TEXT_COLUMNS = 5  # the first five are left-aligned text, the rest numbers
#: Columns shown only when some row has a count in them (few flows cancel messages).
SPARSE = {"cancelled"}


def columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """The columns of a table of ``rows``: ``COLUMNS`` without the sparse ones no row uses."""
    used = {f for row in rows for f in SPARSE if (row.counters or {}).get(f)}
    return [(h, f) for h, f in COLUMNS if f not in SPARSE or f in used]


def cells(row: Row, shown: Sequence[tuple[str, str]] = COLUMNS) -> list[str]:
    """The table cells of a row, as text (``-`` for what does not apply or is unknown)."""
    values = asdict(row)
    counters = row.counters or {}
    out = []
    for _, field in shown:
        value = counters.get(field) if field in STAT_FIELDS else values[field]
        if row.counters is None and field in STAT_FIELDS:
            value = None
        if field == "paused":
            out.append("paused" if value else "")
        elif value is None:
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
    used = snapshot.used_memory
    memory = "" if used is None else f"used memory {human_bytes(used)}  "  # None: no INFO
    return f"redisflow stats  {url}  prefix {snapshot.prefix}  {memory}{at}"


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


SCHEDULE_HEADERS = ("SCHEDULE", "WHEN", "NEXT TICK", "LAST TICK", "LAST RUN", "RUNS", "MISSED")


def schedule_rows(snapshot: Snapshot) -> list[list[str]]:
    """One line per schedule: its spec, next and last tick, how its last run ended."""

    def at(when: datetime | None) -> str:
        return f"{when.astimezone():%Y-%m-%d %H:%M:%S}" if when else "-"

    lines, seen = [], set()
    for row in snapshot.rows:
        state = row.schedule
        if state is None or row.source in seen:
            continue
        seen.add(row.source)
        outcome = state.outcome or "-"
        if state.error:
            outcome += f": {' '.join(state.error.split())[:60]}"
        if state.ran_at:
            outcome += f" ({at(state.ran_at)})"
        name = row.source + (" (paused)" if row.paused else "")
        lines.append([name, state.spec or "-", at(state.next), at(state.last), outcome,
                      f"{state.fired:,}", f"{state.missed:,}"])  # fmt: skip
    return lines


def paused_line(snapshot: Snapshot) -> str:
    """Every paused source and since when (``""``: none)."""
    if not snapshot.paused:
        return ""
    shown = [
        f"{p.name}{f' (group {p.group})' if p.group else ''}"
        + (f" since {p.since.astimezone():%Y-%m-%d %H:%M:%S}" if p.since else "")
        for p in snapshot.paused
    ]
    return "paused: " + ", ".join(shown)


def group_lines(snapshot: Snapshot) -> list[str]:
    """For each queue consumed in fair groups, its groups with the longest backlogs."""
    lines = []
    for name, top in snapshot.groups.items():
        shown = []
        for b in top:
            notes = [f"{b.in_flight:,} in flight"] if b.in_flight else []
            notes += ["paused"] if b.paused else []
            extra = f" ({', '.join(notes)})" if notes else ""
            shown.append(f"{b.group or '(no group)'} {b.waiting:,}{extra}")
        lines.append(f"groups of {name}: {', '.join(shown) or 'none waiting'}")
    return lines


def render_text(snapshot: Snapshot, url: str) -> str:
    """The snapshot as a plain-text table."""
    paused = "\n".join([*group_lines(snapshot), paused_line(snapshot)]).strip("\n")
    below = f"\n{paused}" if paused else ""
    if not snapshot.rows:
        empty = f"no sources registered under prefix {snapshot.prefix!r}"
        return f"{title(snapshot, url)}\n{empty}{below}"
    shown = columns(snapshot.rows)
    table = text_table(
        [h for h, _ in shown], [cells(r, shown) for r in snapshot.rows], TEXT_COLUMNS
    )
    if schedules := schedule_rows(snapshot):
        table += "\n\n" + text_table(SCHEDULE_HEADERS, schedules, 5)
    warnings = "".join(f"\nwarning: {w}" for w in snapshot.warnings)
    return f"{title(snapshot, url)}\n\n{table}\n{below}".rstrip("\n") + warnings


def render_rich(snapshot: Snapshot, url: str) -> Any:
    """The snapshot as a ``rich`` Table (rich must be installed)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title(snapshot, url), box=box.SIMPLE_HEAD, title_justify="left")
    shown = columns(snapshot.rows)
    for i, (header, _) in enumerate(shown):
        table.add_column(header, justify="left" if i < TEXT_COLUMNS else "right", no_wrap=True)
    for row in snapshot.rows:
        styles = _styles(row)
        table.add_row(
            *(
                f"[{styles[field]}]{escape(cell)}[/]" if styles[field] else escape(cell)
                for (_, field), cell in zip(shown, cells(row, shown), strict=True)
            )
        )
    caption = [] if snapshot.rows else [f"no sources registered under prefix {snapshot.prefix!r}"]
    caption += [escape(line) for line in group_lines(snapshot)]
    if snapshot.paused:
        caption.append(escape(paused_line(snapshot)))
    caption += [f"[yellow]warning: {escape(w)}[/]" for w in snapshot.warnings]
    if caption:
        table.caption = "\n".join(caption)
        table.caption_justify = "left"
    return table


def _styles(row: Row) -> dict[str, str]:
    """The rich style of each cell, by field: numbers that need attention stand out, zeros
    fade."""
    counters = row.counters or {}

    def warn(value: int | None, style: str = "yellow") -> str:
        return style if value else "dim"

    styles = [
        "cyan",
        "bold",
        "",
        "",
        "bold yellow",
        warn(row.waiting),
        warn(row.pending),
        warn(row.delayed),
        warn(row.in_flight, ""),
        "red" if row.workers == 0 and row.counters is not None else "",
        warn(counters.get("processed"), "green"),
        warn(counters.get("retried")),
        warn(counters.get("dead"), "red"),
        warn(counters.get("cancelled"), ""),
        warn(row.dead_letters, "bold red"),
        "",
    ]
    return {field: style for (_, field), style in zip(COLUMNS, styles, strict=True)}


def human_bytes(n: int) -> str:
    """1536 -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def rich_available() -> bool:
    """Whether ``rich`` can be imported (``pip install rich``, the ``cli`` extra)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


async def show(
    client: Client,
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
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_show, client, handlers, url, as_json, every, out)
                    async for _ in signals:
                        break
                    tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # the one task failed (a closed pipe, Redis
                raise group.exceptions[0] from None  # gone): the caller reports it as is
        return
    await _show(client, handlers, url, as_json, every, out)


async def _show(
    client: Client,
    handlers: Sequence[tuple[Source, str]] | None,
    url: str,
    as_json: bool,
    every: float | None,
    out: TextIO,
) -> None:
    terminal = out.isatty()
    if not as_json and terminal and rich_available():
        await _show_rich(client, handlers, url, every, out)
        return
    while True:
        snapshot = await collect(client, handlers)
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


def render_rich_schedules(snapshot: Snapshot) -> Any:
    """The schedules of the snapshot as a ``rich`` Table (None: there are none)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    lines = schedule_rows(snapshot)
    if not lines:
        return None
    table = Table(box=box.SIMPLE_HEAD)
    for i, header in enumerate(SCHEDULE_HEADERS):
        table.add_column(header, justify="left" if i < 5 else "right", no_wrap=i < 4)
    for line in lines:
        table.add_row(*(escape(cell) for cell in line))
    return table


async def _show_rich(
    client: Client,
    handlers: Sequence[tuple[Source, str]] | None,
    url: str,
    every: float | None,
    out: TextIO,
) -> None:
    from rich.console import Console, Group
    from rich.live import Live

    def both(snapshot: Snapshot) -> Any:
        schedules = render_rich_schedules(snapshot)
        main = render_rich(snapshot, url)
        return main if schedules is None else Group(main, schedules)

    console = Console(file=out)
    if every is None:
        console.print(both(await collect(client, handlers)))
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(both(await collect(client, handlers)), refresh=True)
            await anyio.sleep(every)


# -- dead letters --------------------------------------------------------------------------


def age(dead: DeadLetter) -> str:
    """When the message died, and how long ago (``-`` if unknown)."""
    if dead.failed_at is None:
        return "-"
    seconds = int((datetime.now(UTC) - dead.failed_at).total_seconds())
    ago = (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )
    return f"{dead.failed_at:%Y-%m-%d %H:%M:%S}Z ({ago} ago)"


def describe(dead: DeadLetter) -> str:
    """Every field on its own line, the payload as indented JSON (for ``dlq show``)."""
    try:
        data = orjson.dumps(dead.payload, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        data = repr(dead.data)
    fields = (
        ("id", dead.id),
        ("message id", dead.message_id),
        ("handler", dead.handler),
        ("source", dead.source),
        ("channel", dead.channel),
        ("priority", None if dead.priority is None else str(dead.priority)),
        ("attempts", str(dead.attempts)),
        ("failed at", age(dead)),
        ("error", dead.error),
        ("where", dead.where),
    )
    lines = [f"{label:<11} {value}" for label, value in fields if value is not None]
    return "\n".join([*lines, "data", *("  " + line for line in data.splitlines())])


def dead_table(found: Sequence[DeadLetter]) -> str:
    """Dead letters as a plain-text table, one line each (for ``dlq list``)."""

    def cut(text: str, n: int) -> str:
        text = " ".join(text.split())
        return text if len(text) <= n else text[: n - 1] + "…"

    rows = [
        [
            d.id,
            age(d),
            d.handler,
            str(d.attempts),
            cut(d.error, 50),
            cut(d.data.decode("utf-8", "replace"), 40),
        ]
        for d in found
    ]
    headers = ["ID", "FAILED AT (UTC)", "HANDLER", "ATTEMPTS", "ERROR", "DATA"]
    return text_table(headers, rows, left=len(headers))
