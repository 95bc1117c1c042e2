"""Drain pre-filled queues through redisflow and through bare redis-py loops, side by side.

Starts a private redis-server (no persistence) on a free port. For each workload, a fresh
process fills N messages with a pydantic payload (not timed), then times how long its
consumer takes to handle all of them. Each workload is repeated; the table shows the
median and the min-max of msgs/s.

    python benchmarks/queue_drain.py [--n 100000] [--repeat 3] [--only a,b] [--uvloop]
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import Flow

WORKLOADS = {
    "redisflow-queue": "redisflow list queue, at-least-once, concurrency 64",
    "redisflow-queue-await": "same, the handler awaits asyncio.sleep(0) once",
    "redisflow-queue-amo": "redisflow list queue, at_most_once (LMPOP batches)",
    "redisflow-priority": "redisflow priority queue, at-least-once, concurrency 64",
    "redisflow-stream": "redisflow stream, consumer group + acks, concurrency 64",
    "redis-py-blpop": "bare redis-py: BLPOP one at a time + validation",
    "redis-py-xreadgroup": "bare redis-py: XREADGROUP COUNT 1 + XACK one at a time",
}
SLOW = {"redis-py-blpop", "redis-py-xreadgroup"}  # capped at 20,000 messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    import redis

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rf-bench-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        raise SystemExit("redis-server did not start")
    return proc, url, workdir


# -- one measurement, in a fresh process ---------------------------------------------------


class Email(BaseModel):
    to: str
    subject: str
    n: int


def make_items(n: int) -> list[Email]:
    return [Email(to=f"user{i}@example.com", subject="hello", n=i) for i in range(n)]


async def measure(workload: str, url: str, n: int) -> float:
    """Fill ``n`` messages (not timed), then time their drain; return msgs/s."""
    r = aioredis.Redis.from_url(url)
    await r.flushall()
    await r.aclose()
    if workload.startswith("redisflow"):
        return await measure_redisflow(workload, url, n)
    return await measure_baseline(workload, url, n)


async def measure_redisflow(workload: str, url: str, n: int) -> float:
    items = make_items(n)
    flow = Flow(url, prefix="bench")
    kind = workload.split("-")[1]
    for i in range(0, n, 10_000):
        part = items[i : i + 10_000]
        if kind == "queue":
            await flow.enqueue_many("q", part)
        elif kind == "priority":
            await flow.enqueue_priority_many("q", part, priority=i // 10_000 % 4)
        else:
            await flow.append_many("q", part)
    del items
    done = asyncio.Event()
    count = 0
    suspend = workload.endswith("-await")

    async def handler(e: Email) -> None:
        nonlocal count
        if suspend:
            await asyncio.sleep(0)
        count += 1
        if count == n:
            done.set()

    options: dict[str, Any] = {"concurrency": 64}
    if workload.endswith("-amo"):
        options["at_most_once"] = True
    flow.add_handler(kind, "q", handler, group="g" if kind == "stream" else None, **options)
    t0 = time.perf_counter()
    async with flow:
        await done.wait()
        elapsed = time.perf_counter() - t0
    return n / elapsed


async def measure_baseline(workload: str, url: str, n: int) -> float:
    """What a hand-written redis-py loop gets, one message per round trip."""
    items = make_items(n)
    r = aioredis.Redis.from_url(url)
    count = 0
    if workload == "redis-py-blpop":
        await r.rpush("q", *(e.model_dump_json() for e in items))
        t0 = time.perf_counter()
        while count < n:
            _, raw = await r.blpop(["q"], timeout=1)
            Email.model_validate_json(raw)
            count += 1
    else:
        await r.xgroup_create("q", "g", id="0", mkstream=True)
        async with r.pipeline(transaction=False) as pipe:
            for e in items:
                pipe.xadd("q", {"data": e.model_dump_json()})
            await pipe.execute()
        t0 = time.perf_counter()
        while count < n:
            reply = await r.xreadgroup("g", "c", {"q": ">"}, count=1, block=1000)
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    Email.model_validate_json(fields[b"data"])
                    await r.xack("q", "g", entry_id)
                    count += 1
    elapsed = time.perf_counter() - t0
    await r.aclose()
    return n / elapsed


def child(args: argparse.Namespace) -> None:
    if args.uvloop:
        import uvloop

        rate = uvloop.run(measure(args.child, args.url, args.n))
    else:
        rate = asyncio.run(measure(args.child, args.url, args.n))
    print(json.dumps({"rate": rate}))


# -- the driver --------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("redisflow", "redis", "hiredis", "pydantic", "orjson", "anyio"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "-"
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    out["redis-server"] = server.stdout.split()[2].removeprefix("v=")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="messages per run (default 100000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per workload (default 3)")
    p.add_argument("--only", help="comma-separated workloads: " + ", ".join(WORKLOADS))
    p.add_argument("--uvloop", action="store_true", help="run consumers on uvloop")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    chosen = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    proc, url, workdir = start_redis()
    results: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeat):
            for workload in chosen:  # interleaved, so drift hits every workload alike
                n = min(args.n, 20_000) if workload in SLOW else args.n
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    workload,
                    "--url",
                    url,
                    "--n",
                    str(n),
                ] + (["--uvloop"] if args.uvloop else [])
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if out.returncode:
                    raise SystemExit(f"{workload} failed:\n{out.stderr}")
                results.setdefault(workload, []).append(json.loads(out.stdout)["rate"])
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    info = versions()
    print(
        f"# queue drain, n={args.n}, repeat={args.repeat}, loop="
        f"{'uvloop' if args.uvloop else 'asyncio'}, {os.cpu_count()} cores, "
        + ", ".join(f"{k} {v}" for k, v in info.items())
    )
    print(f"| {'workload':<24} | {'median msg/s':>12} | {'min - max':>19} | what |")
    print(f"|{'-' * 26}|{'-' * 14}:|{'-' * 21}:|------|")
    for workload, rates in results.items():
        med = statistics.median(rates)
        print(
            f"| {workload:<24} | {med:>12,.0f} | {min(rates):>8,.0f} - {max(rates):>8,.0f} "
            f"| {WORKLOADS[workload]} |"
        )


if __name__ == "__main__":
    main()
