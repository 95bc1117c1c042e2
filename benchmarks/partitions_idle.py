"""What an idle worker with a partitioned source costs: start-up, connections, memory, and
the commands it sends while nothing is queued (docs/scaling.md, "What partitions cost").

    python benchmarks/partitions_idle.py                     # P = 1, 16, 64, 128, 256, 1024
    python benchmarks/partitions_idle.py --partitions 256 --kind stream --idle 20
    python benchmarks/partitions_idle.py --nofile 1024       # under `ulimit -n 1024`

Each P runs in a fresh worker process (one handler, ``partitions=P``, default options) on a
private ``redis-server`` (one server, so every partition is on it). The script measures the
time until the flow has started, the worker's sockets (``/proc/<pid>/fd``), its RSS after
``--settle`` seconds, and the commands Redis processed in ``--idle`` seconds (``INFO
commandstats``, less the script's own), per second.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redisflow.testing.servers import RedisServer  # noqa: E402

CHILD = """
import resource, sys, time
import anyio, anyio.to_thread
from redisflow import Flow

kind, p, url, nofile = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
flow = Flow(url, prefix="bench")
on = {"queue": flow.on_queue, "priority": flow.on_priority}.get(kind)
deco = on("jobs", partitions=p) if on else flow.on_stream("jobs", group="g", partitions=p)

@deco
async def handle(n: int) -> None:
    pass

async def main() -> None:
    began = time.monotonic()
    async with flow:
        print(f"ready {time.monotonic() - began:.3f}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)

anyio.run(main)
"""


def total_calls(server: RedisServer) -> int:
    text = server.call("INFO", "commandstats")
    return sum(
        int(part.split("=", 1)[1])
        for line in text.splitlines()
        if line.startswith("cmdstat_")
        for part in line.split(":", 1)[1].split(",")
        if part.startswith("calls=")
    )


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, p: int, args: argparse.Namespace, server: RedisServer) -> str:
    server.call("FLUSHALL")
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(p), server.url, str(args.nofile)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    line = child.stdout.readline()
    if not line.startswith("ready"):
        child.kill()
        error = (child.stderr.read() if child.stderr else "").strip().splitlines()
        return f"| {kind} | {p} | failed: {error[-1] if error else line!r} | | | |"
    start, total = float(line.split()[1]), time.monotonic() - began
    time.sleep(args.settle)
    before = total_calls(server)
    time.sleep(args.idle)
    calls = total_calls(server) - before - 1  # our own INFO
    row = (
        f"| {kind} | {p} | {start:.2f} s ({total:.2f} s with the import) |"
        f" {sockets(child.pid)} | {rss_mb(child.pid):.0f} MB | {calls / args.idle:,.0f} |"
    )
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait(timeout=60)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, nargs="*", default=[1, 16, 64, 128, 256, 1024])
    ap.add_argument("--kind", choices=["queue", "priority", "stream"], default="queue")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle counted")
    ap.add_argument("--nofile", type=int, default=0, help="RLIMIT_NOFILE of the worker")
    args = ap.parse_args()
    server = RedisServer.start(["--maxclients", "10000"])
    try:
        print("| kind | partitions | start-up | sockets | RSS | commands/s idle |")
        print("|---|--:|--:|--:|--:|--:|")
        for p in args.partitions:
            print(measure(args.kind, p, args, server), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
