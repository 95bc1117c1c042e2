"""``redisflow check MODULE:ATTR``: a health check before (or beside) ``run``.

Connects as the flow would (the server's version is checked there), loads every script
on the node of each source (of each partition), and asks Redis whether the flow's user may
run what the handlers run on their keys and channels (sharded ones with ``SSUBSCRIBE``) and
what producers run on the keys they write (dedup markers, status records, the records and
channels of a handler that keeps results): ``ACL DRYRUN``;
a user not allowed that is checked for reading the keys instead. Prints one line per
problem; exit status 0 when there is none, 1 otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from ..app import Flow
from ..client import Client
from ..connection import CONNECTION_ERRORS
from ..consumers.kinds import TRAITS
from ..errors import ConfigError, RedisflowError, ReplyError
from ..handler import Handler
from ..keys import reply_channel, result_key, status_key
from ..ops.health import evicting
from ..protocol import scripts
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
        problems = static
        try:  # consumers and producers read the partition layouts of their sources
            await client.layouts.record("")
        except ReplyError as exc:
            problems.append(f"cannot read the partition layouts: {exc}")
        problems += [p async for p in _scripts(client, flow)]
        found, notes = await _permissions(client, flow)
        if any(h.source.kind != "channel" for h in flow.handlers.values()):
            notes += [f"{WARNING}{w}" for w in await evicting(connector)]
        return problems + found, notes
    finally:
        await client.aclose()


async def _scripts(client: Client, flow: Flow) -> AsyncIterator[str]:
    keys = {key for handler in flow.handlers.values() for key in await _parts(client, handler)}
    for key in sorted(keys):
        for script in SCRIPTS:
            try:
                await client.connector.on_key(key, "SCRIPT", "LOAD", script.source)
            except ReplyError as exc:
                yield f"cannot load the scripts on the node of {key!r}: {exc}"
                break


async def _parts(client: Client, handler: Handler) -> list[str]:
    """The keys a handler's consumers read: its source, or each of its partitions."""
    if not TRAITS[handler.source.kind].keyed:
        return []
    try:
        return await client.layouts.all_keys(handler.source.name)
    except ReplyError:  # reported once by run_checks
        return [handler.source.name]


async def _permissions(client: Client, flow: Flow) -> tuple[list[str], list[str]]:
    connector = client.connector
    try:
        who = await connector.send("ACL", "WHOAMI")
        user = who.decode() if isinstance(who, bytes) else str(who)
        await connector.send("ACL", "DRYRUN", user, "PING")
    except ReplyError as exc:
        problems = []
        for handler in flow.handlers.values():
            traits = TRAITS[handler.source.kind]
            for part in await _parts(client, handler):
                for key in traits.keys(part, client.keys(part)):
                    try:
                        await connector.send("EXISTS", key)
                    except ReplyError as err:
                        problems.append(f"{handler.source} -> {handler.name}: {key!r}: {err}")
        note = f"write permissions not checked (ACL DRYRUN refused: {exc}); reads checked"
        return problems, [note]
    problems = []
    for handler in flow.handlers.values():
        for command in await _commands(client, handler):
            reply = await connector.send("ACL", "DRYRUN", user, *command)
            if reply not in ("OK", b"OK"):
                text = reply.decode() if isinstance(reply, bytes) else str(reply)
                problems.append(f"{handler.source} -> {handler.name}: user {user!r}: {text}")
    return problems, []


async def _commands(client: Client, handler: Handler) -> list[Sequence[Any]]:
    """The commands a handler's consumers run, one per key or channel they touch (every
    partition), and those its producers run on its keys: dedup markers and status
    records (with tracking), and the counters workers report."""
    source, options, config = handler.source, handler.options, client.config
    traits = TRAITS[source.kind]
    sharded = config.sharded_pubsub
    if sharded is None:
        sharded = client.connector.cluster
    parts = await _parts(client, handler) or [source.name]
    commands: list[Sequence[Any]] = []
    sha = scripts.QUEUE_FETCH.sha
    for part in parts:
        keys = client.keys(part)
        pattern = bool(options.pattern)
        commands += traits.commands(source, part, keys, pattern=pattern, sharded=sharded)
        commands += [
            ["EVALSHA", sha, 1, keys.dedup("check")],  # producers' dedup_key
            ["HINCRBY", keys.stats, "check", 0],  # the workers' counters
            ["HSET", keys.inflight, "check", "0"],
        ]
        if traits.keyed:  # every fetch reads the version of the cancel marks, then them
            commands += [["GET", keys.cancels_version], ["HGETALL", keys.cancels]]
        if options.idempotency_key is not None:
            commands.append(["EVALSHA", sha, 1, keys.done("check")])
        if options.rate_limit is not None:
            commands.append(["EVALSHA", sha, 1, keys.rate("check")])
    if options.result_ttl is not None:  # it keeps results: the record, then its push
        rid = "check"
        commands += [
            ["EVALSHA", sha, 1, result_key(config.prefix, rid)],
            ["SPUBLISH", reply_channel(config.prefix, rid), "check"],
        ]
    if traits.keyed:  # every worker reads what is paused
        commands.append(["HGETALL", client.pauses.key])
    if config.track if options.track is None else options.track:
        commands += [
            ["HSET", status_key(config.prefix, "check"), "status", "published"],
            ["HINCRBY", client.keys(source.name).counts, "published", 0],
        ]
    return commands
