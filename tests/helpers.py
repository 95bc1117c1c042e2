"""Helpers shared by the tests: private ``redis-server`` processes, ``eventually``, a
flow factory with short timings, and ``Kind``, the adapter that lets one test run against
every consumer kind.

Tests must never touch a shared Redis (e.g. the one on 127.0.0.1:6379). Every
server started here listens on 127.0.0.1 on a free port, has persistence off by
default, and is stopped *only by its own PID*.

Usage::

    from tests.helpers import start_redis, stop_redis

    proc = start_redis(["--appendonly", "yes"])
    try:
        ...  # use proc.url / proc.port
        stop_redis(proc, remove_dir=False)                       # "crash"/stop
        proc = start_redis(["--appendonly", "yes"], port=proc.port,
                           data_dir=proc.data_dir)               # restart on same data
    finally:
        stop_redis(proc)
"""

from __future__ import annotations

import atexit
import inspect
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from redisflow import Flow, Source

__all__ = [
    "ALL",
    "DURABLE",
    "FAST",
    "GROUP",
    "LISTY",
    "RELIABLE",
    "Kind",
    "RedisProc",
    "by_kind",
    "eventually",
    "free_port",
    "kill_redis",
    "make_flow",
    "redis_server_binary",
    "start_redis",
    "stop_redis",
    "until",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_FORBIDDEN_PORTS = frozenset({6379})  # the shared server: never start on / stop it

# Servers started by this module and not yet stopped; stopped at interpreter exit
# as a last resort (e.g. a test forgot to call stop_redis).
_live: dict[int, RedisProc] = {}


@dataclass
class RedisProc:
    """A running redis-server (or an external server when ``proc`` is None)."""

    host: str
    port: int
    url: str
    pid: int | None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    data_dir: Path | None = None
    log_path: Path | None = None
    owns_dir: bool = False
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def redis_server_binary() -> str:
    """Path of the redis-server executable (``$REDISFLOW_REDIS_SERVER`` overrides)."""
    explicit = os.environ.get("REDISFLOW_REDIS_SERVER")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise RuntimeError(f"REDISFLOW_REDIS_SERVER={explicit!r} is not an executable file")
        return explicit
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server not found on PATH: install it (e.g. `apt-get install -y "
            "redis-server`), set REDISFLOW_REDIS_SERVER to its path, or set "
            "REDISFLOW_TEST_URL to run the tests against an existing server."
        )
    return found


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port not in _FORBIDDEN_PORTS:
            return port


def _wait_ready(rp: RedisProc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        assert rp.proc is not None
        if rp.proc.poll() is not None:
            raise RuntimeError(
                f"redis-server on port {rp.port} exited early with code "
                f"{rp.proc.returncode}; log tail:\n{rp.log_tail()}"
            )
        client = redis.Redis(
            host=rp.host, port=rp.port, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        try:
            if client.ping():
                return
        except redis.exceptions.RedisError as e:  # includes BusyLoadingError (AOF load)
            last_err = e
        finally:
            client.close()
        time.sleep(0.05)
    raise TimeoutError(
        f"redis-server on port {rp.port} (pid {rp.pid}) did not answer PING within "
        f"{timeout:.0f}s (last error: {last_err!r}); log tail:\n{rp.log_tail()}"
    )


def _spawn(
    binary: str, port: int, extra_args: Sequence[str], data_dir: Path, owns_dir: bool
) -> RedisProc:
    log_path = data_dir / f"redis-{port}.log"
    log_file = open(log_path, "ab")  # closed in stop_redis
    args = [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(data_dir),
        *extra_args,  # later options override the defaults above
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
        start_new_session=True,  # Ctrl-C in the terminal goes to pytest, not to redis
    )
    return RedisProc(
        host=HOST,
        port=port,
        url=f"redis://{HOST}:{port}/0",
        pid=proc.pid,
        proc=proc,
        data_dir=data_dir,
        log_path=log_path,
        owns_dir=owns_dir,
        _log_file=log_file,
    )


def start_redis(
    extra_args: Sequence[str] = (),
    port: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> RedisProc:
    """Start a private redis-server on 127.0.0.1 and wait until it answers PING.

    ``extra_args`` are appended to the command line (so e.g. ``["--appendonly",
    "yes"]`` overrides the default). ``port=None`` picks a free port (retrying
    on a bind race). ``data_dir=None`` creates a temp dir that ``stop_redis``
    deletes; pass an existing dir (e.g. ``old.data_dir``) to restart on the same
    RDB/AOF files - such a dir is never deleted.
    """
    binary = redis_server_binary()
    if port in _FORBIDDEN_PORTS:
        raise ValueError(f"refusing to start a test redis-server on shared port {port}")
    owns_dir = data_dir is None
    ddir = Path(tempfile.mkdtemp(prefix="redisflow-test-")) if data_dir is None else Path(data_dir)
    ddir.mkdir(parents=True, exist_ok=True)

    attempts = 1 if port is not None else 5
    last_exc: Exception | None = None
    for _ in range(attempts):
        rp = _spawn(binary, port if port is not None else free_port(), extra_args, ddir, owns_dir)
        _live[rp.pid or 0] = rp
        try:
            _wait_ready(rp, timeout)
            return rp
        except Exception as e:
            last_exc = e
            rp.owns_dir = False  # keep dir for the next attempt; cleaned below
            stop_redis(rp)
            if port is not None or "Address already in use" not in rp.log_tail():
                break
    if owns_dir:
        shutil.rmtree(ddir, ignore_errors=True)
    assert last_exc is not None
    raise last_exc


def stop_redis(
    rp: RedisProc, *, remove_dir: bool | None = None, timeout: float = STOP_TIMEOUT
) -> None:
    """Stop exactly this server (SIGTERM, wait, SIGKILL if needed). Idempotent.

    ``remove_dir`` defaults to whether ``start_redis`` created the data dir; pass
    ``False`` to keep the files for a restart.
    """
    proc = rp.proc
    if proc is not None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        _live.pop(proc.pid, None)
    if rp._log_file is not None:
        rp._log_file.close()
        rp._log_file = None
    if remove_dir is None:
        remove_dir = rp.owns_dir
    if remove_dir and rp.data_dir is not None:
        shutil.rmtree(rp.data_dir, ignore_errors=True)
        rp.owns_dir = False


def kill_redis(rp: RedisProc) -> None:
    """SIGKILL this server (simulated crash), keeping its data dir. Idempotent.

    To clean up after restarting on ``rp.data_dir``, stop the last server with
    ``stop_redis(new, remove_dir=True)``.
    """
    proc = rp.proc
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
    stop_redis(rp, remove_dir=False)


@atexit.register
def _stop_leftovers() -> None:
    for rp in list(_live.values()):
        stop_redis(rp)


# -- waiting and flows -----------------------------------------------------------------------


async def eventually(
    pred: Callable[[], Any], within: float = 5.0, what: str = "", interval: float = 0.01
) -> None:
    """Poll ``pred`` (sync or async) until it is truthy; fail after ``within`` seconds."""
    with anyio.move_on_after(within):
        while True:
            result = pred()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    raise AssertionError(f"not true within {within}s: {what or pred}")


async def until(pred: Callable[[], Any], within: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` like ``eventually``; whether it became true within ``within`` seconds."""
    try:
        await eventually(pred, within, interval=interval)
    except AssertionError:
        return False
    return True


#: Flow options of most tests: peers take a dead worker's messages after 2 s, an idle
#: fetch wakes up every 0.5 s, a stop waits 2 s for running handlers.
FAST: dict[str, Any] = dict(lease=2, claim_idle=2, block_timeout=0.5, grace_period=2)


def make_flow(url: str, ns: str, **overrides: Any) -> Flow:
    """A Flow on ``url`` with the test's prefix ``ns`` and ``FAST`` timings (overridable)."""
    return Flow(url, **{"prefix": ns, **FAST, **overrides})


# -- the consumer kinds --------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
GROUP = "g"  # the consumer group of stream handlers


@dataclass(frozen=True)
class Kind:
    """One consumer kind: how to register a handler, produce, and count what Redis holds."""

    kind: Literal["queue", "priority", "stream", "channel"]
    at_most_once: bool = False

    def __str__(self) -> str:
        return self.kind + ("-at-most-once" if self.at_most_once else "")

    @property
    def durable(self) -> bool:
        """Whether messages wait in Redis for a consumer (all but Pub/Sub)."""
        return self.kind != "channel"

    @property
    def listy(self) -> bool:
        """Whether items live in a list or sorted set (with redisflow's envelope)."""
        return self.kind in ("queue", "priority")

    def name(self, ns: str) -> str:
        """The source name of a test: unique per test, since it embeds ``ns``."""
        return f"{ns}:{self.kind}"

    def source(self, name: str) -> Source:
        """The Source a Message of this kind carries."""
        return Source(self.kind, name, GROUP if self.kind == "stream" else None)

    def on(self, flow: Flow, name: str, **options: Any) -> Callable[[F], F]:
        """The decorator registering a handler of this kind, with the options it accepts."""
        if self.kind == "channel":
            options.pop("retry_max_delay", None)
            return flow.on_channel(name, **options)
        if self.kind == "stream":
            return flow.on_stream(name, group=GROUP, **options)
        options["at_most_once"] = self.at_most_once
        if self.kind == "queue":
            return flow.on_queue(name, **options)
        return flow.on_priority(name, **options)

    async def produce(
        self, flow: Flow, name: str, data: Any, headers: dict[str, str] | None = None
    ) -> str | None:
        """Send one message with the flow's producer API; its id (None for a channel)."""
        if self.kind == "queue":
            return await flow.enqueue(name, data, headers=headers)
        if self.kind == "priority":
            return await flow.enqueue_priority(name, data, headers=headers)
        if self.kind == "stream":
            return await flow.append(name, data, headers=headers)
        receivers = await flow.publish(name, data, headers=headers)
        assert receivers == 1, f"publish to {name!r} reached {receivers} subscribers"
        return None

    async def produce_many(self, flow: Flow, name: str, items: list[Any]) -> None:
        """Send many messages in one round trip, in order."""
        if self.kind == "queue":
            await flow.enqueue_many(name, items)
        elif self.kind == "priority":
            await flow.enqueue_priority_many(name, items)
        elif self.kind == "stream":
            await flow.append_many(name, items)
        else:
            assert await flow.publish_many(name, items) == len(items)

    async def push_raw(
        self, r: aioredis.Redis, name: str, raw: bytes, **fields: bytes
    ) -> bytes | None:
        """Write a bare payload as another client would (a stream entry: field ``data``
        plus ``fields``); the stream entry id if any."""
        if self.kind == "queue":
            await r.rpush(name, raw)
        elif self.kind == "priority":
            await r.zadd(name, {raw: 0})
        elif self.kind == "stream":
            entry_id = await r.xadd(name, {"data": raw, **fields})
            assert isinstance(entry_id, bytes)  # the client does not decode responses
            return entry_id
        else:
            assert await r.publish(name, raw) == 1
        return None

    async def held(self, r: aioredis.Redis, flow: Flow, name: str) -> int:
        """How many messages of the source Redis still holds (queued, delayed, leased or
        pending; for a stream also entries not yet read by the group); 0 for Pub/Sub."""
        if self.kind == "channel":
            return 0
        if self.kind == "stream":
            if not await r.exists(name):
                return 0
            groups = [g for g in await r.xinfo_groups(name) if g["name"] == GROUP.encode()]
            if not groups:
                return int(await r.xlen(name))
            last = groups[0]["last-delivered-id"].decode()
            unread = len(await r.xrange(name, min=f"({last}"))
            return int(groups[0]["pending"]) + unread
        keys = flow.keys(name)
        zset = self.kind == "priority"
        n = int(await (r.zcard(name) if zset else r.llen(name)))
        n += int(await r.zcard(keys.delayed))
        async for key in r.scan_iter(match=f"{keys.base}:proc:*"):
            size = int(await r.llen(key))
            n += size // 2 if zset else size  # a priority batch holds score/member pairs
        return n

    async def leftovers(self, r: aioredis.Redis, flow: Flow, name: str) -> set[str]:
        """The source's in-flight bookkeeping keys, which must not exist once its consumers
        stopped with nothing to do: batch lists, worker sets, leases, delayed sets."""
        keys = flow.keys(name)
        found = {k.decode() async for k in r.scan_iter(match=f"{keys.base}:*")}
        return {
            k
            for k in found
            if k in (keys.leases, keys.delayed)
            or k.startswith((f"{keys.base}:proc:", f"{keys.base}:w:"))
        }


ALL = [
    Kind("queue"),
    Kind("queue", at_most_once=True),
    Kind("priority"),
    Kind("priority", at_most_once=True),
    Kind("stream"),
    Kind("channel"),
]
DURABLE = [k for k in ALL if k.durable]
RELIABLE = [k for k in DURABLE if not k.at_most_once]
LISTY = [k for k in ALL if k.listy]


def by_kind(kinds: list[Kind]) -> pytest.MarkDecorator:
    """Parametrize a test's ``kind`` argument over ``kinds``."""
    return pytest.mark.parametrize("kind", kinds, ids=str)
