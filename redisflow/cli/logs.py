"""Logging for the command line: text lines, or one JSON object per line (``--log-format
json``) with the structured fields redisflow attaches (``message_id``, ``attempt``,
``handler``, ``source``: the ``extra`` of its log calls)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

#: The attributes every LogRecord has; anything else on a record came from ``extra``.
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the ``extra`` fields, ``worker`` under a supervisor, ``exception``."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        out.update((k, v) for k, v in vars(record).items() if k not in STANDARD)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str, fmt: str, worker: str | None) -> None:
    """Log to stderr at ``level``, as ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        tag = f" [worker {worker}]" if worker else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler])
