"""``redisflow stats``, ``dlq ...`` and ``publish|enqueue|append``: commands that connect.

Each builds a ``Client`` from ``--url``/``--prefix`` (or from the app's flow with
``--app``/``MODULE:ATTR``), runs, and closes it. Redis unreachable is exit status 1; a bad
URL or option is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson

from ..app import Flow
from ..client import Client
from ..config import FlowConfig
from ..connection import CONNECTION_ERRORS, redact
from ..errors import ConfigError, ReplyError
from ..features.cancels import DEFAULT_REASON, DEFAULT_TTL, check_cancel
from ..features.pauses import check_target
from ..message import KINDS, Kind
from ..ops.deadletters import DeadLetters
from ..ops.stats import registered_sources
from . import render
from .run import UsageError, load_flow, use_url

Action = Callable[[Client, Flow | None], Awaitable[int]]


def connect(args: argparse.Namespace) -> tuple[Client, Flow | None]:
    """A client on ``--url``/``--prefix``, or the app's (whose options they override)."""
    if args.app:
        use_url(args.url)
    flow = load_flow(args.app, factory=getattr(args, "factory", False)) if args.app else None
    try:
        if flow is not None:
            config = flow.config
            changes = {k: v for k, v in (("url", args.url), ("prefix", args.prefix)) if v}
            flow.configure(**changes)
            config = flow.config
        else:
            config = FlowConfig.build(args.url, prefix=args.prefix or "rf")
        client = Client(config)
        client.connector  # noqa: B018 - checks the URL now: a usage error
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return client, flow


def connected(args: argparse.Namespace, action: Action) -> int:
    """Run ``action`` and close the client; Redis being unreachable is exit status 1."""
    client, flow = connect(args)

    async def main() -> int:
        try:
            return await action(client, flow)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    try:
        code: int = anyio.run(main)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except BrokenPipeError:  # our stdout was closed (`| head`), not Redis: main ends quietly
        raise
    except CONNECTION_ERRORS as exc:
        return fail(f"cannot reach Redis at {redact(client.config.url)}: {exc}")
    except ReplyError as exc:
        return fail(f"Redis replied: {exc}")
    return code


def fail(message: str) -> int:
    """Print an error (exit status 1)."""
    print(f"redisflow: error: {message}", file=sys.stderr)
    return 1


def stats(args: argparse.Namespace) -> int:
    """``redisflow stats``."""

    async def action(client: Client, flow: Flow | None) -> int:
        handlers = [(h.source, h.name) for h in flow.handlers.values()] if flow else None
        url = client.connector.display
        await render.show(client, handlers, url=url, as_json=args.json, every=args.watch)
        return 0

    return connected(args, action)


def payload(text: str) -> Any:
    """The JSON payload of a send command (``-``: stdin)."""
    raw = sys.stdin.buffer.read() if text == "-" else text.encode()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = "stdin" if text == "-" else "JSON"
        raise UsageError(f"invalid JSON payload ({where}): {exc}") from None


def send(args: argparse.Namespace) -> int:
    """``redisflow publish|enqueue|append``."""
    value = payload(args.payload)

    async def action(client: Client, flow: Flow | None) -> int:
        result: object
        if args.command == "publish":
            result = await client.publish(args.name, value)
        elif args.command == "append":
            result = await client.append(args.name, value, maxlen=args.maxlen)
        elif args.priority is not None:
            result = await client.enqueue_priority(
                args.name, value, priority=args.priority, delay=args.delay
            )
        else:
            result = await client.enqueue(args.name, value, delay=args.delay)
        print(result)
        return 0

    return connected(args, action)


def pause(args: argparse.Namespace) -> int:
    """``redisflow pause|resume NAME [--group GROUP]``."""
    name, group = args.name, args.group

    async def action(client: Client, flow: Flow | None) -> int:
        kinds, known = await kinds_of(client, flow, name)
        fair = False
        if group is not None:  # a fair group of a queue (the app's handler says, or Redis)
            handlers = flow.handlers.values() if flow is not None else ()
            fair = any(h.source.name == name and h.options.groups for h in handlers)
            fair = fair or await client.grouped.contains(name)
            if fair:
                client.grouped.declared.add(name)
        check_target(name, group, kinds, fair=fair)  # a ConfigError is a usage error
        what = " and ".join(sorted(kinds - {"channel"}))
        where = f"{what} {name!r}" if what else repr(name)
        if group is not None:
            where += f" (group {group})"
        if args.command == "pause":
            await client.pause(name, group=group)
            print(f"paused {where}")
            if not kinds:
                print(f"redisflow: note: no flow under prefix {client.config.prefix!r}"
                      f" registered a source named {name!r} (registered: "
                      f"{', '.join(known[:10]) or 'none'}); paused anyway: workers that"
                      " start with it will not fetch it", file=sys.stderr)  # fmt: skip
        elif await client.resume(name, group=group):
            print(f"resumed {where}")
        else:
            print(f"{where} was not paused")
        return 0

    return connected(args, action)


def cancel(args: argparse.Namespace) -> int:
    """``redisflow cancel SOURCE ID [--reason TEXT] [--group GROUP] [--ttl SECONDS]``."""
    name, message_id, group = args.name, args.id, args.group
    ttl = DEFAULT_TTL if args.ttl is None else args.ttl

    async def action(client: Client, flow: Flow | None) -> int:
        kinds, known = await kinds_of(client, flow, name)
        check_cancel(name, message_id, kinds, group, ttl)  # a ConfigError is a usage error
        what = " and ".join(sorted(kinds))
        where = f"{what} {name!r}" if what else repr(name)
        await client.cancel(name, message_id, reason=args.reason or DEFAULT_REASON,
                            group=group, ttl=ttl)  # fmt: skip
        print(f"cancelled message {message_id} of {where}" + (f" (group {group})" if group else ""))
        if not kinds:
            print(f"redisflow: note: no flow under prefix {client.config.prefix!r} registered"
                  f" a source named {name!r} (registered: {', '.join(known[:10]) or 'none'});"
                  " cancelled anyway", file=sys.stderr)  # fmt: skip
        return 0

    return connected(args, action)


# -- dlq ------------------------------------------------------------------------------------


def dlq_source(args: argparse.Namespace) -> tuple[str, Kind | None]:
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


async def kinds_of(client: Client, flow: Flow | None, name: str) -> tuple[set[Kind], list[str]]:
    """The kinds ``name`` is consumed as (per the app's handlers, else the flows' registry),
    and every registered source name."""
    if flow is not None:
        sources = [h.source for h in flow.handlers.values()]
    else:
        sources = await registered_sources(client)
    return {s.kind for s in sources if s.name == name}, sorted({s.name for s in sources})


async def resolve_kind(client: Client, flow: Flow | None, name: str, action: str) -> Kind | None:
    """The kind of source ``name``; for a replay it must be known. A name nothing registered
    is pointed out (a typo would otherwise look like an empty dead-letter stream)."""
    kinds, known = await kinds_of(client, flow, name)
    if len(kinds) == 1:
        return kinds.pop()
    if kinds:
        if action == "replay":
            raise UsageError(f"{name!r} is consumed as {' and '.join(sorted(kinds))}: give --kind")
        return None
    shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "") or "none"
    note = (
        f"no flow under prefix {client.config.prefix!r} registered a source named {name!r}"
        f" (registered: {shown})"
    )
    if action == "replay":
        raise UsageError(f"cannot tell what kind of source {name!r} is: {note}; give --kind,"
                         " or --queue/--priority/--stream/--channel NAME")  # fmt: skip
    print(f"redisflow: note: {note}", file=sys.stderr)
    return None


def dlq(args: argparse.Namespace) -> int:
    """``redisflow dlq list|show|replay|purge``."""
    name, kind = dlq_source(args)
    filters: dict[str, Any] = {}
    if args.action != "show":
        limit = args.limit or (100 if args.action == "list" else None)
        filters = dict(handler=args.handler, error=args.error, older_than=args.older_than,
                       newer_than=args.newer_than, ids=args.id or (), limit=limit)  # fmt: skip
    if args.action == "purge" and not args.all and not any(filters.values()):
        raise UsageError("purge needs a filter (--handler, --error, --older-than, --newer-than,"
                         " --id, --limit) or --all")  # fmt: skip

    async def action(client: Client, flow: Flow | None) -> int:
        resolved = kind or await resolve_kind(client, flow, name, args.action)
        dead = DeadLetters(client, name, resolved or "queue")
        where = f"{resolved} {name!r}" if resolved else repr(name)
        if args.action == "show":
            found = await dead.show(args.entry)
            if found is None:
                return fail(f"no dead letter {args.entry} in {name!r}")
            print(_json(found.to_json()) if args.json else render.describe(found))
        elif args.action == "list":
            letters = await dead.list(**filters)
            if args.json:
                print(_json([d.to_json() for d in letters]))
            else:
                print(render.dead_table(letters) if letters else "no matching dead letters")
                print(f"{len(letters)} shown; {_letters(await dead.count())} in {where}")
        elif args.dry_run:
            await dry_run(dead, args.action, filters, where)
        elif args.action == "replay":
            count = await dead.replay(**filters, priority=args.at_priority)
            print(f"replayed {_letters(count)} to {where}")
        else:
            print(f"purged {_letters(await dead.purge(**filters))} of {where}")
        return 0

    return connected(args, action)


async def dry_run(dead: DeadLetters, action: str, filters: dict[str, Any], where: str) -> None:
    """Show (the first 20 of) the dead letters a replay or purge would take, and how many."""
    count = await (dead.replay if action == "replay" else dead.purge)(**filters, dry_run=True)
    first = await dead.list(**{**filters, "limit": min(filters["limit"] or 20, 20)})
    if first:
        print(render.dead_table(first))
    if count > len(first):
        print(f"... and {count - len(first)} more")
    print(f"would {action} {_letters(count)} of {where}")


def _letters(n: int) -> str:
    return f"{n} dead letter" + ("" if n == 1 else "s")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
