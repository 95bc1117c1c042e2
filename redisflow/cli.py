"""The ``redisflow`` command line::

    redisflow run MODULE:ATTR [--workers N] [--reload]  run the handlers of a flow
    redisflow stats [MODULE:ATTR] [--watch [S]] [--json] depth, lag, counters per handler
    redisflow dlq list|show|replay|purge ...             the dead letters of a source
    redisflow publish|enqueue|append NAME JSON           send a message from the shell

Exit status: 0 on success; 1 when something failed at run time (Redis unreachable, no such
dead letter, workers that keep failing at start); 2 for a usage error (a bad option, a
module that cannot be imported, an attribute that is not a Flow).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
from redis.exceptions import ResponseError

from . import __version__, stats
from .app import Flow, _safe
from .connection import CONNECTION_ERRORS
from .deadletters import DeadLetters, table
from .errors import ConfigError, RedisflowError
from .message import Kind
from .supervisor import ENV_WORKER, Supervisor, serve
from .transports.priority import MAX_PRIORITY

log = logging.getLogger("redisflow")
KINDS: tuple[Kind, ...] = ("queue", "priority", "stream", "channel")


class UsageError(Exception):
    """Raised when the command line names something that cannot be used."""


def load_flow(spec: str) -> Flow:
    """Import ``module:attribute`` (attribute defaults to ``flow``) and return the Flow."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "flow"
    if not module_name or not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"expected MODULE:ATTRIBUTE such as 'app:flow', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(
                f"module {module_name!r} not found (searched the current directory and PYTHONPATH)"
            ) from None
        raise UsageError(_import_failed(module_name)) from None
    except Exception:
        raise UsageError(_import_failed(module_name)) from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Flow):
        raise UsageError(f"{spec!r} is a {type(obj).__name__}, not a redisflow.Flow")
    return obj


def _import_failed(module_name: str) -> str:
    detail = "".join(traceback.format_exc(limit=-3)).rstrip()
    return f"importing module {module_name!r} failed:\n{detail}"


def _override_concurrency(flow: Flow, concurrency: int) -> None:
    for key, handler in flow.handlers.items():
        options = dataclasses.replace(handler.options, concurrency=concurrency)
        options.check(f"handler {handler.name!r}")
        flow.handlers[key] = dataclasses.replace(handler, options=options)


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


# -- run ----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    if args.reload_dir and not args.reload:
        raise UsageError("--reload-dir needs --reload")
    flow = load_flow(args.app)  # in a supervisor too: a usage error is reported at once
    if args.url:
        flow.url = args.url
    if args.concurrency is not None:
        _override_concurrency(flow, args.concurrency)
    if args.give_up_after is not None:
        flow.give_up_after = args.give_up_after or None
    if args.metrics_port is not None:
        flow.metrics_port = args.metrics_port + int(os.environ.get(ENV_WORKER, 0))
    if args.workers is not None or args.reload:
        return _supervise(args)
    if not flow.handlers:
        log.warning("%s has no handlers; it will only wait for a signal", args.app)
    log.info(
        "redisflow %s: %d handlers, Redis at %s", args.app, len(flow.handlers), _safe(flow.url)
    )
    try:
        anyio.run(serve, flow, backend_options=_backend_options())
    except RedisflowError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    log.info("redisflow %s: stopped", args.app)
    return 0


def _supervise(args: argparse.Namespace) -> int:
    dirs: list[Path] = []
    if args.reload:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise UsageError("--reload needs watchfiles: pip install 'redisflow[reload]'") from None
        dirs = [Path(d).resolve() for d in args.reload_dir or [os.getcwd()]]
        for d in dirs:
            if not d.is_dir():
                raise UsageError(f"--reload-dir {d}: not a directory")
    command = [sys.executable, "-m", "redisflow", "run", args.app, "--log-level", args.log_level]
    for option in ("url", "concurrency", "give_up_after", "metrics_port"):
        value = getattr(args, option)
        if value is not None:
            command += ["--" + option.replace("_", "-"), str(value)]
    supervisor = Supervisor(command, args.workers or 1, reload_dirs=dirs)
    log.info("redisflow %s: supervising %d workers", args.app, supervisor.workers)
    code: int = anyio.run(supervisor.run, backend_options=_backend_options())
    return code


# -- commands that connect: stats, dlq, publish/enqueue/append ------------------------------


def _flow(args: argparse.Namespace) -> Flow:
    """The app's flow (``--url``/``--prefix`` override its own), else a bare producer."""
    try:
        checked = Flow(args.url, prefix=args.prefix or "rf")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not args.app:
        return checked
    flow = load_flow(args.app)
    flow.url = args.url or flow.url
    flow.prefix = args.prefix or flow.prefix
    return flow


def _connected(args: argparse.Namespace, action: Callable[[Flow], Awaitable[int]]) -> int:
    """Run ``action(flow)`` and close the flow; Redis being unreachable is exit status 1."""
    flow = _flow(args)

    async def main() -> int:
        try:
            return await action(flow)
        finally:
            with anyio.CancelScope(shield=True):
                await flow.aclose()

    try:
        code: int = anyio.run(main)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except CONNECTION_ERRORS as exc:
        return _fail(f"cannot reach Redis at {_safe(flow.url)}: {exc}")
    except ResponseError as exc:
        return _fail(f"Redis replied: {exc}")
    return code


def _fail(message: str) -> int:
    print(f"redisflow: error: {message}", file=sys.stderr)
    return 1


def _stats(args: argparse.Namespace) -> int:
    async def action(flow: Flow) -> int:
        handlers = [(h.source, h.name) for h in flow.handlers.values()] if args.app else None
        url = _safe(flow.url)
        await stats.show(flow, handlers, url=url, as_json=args.json, every=args.watch)
        return 0

    return _connected(args, action)


def _payload(text: str) -> Any:
    raw = sys.stdin.buffer.read() if text == "-" else text.encode()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = "stdin" if text == "-" else "JSON"
        raise UsageError(f"invalid JSON payload ({where}): {exc}") from None


def _send(args: argparse.Namespace) -> int:
    value = _payload(args.payload)

    async def action(flow: Flow) -> int:
        result: object
        if args.command == "publish":
            result = await flow.publish(args.name, value)
        elif args.command == "append":
            result = await flow.append(args.name, value, maxlen=args.maxlen)
        elif args.priority is not None:
            result = await flow.enqueue_priority(
                args.name, value, priority=args.priority, delay=args.delay
            )
        else:
            result = await flow.enqueue(args.name, value, delay=args.delay)
        print(result)
        return 0

    return _connected(args, action)


# -- dlq ------------------------------------------------------------------------------------


def _dlq_source(args: argparse.Namespace) -> tuple[str, Kind | None]:
    """The source name, and its kind if the command line gives it."""
    given = [(kind, getattr(args, f"source_{kind}")) for kind in KINDS]
    given = [(kind, name) for kind, name in given if name is not None]
    names = args.target if isinstance(args.target, list) else [args.target]
    names = [name for name in names if name is not None]
    if given and names:
        raise UsageError(f"give the source once: {names[0]!r} or --{given[0][0]} {given[0][1]!r}")
    if given:
        if args.kind is not None:
            raise UsageError(f"--kind goes with a positional NAME, not with --{given[0][0]}")
        return given[0][1], given[0][0]
    if len(names) != 1:
        raise UsageError(
            "name one source: NAME [--kind KIND], or --queue/--priority/--stream/--channel NAME"
        )
    return names[0], args.kind


async def _kind_of(flow: Flow, name: str, app: bool) -> Kind:
    """The kind of source ``name`` per the app's handlers, else per the flows' registry."""
    if app:
        kinds = {h.source.kind for h in flow.handlers.values() if h.source.name == name}
    else:
        kinds = {s.kind for s in await stats.registered_sources(flow) if s.name == name}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds:
        raise UsageError(f"{name!r} is consumed as {' and '.join(sorted(kinds))}: give --kind")
    raise UsageError(
        f"cannot tell what kind of source {name!r} is (no flow under prefix {flow.prefix!r}"
        " registered it): give --kind, or --queue/--priority/--stream/--channel NAME"
    )


def _dlq(args: argparse.Namespace) -> int:
    name, kind = _dlq_source(args)
    filters: dict[str, Any] = {}
    if args.action != "show":
        limit = args.limit or (100 if args.action == "list" else None)
        filters = dict(handler=args.handler, error=args.error, older_than=args.older_than,
                       newer_than=args.newer_than, ids=args.id or (), limit=limit)  # fmt: skip
    if args.action == "purge" and not args.all and not any(filters.values()):
        raise UsageError("purge needs a filter (--handler, --error, --older-than, --newer-than,"
                         " --id, --limit) or --all")  # fmt: skip

    async def action(flow: Flow) -> int:
        resolved = kind
        if resolved is None and args.action == "replay":
            resolved = await _kind_of(flow, name, bool(args.app))
        dlq = flow.dlq(name, resolved or "queue")
        where = f"{resolved} {name!r}" if resolved else repr(name)
        if args.action == "show":
            dead = await dlq.show(args.entry)
            if dead is None:
                return _fail(f"no dead letter {args.entry} in {name!r}")
            print(_json(dead.to_json()) if args.json else dead.describe())
        elif args.action == "list":
            found = await dlq.list(**filters)
            if args.json:
                print(_json([d.to_json() for d in found]))
            else:
                print(table(found) if found else "no matching dead letters")
                print(f"{len(found)} shown; {_letters(await dlq.count())} in {where}")
        elif args.dry_run:
            await _dry_run(dlq, args.action, filters, where)
        elif args.action == "replay":
            count = await dlq.replay(**filters, priority=args.at_priority)
            print(f"replayed {_letters(count)} to {where}")
        else:
            print(f"purged {_letters(await dlq.purge(**filters))} of {where}")
        return 0

    return _connected(args, action)


async def _dry_run(dlq: DeadLetters, action: str, filters: dict[str, Any], where: str) -> None:
    """Show (the first 20 of) the dead letters a replay or purge would take, and how many."""
    count = await (dlq.replay if action == "replay" else dlq.purge)(**filters, dry_run=True)
    first = await dlq.list(**{**filters, "limit": min(filters["limit"] or 20, 20)})
    if first:
        print(table(first))
    if count > len(first):
        print(f"... and {count - len(first)} more")
    print(f"would {action} {_letters(count)} of {where}")


def _letters(n: int) -> str:
    return f"{n} dead letter" + ("" if n == 1 else "s")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# -- the parser -----------------------------------------------------------------------------


def _number(kind: type[float], what: str, low: float, high: float | None = None) -> Any:
    """An argparse type: a number from ``low`` to ``high``, else an error naming ``what``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


SECONDS = _number(float, "a number of seconds >= 0", 0)
POSITIVE = _number(int, "an integer >= 1", 1)
PORT = _number(int, "a TCP port from 1 to 65535", 1, 65535)
LEVEL = _number(int, f"a priority from 0 to {MAX_PRIORITY}", 0, MAX_PRIORITY)
CONNECTION = (
    ("--url", dict(help="Redis URL (default: the app's, $REDISFLOW_URL, redis://localhost:6379)")),
    ("--prefix", dict(help="key prefix of the flows (default: the app's, else rf)")),
)
RUN = (
    ("--url", dict(help="Redis URL (default: the flow's, or $REDISFLOW_URL)")),
    ("--log-level", dict(default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                         type=str.upper, help="logging level (default INFO)")),
    ("--concurrency", dict(type=POSITIVE, metavar="N", help="override each handler's concurrency")),
    ("--give-up-after", dict(type=SECONDS, metavar="SECONDS",
                             help="exit 1 when Redis is unreachable this long (0: never)")),
    ("--workers", dict(type=POSITIVE, metavar="N", help="run N supervised worker processes")),
    ("--metrics-port", dict(type=PORT, metavar="PORT",
                            help="serve Prometheus metrics (worker i of --workers: PORT+i)")),
    ("--reload", dict(action="store_true", help="restart workers when a .py file changes")),
    ("--reload-dir", dict(action="append", metavar="DIR", help="watch DIR (default: current)")),
)  # fmt: skip
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
    p = argparse.ArgumentParser(prog="redisflow", description="Redis messaging workers.")
    p.add_argument("--version", action="version", version=f"redisflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    app = ("--app", dict(metavar="MODULE:ATTR", help="take URL, prefix and kinds from a flow"))

    run = sub.add_parser("run", help="run the handlers of a flow until SIGINT/SIGTERM")
    run.add_argument("app", help="the flow to run, as MODULE:ATTRIBUTE (e.g. app:flow)")
    _options(run, *RUN)
    run.set_defaults(func=_run, parser=run)

    st = sub.add_parser("stats", help="queue depth, stream lag, counters and memory per handler")
    st.add_argument("app", nargs="?", metavar="MODULE:ATTR", help="its handlers (default: all)")
    _options(st, *CONNECTION, JSON)
    every = _number(float, "SECONDS >= 0.1", 0.1)
    st.add_argument("--watch", nargs="?", const=2.0, type=every, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until Ctrl-C")  # fmt: skip
    st.set_defaults(func=_stats, parser=st)

    dlq = sub.add_parser("dlq", help="list, show, replay or purge the dead letters of a source")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
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
        q.set_defaults(func=_dlq, parser=q)

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
        send.set_defaults(func=_send, parser=send)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``redisflow`` command; returns the exit code."""
    p = parser()
    args = p.parse_args(argv)
    worker = os.environ.get(ENV_WORKER)
    tag = f" [worker {worker}]" if worker else ""
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING"),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
    )
    try:
        code: int = args.func(args)
    except UsageError as exc:
        args.parser.error(str(exc))  # exits with status 2
    return code
