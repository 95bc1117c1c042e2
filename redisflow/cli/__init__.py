"""The ``redisflow`` command line::

    redisflow run MODULE:ATTR [--workers N] [--reload]  run the handlers of a flow
    redisflow stats [MODULE:ATTR] [--watch [S]] [--json] depth, lag, counters per handler
    redisflow dlq list|show|replay|purge ...             the dead letters of a source
    redisflow pause|resume NAME [--group G]              stop / restart fetching a source
    redisflow publish|enqueue|append NAME JSON           send a message from the shell
    redisflow check MODULE:ATTR                          connect, scripts, permissions
    redisflow ui [MODULE:ATTR] [--host H --auth A]       the web dashboard
    redisflow docs MODULE:ATTR [--format json|yaml]      the flow's AsyncAPI document
    redisflow server [--port P] [--dir D]                a local server (development)

Exit status: 0 on success; 1 when something failed at run time (Redis unreachable, no such
dead letter, workers that keep failing at start, a problem found by ``check``); 2 for a
usage error (a bad option or URL, a module that cannot be imported, an attribute that is
not a Flow).

``parser.py`` defines the options, ``run.py`` runs flows (``supervisor.py``: N workers),
``commands.py`` the commands that connect, ``check.py`` the health check, ``local.py`` the
local server, ``web.py`` the dashboard and the AsyncAPI document, ``logs.py`` text or JSON
logs, ``render.py`` what they print. Nothing else in redisflow imports this package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import logs
from .parser import parser
from .run import UsageError
from .supervisor import ENV_WORKER

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``redisflow`` command; returns the exit code."""
    p = parser()
    args = p.parse_args(argv)
    level, fmt = getattr(args, "log_level", "WARNING"), getattr(args, "log_format", "text")
    logs.configure(level, fmt, os.environ.get(ENV_WORKER))
    try:
        code: int = args.func(args)
    except UsageError as exc:
        args.parser.error(str(exc))  # exits with status 2
    except BrokenPipeError:  # `redisflow stats --watch | head -1`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
