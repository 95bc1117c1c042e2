"""The argument parser of the ``redisflow`` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from .. import __version__
from ..connection import parse_url, redact
from ..errors import ConfigError
from ..message import KINDS
from ..protocol.priority import MAX_PRIORITY
from . import check, commands, local, web
from .run import env_flag
from .run import run as run_command


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and a pointer to ``--help``), not the
    whole usage block: the line that says what is wrong is the one that matters."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(f"(see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(
    kind: type[float], what: str, low: float, high: float | None = None, above: bool = False
) -> Any:
    """An argparse type: a number from ``low`` (excluded with ``above``) to ``high``, else an
    error naming ``what``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        too_low = value is None or (value <= low if above else value < low)
        if too_low or (high is not None and value is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _url(text: str) -> str:
    """An argparse type: a Redis URL that parses (``--url ''`` or one slash is an error,
    never a fall back to localhost)."""
    try:
        parse_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except Exception as exc:  # never argparse's "invalid value: <the URL>": it is not redacted
        raise argparse.ArgumentTypeError(f"invalid Redis URL {redact(text)!r} ({exc!r})") from None
    return text


SECONDS = _number(float, "a number of seconds >= 0", 0)
DURATION = _number(float, "a positive number of seconds", 0, above=True)
POSITIVE = _number(int, "an integer >= 1", 1)
PORT = _number(int, "a TCP port from 1 to 65535", 1, 65535)
LEVEL = _number(int, f"a priority from 0 to {MAX_PRIORITY}", 0, MAX_PRIORITY)
CONNECTION = (
    ("--url", dict(type=_url, help="Redis URL (default: the app's, $REDISFLOW_URL, localhost)")),
    ("--prefix", dict(help="key prefix of the flows (default: the app's, else rf)")),
)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FACTORY = ("--factory", dict(action="store_true", help="ATTR is a function returning the Flow"))


def _choice(*choices: str) -> Any:
    """An argparse type: one of ``choices`` (any case). A type rather than ``choices=``:
    argparse checks a default taken from the environment through its type only."""

    def parse(text: str) -> str:
        for choice in choices:
            if text.lower() == choice.lower():
                return choice
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")

    return parse


def env(option: str, default: str | None = None) -> str | None:
    """The default of ``run``'s ``--option``: ``$REDISFLOW_OPTION`` (``--log-level``:
    ``$REDISFLOW_LOG_LEVEL``), checked and converted by the option's type."""
    return os.environ.get("REDISFLOW_" + option.upper().replace("-", "_"), default)


def _run_options() -> tuple[tuple[str, dict[str, Any]], ...]:
    try:
        reload: bool | None = env_flag("reload")
    except argparse.ArgumentTypeError:
        reload = None  # ``run`` reports it (parsing other commands must not fail on it)
    return (
        ("--url", dict(type=_url, help="Redis URL (default: the flow's, or $REDISFLOW_URL)")),
        ("--log-level", dict(default=env("log-level", "INFO"), type=_choice(*LEVELS),
                             metavar="|".join(LEVELS), help="logging level (default INFO)")),
        ("--log-format", dict(default=env("log-format", "text"), type=_choice("text", "json"),
                              metavar="text|json", help="json: one JSON object per line")),
        ("--concurrency", dict(type=POSITIVE, metavar="N", default=env("concurrency"),
                               help="override each handler's concurrency")),
        ("--give-up-after", dict(type=SECONDS, metavar="SECONDS", default=env("give-up-after"),
                                 help="exit 1 when Redis is unreachable this long (0: never)")),
        ("--workers", dict(type=POSITIVE, metavar="N", default=env("workers"),
                           help="run N supervised worker processes")),
        ("--metrics-port", dict(type=PORT, metavar="PORT", default=env("metrics-port"),
                                help="serve Prometheus metrics (worker i of --workers: PORT+i)")),
        ("--reload", dict(action="store_true", default=reload,
                          help="restart workers when a .py file changes")),
        ("--reload-dir", dict(action="append", metavar="DIR", help="watch DIR (default: current)")),
        FACTORY,
    )  # fmt: skip


RUN_EPILOG = (
    "Each option but --url and --reload-dir also reads $REDISFLOW_<OPTION> (e.g. "
    "REDISFLOW_WORKERS=4, REDISFLOW_LOG_LEVEL=DEBUG, REDISFLOW_RELOAD=1); the command line "
    "wins. The URL comes from --url, else the flow's (Flow(url), else $REDISFLOW_URL); with "
    "none configured and nothing at localhost:6379, the embedded server of redisflow[server] "
    "is started."
)
UI_EPILOG = (
    "Without --auth the dashboard serves this machine only (and refuses --host beyond it);"
    " --auth TOKEN is asked for as a password (any user name) or a Bearer token, --auth"
    " USER:PASSWORD as HTTP Basic. Set $REDISFLOW_UI_AUTH instead of --auth to keep it out of"
    " the process list."
)
FILTERS = (
    ("--handler", dict(help="only dead letters of this handler (its qualname)")),
    ("--error", dict(metavar="TEXT", help="only those whose error contains TEXT")),
    ("--older-than", dict(type=SECONDS, metavar="SECONDS", help="died at least SECONDS ago")),
    ("--newer-than", dict(type=SECONDS, metavar="SECONDS", help="died at most SECONDS ago")),
    ("--id", dict(action="append", metavar="ID", help="only this entry (repeatable)")),
    ("--limit", dict(type=POSITIVE, metavar="N", help="at most N, oldest first")),
)
JSON = ("--json", dict(action="store_true", help="print JSON"))
DRY_RUN = ("--dry-run", dict(action="store_true", help="show what would be done, do nothing"))
DLQ = {
    "list": ("list dead letters, oldest first (100 unless --limit)", JSON),
    "show": ("show one dead letter", JSON),
    "replay": ("send dead letters back to their source and delete them", DRY_RUN),
    "purge": ("delete dead letters (give a filter, or --all)", DRY_RUN),
}


def _options(p: argparse.ArgumentParser, *options: tuple[str, dict[str, Any]]) -> None:
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``redisflow`` command."""
    p = Parser(prog="redisflow", description="Redis messaging workers.")
    p.add_argument("--version", action="version", version=f"redisflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    app = ("--app", dict(metavar="MODULE:ATTR", help="take URL, prefix and kinds from a flow"))

    run = sub.add_parser("run", help="run the handlers of a flow until SIGINT/SIGTERM",
                         epilog=RUN_EPILOG)  # fmt: skip
    run.add_argument("app", help="the flow to run: MODULE:ATTR (e.g. app:flow; ATTR: flow)")
    _options(run, *_run_options())
    run.set_defaults(func=run_command, parser=run)

    chk = sub.add_parser("check", help="connect, load the scripts, check the permissions")
    chk.add_argument("app", help="the flow to check: MODULE:ATTR (e.g. app:flow)")
    _options(chk, CONNECTION[0], FACTORY)
    chk.set_defaults(func=check.check, parser=chk)

    srv = sub.add_parser("server", help="run a local Redis-compatible server (development)")
    srv.add_argument("--port", type=PORT, default=6379, help="port on 127.0.0.1 (default 6379)")
    srv.add_argument("--dir", default=".redisflow", help="data directory (default .redisflow)")
    srv.set_defaults(func=local.server, parser=srv)

    st = sub.add_parser("stats", help="queue depth, stream lag, counters and memory per handler")
    st.add_argument("app", nargs="?", metavar="MODULE:ATTR", help="its handlers (default: all)")
    _options(st, *CONNECTION, JSON)
    every = _number(float, "SECONDS >= 0.1", 0.1)
    st.add_argument("--watch", nargs="?", const=2.0, type=every, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until Ctrl-C")  # fmt: skip
    st.set_defaults(func=commands.stats, parser=st)

    dlq = sub.add_parser("dlq", help="list, show, replay or purge the dead letters of a source")
    actions = dlq.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=Parser
    )
    for action, (help_, flag) in DLQ.items():
        q = actions.add_parser(action, help=help_, description=help_)
        if action == "show":
            q.add_argument("target", nargs="*", metavar="NAME", help="the source (or --queue...)")
            q.add_argument("entry", metavar="ID", help="the entry id of the dead letter")
        else:
            q.add_argument("target", nargs="?", metavar="NAME", help="the source (or --queue...)")
        source = q.add_mutually_exclusive_group()
        for kind in KINDS:
            source.add_argument(f"--{kind}", metavar="NAME", dest=f"source_{kind}",
                                help=f"the source is the {kind} NAME")  # fmt: skip
        q.add_argument("--kind", choices=KINDS, help="the kind of a positional NAME")
        _options(q, app, *CONNECTION, flag)
        if action != "show":
            _options(q, *FILTERS)
        if action == "replay":
            q.add_argument("--at-priority", type=LEVEL, default=None, metavar="N",
                           help="level of replayed priority messages (default: own)")  # fmt: skip
        if action == "purge":
            q.add_argument("--all", action="store_true", help="purge every dead letter")
        q.set_defaults(func=commands.dlq, parser=q)

    ui = sub.add_parser("ui", help="serve the web dashboard (redisflow[ui])",
                        epilog=UI_EPILOG)  # fmt: skip
    ui.add_argument("app", nargs="?", metavar="MODULE:ATTR",
                    help="its handlers, options, docs (default: registered sources)")  # fmt: skip
    _options(ui, *CONNECTION, FACTORY)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=PORT, default=8765, help="port (default 8765)")
    ui.add_argument("--auth", default=env("ui-auth"), metavar="TOKEN|USER:PASSWORD",
                    help=f"required beyond 127.0.0.1 (default ${web.AUTH_ENV})")  # fmt: skip
    ui.add_argument("--read-only", action="store_true",
                    help="show no action, refuse every POST")  # fmt: skip
    ui.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS with this certificate")
    ui.add_argument("--ssl-keyfile", metavar="FILE", help="... and this key")
    ui.set_defaults(func=web.ui, parser=ui)

    doc = sub.add_parser("docs", help="print the AsyncAPI 3.0 document of a flow")
    doc.add_argument("app", metavar="MODULE:ATTR", help="the flow (e.g. app:flow)")
    doc.add_argument("--format", type=_choice("json", "yaml"), metavar="json|yaml",
                     help="default json (yaml for an --out FILE.yaml)")  # fmt: skip
    doc.add_argument("--out", metavar="FILE", help="write it to FILE (default: stdout)")
    doc.add_argument("--title", help="the document's title (default: the handlers' module)")
    _options(doc, FACTORY)
    doc.set_defaults(func=web.docs, parser=doc)

    for command, help_ in (
        ("pause", "stop every worker fetching a queue, priority queue, stream or schedule"),
        ("resume", "let the workers fetch a paused source again"),
    ):
        ps = sub.add_parser(command, help=help_, description=help_)
        ps.add_argument("name", metavar="NAME", help="the source (or schedule) name")
        ps.add_argument("--group", metavar="GROUP",
                        help="one consumer group of a stream (default: all of it)")  # fmt: skip
        _options(ps, app, *CONNECTION)
        ps.set_defaults(func=commands.pause, parser=ps)

    help_ = "cancel a message of a queue, priority queue or stream (waiting or running)"
    cs = sub.add_parser("cancel", help=help_, description=help_)
    cs.add_argument("name", metavar="SOURCE", help="the queue, priority queue or stream")
    cs.add_argument("id", metavar="ID", help="the message id (a stream's entry id)")
    _options(
        cs,
        ("--reason", dict(metavar="TEXT", help="why (msg.cancelled, the status record)")),
        ("--group", dict(metavar="GROUP", help="one consumer group of a stream (default: all)")),
        ("--ttl", dict(type=DURATION, metavar="SECONDS", help="how long the mark is kept"
                       " (default: a day; a message due later runs)")),
        app, *CONNECTION,
    )  # fmt: skip
    cs.set_defaults(func=commands.cancel, parser=cs)

    for command, target, help_ in (
        ("publish", "CHANNEL", "PUBLISH a JSON message to a channel; prints the receivers"),
        ("enqueue", "QUEUE", "add a JSON message to a queue (--priority: a priority queue)"),
        ("append", "STREAM", "XADD a JSON message to a stream; prints the entry id"),
    ):
        send = sub.add_parser(command, help=help_)
        send.add_argument("name", metavar=target)
        send.add_argument("payload", metavar="JSON", help="the payload as JSON, or - for stdin")
        _options(send, app, *CONNECTION)
        if command == "enqueue":
            _options(
                send,
                ("--priority", dict(type=LEVEL, metavar="N", help="to a priority queue, level N")),
                ("--delay", dict(type=SECONDS, metavar="SECONDS", help="deliver later")),
            )
        if command == "append":
            send.add_argument("--maxlen", type=POSITIVE, metavar="N", help="trim to ~N entries")
        send.set_defaults(func=commands.send, parser=send)
    return p
