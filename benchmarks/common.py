"""What every framework module shares: the payload, the child-process protocol, timing.

Imported by ``fw_*.py`` in their own interpreters (the peer venvs too), so it needs only the
standard library, pydantic and redis-py. A framework module declares ``CASES`` (name ->
``async def case(run) -> dict``) and ends with ``common.main(CASES)``; the suite runs it as
``python fw_x.py --case NAME --url URL --n N`` in a fresh process and reads the last stdout
line, ``RESULT {json}``. The start case is run twice: with ``--fill`` (not timed), then with
``--t0``, the suite's ``time.time()`` just before the spawn. Run as a script, this file is
the Pub/Sub publisher process.

At the top this module imports asyncio, pydantic and light standard modules only (statistics
and redis where they are used): the start case times a whole process, and a framework's
import (``timed_import``) should not look shorter for what this module loaded first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import BaseModel

PAYLOADS = "bench:payloads"  # Pub/Sub messages, pre-encoded by the subscriber's framework
PRIVATE_DIR = "rf-bench-"  # the suite's redis-server runs in a temp dir with this prefix
WARMUP = 5  # latency samples discarded at the start
IMPORT_SECONDS: dict[str, float] = {}  # the framework's import, timed by ``timed_import``


class Email(BaseModel):
    """The payload every framework sends and validates, once per message."""

    to: str
    subject: str
    n: int


def emails(n: int) -> list[Email]:
    """``n`` distinct payloads."""
    return [Email(to=f"user{i}@example.com", subject="hello", n=i) for i in range(n)]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class Run:
    """One measurement, as the suite asked for it."""

    case: str
    url: str
    n: int
    samples: int  # latency samples
    budget: float  # seconds a slow drain (memory) or a latency loop may take
    fill: bool  # this process only fills Redis (memory and start cases)
    t0: float | None = None  # start case: the suite's time.time() just before spawning us
    main_at: float = 0.0  # time.time() when main() began: interpreter start-up and imports

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].split(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])


class Tally:
    """Counts handled messages; ``done`` is set at ``target``. Records first and last time."""

    __slots__ = ("count", "done", "first", "last", "target")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = asyncio.Event()
        self.first = 0.0
        self.last = 0.0

    def hit(self) -> None:
        """Called by a handler once per message, after validation."""
        self.last = time.perf_counter()
        if not self.count:
            self.first = self.last
        self.count += 1
        if self.count == self.target:
            self.done.set()

    def hit_many(self, n: int) -> None:
        """Called by a batch handler once per batch of ``n`` messages, after validation."""
        self.last = time.perf_counter()
        if not self.count:
            self.first = self.last
        self.count += n
        if self.count >= self.target and not self.done.is_set():
            self.done.set()

    async def wait(self, stall: float = 30.0) -> None:
        """Wait for ``target`` messages; fail if none arrives for ``stall`` seconds."""
        seen = -1
        while self.count != seen:
            seen = self.count
            try:
                await asyncio.wait_for(self.done.wait(), stall)
                return
            except TimeoutError:
                pass
        raise RuntimeError(f"stalled at {self.count} of {self.target} messages for {stall:.0f}s")


class First:
    """The start case: the wall-clock time (``time.time()``, comparable with the suite's
    ``--t0``) at which the first message was handled."""

    __slots__ = ("at", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.at = 0.0

    def hit(self) -> None:
        if not self.at:
            self.at = time.time()
            self.event.set()


class Probe:
    """Latency: a handler calls ``mark()`` first thing; the producer waits on ``event``."""

    __slots__ = ("event", "t")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.t = 0.0

    def mark(self) -> None:
        self.t = time.perf_counter()
        self.event.set()


# -- the framework's import ----------------------------------------------------------------


@contextlib.contextmanager
def timed_import(name: str) -> Iterator[None]:
    """Time a framework module's import of its framework (the start case reports it). What
    this module imports first (asyncio, pydantic) is not in it, for any framework."""
    t0 = time.perf_counter()
    yield
    IMPORT_SECONDS[name] = time.perf_counter() - t0


def expect_source(module: ModuleType) -> None:
    """Exit unless ``module`` was imported from under $BENCH_SOURCE, which the suite sets to
    the tree it measures (this checkout, or a ``--baseline`` export): the venv's editable
    install of another tree must not win."""
    root = os.environ.get("BENCH_SOURCE")
    where = os.path.realpath(module.__file__ or "?")
    if root and os.path.commonpath([where, os.path.realpath(root)]) != os.path.realpath(root):
        raise SystemExit(
            f"{module.__name__} was imported from {where}, not from {root} "
            "(PYTHONPATH should put that tree first)"
        )


# -- the measurements shared by every framework -----------------------------------------


@contextlib.contextmanager
def profiled() -> Iterator[None]:
    """cProfile the measured part into $BENCH_PROFILE when set (``suite.py --profile``)."""
    path = os.environ.get("BENCH_PROFILE")
    if not path:
        yield
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def rate(n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """A throughput result."""
    return {"value": n / seconds, "unit": "msg/s", "n": n, **extra}


async def drain(
    start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]], tally: Tally
) -> dict[str, Any]:
    """Time ``start()`` until ``tally`` is done (the consumer's startup is included)."""
    with profiled():
        cpu, t0 = time.process_time(), time.perf_counter()
        await start()
        await tally.wait()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu  # this process's CPU: less noisy than wall time
    await stop()
    return rate(tally.target, elapsed, cpu_us=cpu / tally.target * 1e6)


async def produce(send: Callable[[Any], Awaitable[Any]], items: Sequence[Any]) -> dict[str, Any]:
    """One awaited call per message, one after the other."""
    with profiled():
        cpu, t0 = time.process_time(), time.perf_counter()
        for item in items:
            await send(item)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu
    return rate(len(items), elapsed, cpu_us=cpu / len(items) * 1e6)


async def produce_concurrently(
    send: Callable[[Any], Awaitable[Any]], items: Sequence[Any], tasks: int = 1000
) -> dict[str, Any]:
    """``tasks`` coroutines, each awaiting one call per message of its share."""

    async def one(share: Sequence[Any]) -> None:
        for item in share:
            await send(item)

    shares = [items[i::tasks] for i in range(tasks)]
    with profiled():
        cpu, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(share) for share in shares))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu
    return rate(len(items), elapsed, tasks=tasks, cpu_us=cpu / len(items) * 1e6)


async def _latency_samples(
    send: Callable[[Email], Awaitable[Any]], probe: Probe, run: Run
) -> list[float]:
    """Seconds from each call to the handler's first line."""
    samples: list[float] = []
    deadline = time.perf_counter() + run.budget
    for i in range(WARMUP + run.samples):
        probe.event.clear()
        t0 = time.perf_counter()
        await send(Email(to="latency@example.com", subject="ping", n=i))
        await asyncio.wait_for(probe.event.wait(), 30)
        if i >= WARMUP:
            samples.append(probe.t - t0)
            if time.perf_counter() > deadline and len(samples) >= 20:
                break
    return samples


async def latency(
    send: Callable[[Email], Awaitable[Any]], probe: Probe, run: Run
) -> dict[str, Any]:
    """One message in flight: time from the producer's call to the handler's first line.
    Stops after ``run.samples`` samples or ``run.budget`` seconds (slow pollers)."""
    import statistics

    with profiled():
        samples = await _latency_samples(send, probe, run)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {
        "value": statistics.median(samples) * 1000,
        "unit": "ms",
        "n": len(samples),
        "p99": p99 * 1000,
    }


async def round_trips(
    call: Callable[[Email], Awaitable[Any]], run: Run, callers: int = 100
) -> dict[str, Any]:
    """Request/reply: ``callers`` tasks each sending a request and awaiting its reply, until
    ``run.n`` replies; each round trip timed. p50 (``value``) and p99 in ms, requests/s,
    and the CPU of this process per request (the handlers run here too)."""
    import statistics

    for i in range(WARMUP):  # connections, subscriptions, scripts loaded
        await call(Email(to="warm@example.com", subject="ping", n=i))
    samples: list[float] = []
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while sent < run.n:
            sent += 1
            t0 = time.perf_counter()
            reply = await call(Email(to="rpc@example.com", subject="ping", n=sent))
            samples.append(time.perf_counter() - t0)
            assert reply is not None

    with profiled():
        cpu, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu
    samples.sort()
    return {
        "value": statistics.median(samples) * 1000,
        "unit": "ms",
        "n": len(samples),
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
        "rps": len(samples) / elapsed,
        "callers": callers,
        "cpu_us": cpu / len(samples) * 1e6,  # callers and handlers: one process
    }


def rss_mb() -> float:
    """The resident set size of this process now."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def fill_elsewhere(run: Run) -> None:
    """Fill Redis for the memory case from another process, so this one's RSS is the
    worker's alone."""
    cmd = [sys.executable, sys.argv[0], "--case", run.case, "--url", run.url, "--n", str(run.n)]
    proc = await asyncio.create_subprocess_exec(*cmd, "--fill")
    if await proc.wait():
        raise RuntimeError(f"filling {run.n} messages failed")


async def replicate(url: str, key: str, total: int) -> None:
    """Grow the list ``key`` to ``total`` items by appending copies of its items: the memory
    case's backlog for peers whose own encoding of 1M messages would take a minute."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    items = await client.lrange(key, 0, -1)
    left = total - len(items)
    while left > 0:
        await client.rpush(key, *items[:left])
        left -= len(items)
    await client.aclose()


async def memory(
    start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]], tally: Tally, run: Run
) -> dict[str, Any]:
    """Peak RSS of a worker draining ``run.n`` messages (or for ``run.budget`` seconds)."""
    before = rss_mb()
    t0 = time.perf_counter()
    await start()
    try:
        await asyncio.wait_for(tally.done.wait(), run.budget)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    await stop()
    return {
        "value": peak_rss_mb(),
        "unit": "MB",
        "n": run.n,
        "drained": tally.count,
        "start_mb": before,
        "rate": tally.count / elapsed,
    }


async def start(
    run: Run,
    fill: Callable[[], Awaitable[Any]],
    start: Callable[[], Awaitable[Any]],
    stop: Callable[[], Awaitable[Any]],
    first: First,
) -> dict[str, Any]:
    """Seconds from the suite spawning this process (``run.t0``) to the first handled message
    of a pre-filled queue: interpreter start-up, imports, connecting, the first fetch. With
    ``--fill`` (the suite's step before, not timed) this process flushes Redis and fills it."""
    if run.fill:
        guard(run.url)
        await fill()
        return {}
    assert run.t0 is not None, "the start case needs --t0"
    with profiled():
        await start()
        await asyncio.wait_for(first.event.wait(), 30)
    await stop()
    name, imported = next(iter(IMPORT_SECONDS.items()), ("?", 0.0))
    return {
        "value": first.at - run.t0,
        "unit": "s",
        "n": run.n,
        "import_s": imported,
        "imported": name,
        "main_s": run.main_at - run.t0,
    }


async def pubsub(
    run: Run, channel: str, tally: Tally, payloads: Callable[[Any], Awaitable[Any]]
) -> dict[str, Any]:
    """Publish ``run.n`` messages from another process while this one's subscriber (already
    subscribed) counts them. ``payloads(client)`` stores the framework's own encoding of
    each message in the list ``PAYLOADS``; the publisher pipelines PUBLISH 100 at a time."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(run.url)
    await payloads(client)
    for _ in range(100):  # some subscribe in a task of their own: wait until they have
        [(_, subscribers)] = await client.pubsub_numsub(channel)
        if subscribers:
            break
        await asyncio.sleep(0.05)
    await client.aclose()
    with profiled():
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, __file__, run.url, channel, stdout=subprocess.PIPE
        )
        out, _ = await publisher.communicate()
        if publisher.returncode:
            raise RuntimeError("the publisher failed")
        sent = json.loads(out)
        # Messages still in flight arrive within moments; stop when none came for a second.
        while tally.count < sent["sent"]:
            seen = tally.count
            await asyncio.sleep(1.0)
            if tally.count == seen:
                break
    span = (tally.last - tally.first) or 1e-9
    return {
        "value": tally.count / span,
        "unit": "msg/s",
        "n": sent["sent"],
        "lost": sent["sent"] - tally.count,
        "published_rate": sent["rate"],
    }


# -- the child-process protocol ----------------------------------------------------------


def guard(url: str, flush: bool = True) -> None:
    """Refuse any Redis but the suite's private one: the cases flush it (all but the timed
    start run, which consumes what the step before it filled)."""
    import redis

    client = redis.Redis.from_url(url)
    workdir = client.config_get("dir").get("dir", "")
    if PRIVATE_DIR not in str(workdir):
        raise SystemExit(f"{url} is not the suite's private redis-server; refusing to use it")
    if flush:
        client.flushall()
    client.close()


def run_guarded(case: Callable[[], Awaitable[dict[str, Any]]], *, uvloop: bool) -> dict[str, Any]:
    """Run ``case()`` on a fresh event loop (uvloop's if asked); on any failure print the
    traceback and exit 1 at once: a framework's cleanup after a failure may hang."""

    async def guarded() -> dict[str, Any]:
        try:
            return await case()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    if uvloop:
        import uvloop as loops

        return loops.run(guarded())
    return asyncio.run(guarded())


def main(cases: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]]) -> None:
    """Run one case of a framework module and print its result."""
    main_at = time.time()
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True, choices=sorted(cases))
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--budget", type=float, default=10.0)
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help="start case: time.time() before the spawn")
    args = p.parse_args()
    run = Run(args.case, args.url, args.n, args.samples, args.budget, args.fill, args.t0, main_at)
    if not run.fill:
        guard(run.url, flush=run.t0 is None)

    result = run_guarded(lambda: cases[run.case](run), uvloop=args.uvloop)
    if not run.fill:
        print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # done: skip the teardown of whatever the framework left running


def publish(url: str, channel: str) -> None:
    """The Pub/Sub publisher process: PUBLISH every stored payload, pipelined 100 commands per
    write. The commands are encoded before the clock starts and written to a plain socket, so
    the publisher is not what limits the subscriber being measured."""
    import redis

    payloads = redis.Redis.from_url(url).lrange(PAYLOADS, 0, -1)
    name = channel.encode()
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(name), name)
    writes = [
        (len(part), b"".join(head + b"$%d\r\n%s\r\n" % (len(p), p) for p in part))
        for part in chunks(payloads, 100)
    ]
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        t0 = time.perf_counter()
        for count, data in writes:
            sock.sendall(data)
            seen = 0
            while seen < count:  # one integer reply (":<receivers>\r\n") per PUBLISH
                seen += sock.recv(65536).count(b"\n")
        elapsed = time.perf_counter() - t0
    print(json.dumps({"sent": len(payloads), "rate": len(payloads) / elapsed}))


if __name__ == "__main__":
    publish(sys.argv[1], sys.argv[2])
