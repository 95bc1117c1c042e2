"""``redisflow check MODULE:ATTR``: a health check before (or beside) ``run``.

Connects as the flow would (the server's version is checked there), loads every script
on the node of each source, and asks Redis whether the flow's user may run what the
handlers run on their keys and channels (``ACL DRYRUN``; a user not allowed that is checked
for reading the keys instead). Prints one line per problem; exit status 0 when there is
none, 1 otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio

from ..app import Flow
from ..client import Client
from ..connection import CONNECTION_ERRORS
from ..errors import ConfigError, RedisflowError, ReplyError
from ..handler import Handler
from ..protocol import scripts
from ..runtime import evicting
from .run import UsageError, load_flow, use_url

WARNING = "warning: "
#: Every script a flow may run (loading one is idempotent and cheap).
SCRIPTS = [s for s in vars(scripts).values() if isinstance(s, scripts.Script)]


def check(args: argparse.Namespace) -> int:
    """``redisflow check``."""
    use_url(args.url)
    flow = load_flow(args.app, factory=args.factory)
    try:
        if args.url:
            flow.configure(url=args.url)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    problems, notes = anyio.run(run_checks, flow)
    warnings = [n for n in notes if n.startswith(WARNING)]
    for note in notes:
        print(note if note.startswith(WARNING) else f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    if not problems:
        handlers = len(flow.handlers)
        also = f" ({len(warnings)} warning{'s' * (len(warnings) != 1)})" if warnings else ""
        print(f"ok: {args.app}: {handlers} handler{'s' * (handlers != 1)} ready to run at"
              f" {flow.client.connector.display}{also}")  # fmt: skip
    return 1 if problems else 0


async def run_checks(flow: Flow) -> tuple[list[str], list[str]]:
    """The problems found (empty: all good) and notes: what could not be checked, and
    warnings (``warning: ...``). Every check ``start`` makes, without starting."""
    client = flow.client
    static = flow.problems()
    connector = client.connector
    where = connector.display
    try:
        await connector.ready()
        await connector.send("PING")
    except CONNECTION_ERRORS as exc:
        return [f"cannot reach Redis at {where}: {exc}"], []
    except RedisflowError as exc:  # credentials refused, a server older than 7.0...
        return [f"Redis at {where}: {exc}"], []
    try:
        problems = static + [p async for p in _scripts(client, flow)]
        found, notes = await _permissions(client, flow)
        if any(h.source.kind != "channel" for h in flow.handlers.values()):
            notes += [f"{WARNING}{w}" for w in await evicting(connector)]
        return problems + found, notes
    finally:
        await client.aclose()


async def _scripts(client: Client, flow: Flow) -> AsyncIterator[str]:
    keys = {h.source.name for h in flow.handlers.values() if h.source.kind != "channel"}
    for key in sorted(keys):
        for script in SCRIPTS:
            try:
                await client.connector.on_key(key, "SCRIPT", "LOAD", script.source)
            except ReplyError as exc:
                yield f"cannot load the scripts on the node of {key!r}: {exc}"
                break


async def _permissions(client: Client, flow: Flow) -> tuple[list[str], list[str]]:
    connector = client.connector
    try:
        who = await connector.send("ACL", "WHOAMI")
        user = who.decode() if isinstance(who, bytes) else str(who)
        await connector.send("ACL", "DRYRUN", user, "PING")
    except ReplyError as exc:
        problems = []
        for handler in flow.handlers.values():
            for key in _keys(client, handler):
                try:
                    await connector.send("EXISTS", key)
                except ReplyError as err:
                    problems.append(f"{handler.source} -> {handler.name}: {key!r}: {err}")
        note = f"write permissions not checked (ACL DRYRUN refused: {exc}); reads checked"
        return problems, [note]
    problems = []
    for handler in flow.handlers.values():
        for command in _commands(client, handler):
            reply = await connector.send("ACL", "DRYRUN", user, *command)
            if reply not in ("OK", b"OK"):
                text = reply.decode() if isinstance(reply, bytes) else str(reply)
                problems.append(f"{handler.source} -> {handler.name}: user {user!r}: {text}")
    return problems, []


def _keys(client: Client, handler: Handler) -> list[str]:
    """The keys a handler's consumer reads and writes (its source and dead letters)."""
    if handler.source.kind == "channel":
        return []
    keys = client.keys(handler.source.name)
    return [handler.source.name, keys.dead, keys.delayed]


def _commands(client: Client, handler: Handler) -> Iterator[Sequence[Any]]:
    """The commands a handler's consumer runs, one per key or channel it touches."""
    source = handler.source
    if source.kind == "channel":
        pattern = handler.options.pattern
        yield ["PSUBSCRIBE" if pattern else "SUBSCRIBE", source.name]
        return
    sha = scripts.QUEUE_FETCH.sha
    for key in _keys(client, handler):
        yield ["EVALSHA", sha, 1, key]
    if source.kind == "stream":
        group = source.group or ""
        yield ["XREADGROUP", "GROUP", group, "c", "COUNT", 1, "STREAMS", source.name, ">"]
        yield ["XACK", source.name, group, "0-1"]
