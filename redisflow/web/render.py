"""The dashboard's HTML: Jinja2 templates with autoescaping on for every value (names,
payloads and error texts come from Redis, where anyone who can write may have put markup),
and the filters they use. Nothing here builds markup from a value without escaping it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DASH = "\u2013"  # what a cell shows for a value that does not apply or is unknown


def number(value: int | None) -> str:
    """``1,234``, or a dash for what does not apply."""
    return DASH if value is None else f"{value:,}"


def size(value: int | None) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``."""
    if value is None:
        return DASH
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"  # pragma: no cover


def rate(value: float | None) -> str:
    """A rate per second: ``12.5/s``; a dash when unknown."""
    if value is None:
        return DASH
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago: ``42 s ago``, ``3 min ago``, ``5 h ago``, ``2 d ago``."""
    if when is None:
        return DASH
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "in the future"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit} ago"
    return f"{int(seconds)} s ago"


def until(when: datetime | None, now: datetime | None = None) -> str:
    """How long from now: ``in 42 s``, ``in 3 min``, ``in 5 h``; ``due`` once past."""
    if when is None:
        return DASH
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds <= 0:
        return "due"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"in {int(seconds // length)} {unit}"
    return f"in {int(seconds)} s"


def stamp(when: datetime | None) -> str:
    """A UTC time, to the second."""
    return DASH if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(text: str | None) -> float | None:
    """``90``, ``90s``, ``5m``, ``2h``, ``1d`` in seconds; None when empty; ValueError when
    not a duration."""
    if text is None or not text.strip():
        return None
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"not a duration (like 90s, 5m, 2h, 1d): {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2).lower()]


def span(seconds: float) -> str:
    """``5 min``, ``70 s``: how far back a chart goes."""
    return f"{round(seconds / 60)} min" if seconds >= 120 else f"{seconds:.0f} s"


def code(text: str) -> Markup:
    """Text whose `backticked` (or ``double``) parts are shown as code (each part
    escaped)."""
    parts = str(text).replace("``", "`").split("`")
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if i % 2 else escape(part)
        for i, part in enumerate(parts)
    )


def payload(data: bytes) -> str:
    """A payload for reading: indented JSON when it is JSON, else its text."""
    try:
        return orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


def pretty(value: Any) -> str:
    """A value as indented JSON."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def option(value: Any) -> str:
    """A handler option's value: a dash for None, ``yes``/``no``, ``0.1``, ``86400``."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {option(v)}" for k, v in value.items() if v is not None)
    return str(value)


def link(base: str, path: str, **params: Any) -> str:
    """A URL of the dashboard, its query encoded (empty parameters left out)."""
    query = urlencode([(k, v) for k, v in params.items() if v not in (None, "")], doseq=True)
    return f"{base}{path}" + (f"?{query}" if query else "")


def environment() -> Environment:
    """The template environment: autoescape everywhere, undefined names are errors."""
    env = Environment(
        loader=PackageLoader("redisflow.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=number, size=size, rate=rate, ago=ago, until=until, stamp=stamp, code=code,
        payload=payload, pretty=pretty, option=option, span=span,
    )  # fmt: skip
    return env
