"""The ``cluster`` rows (``suite.py --only cluster``): redisflow's partitioned queue and stream
drains on a local 3-master Redis Cluster (no replicas), in 1 or 2 consumer processes, with
the Redis CPU that every master spent per message.

Suite side: ``BenchCluster`` starts the cluster once for the run (its nodes' dirs under an
``rf-bench-`` temp dir, like the single-node server), flushes every master before each run
and reads their ``INFO cpu``; ``measure`` runs one row once; ``table`` draws the results.md
table. Child side: run as a script, this file is one consumer process::

    python cluster.py --kind queue|stream --partitions P --url URL --n N [--index I --processes K]

The parent and its K children speak in lines: each child fills its share of the N messages
(``items[I::K]``, with ``enqueue_many`` / ``append_many``, not timed), prints ``READY`` and
waits; once all are ready the parent reads ``INFO cpu`` of every master, takes ``time.time()``
as t0 and writes ``GO`` to each child, which starts its flow and prints ``COUNT <handled>``
every 10 ms while the count moves. When the counts add up to N the parent reads ``INFO cpu``
again and writes ``STOP``; each child then prints ``RESULT {json}``: its count, the
``time.time()`` of its last handled message, and its CPU time since GO. The drain lasts from
t0 to the latest of those last messages; the reports and the parent's polling take no part in
it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import common
from common import Email

HERE = Path(__file__).resolve().parent
MASTERS = 3
PARTITIONS = (1, 3, 6)
PROCESSES = (1, 2)
SMOKE = [("queue", 3, 2), ("stream", 3, 2)]  # (kind, partitions, processes) in --smoke
MAX_SHARE = 0.40  # with partitions >= masters, no master should take more of the Redis CPU
REPORT_EVERY = 0.01  # seconds between a child's COUNT lines
STALL = 30.0  # seconds without progress before a run fails


def label(kind: str, partitions: int, processes: int) -> str:
    plural = "es" if processes > 1 else ""
    return f"redisflow {kind}, partitions {partitions}, {processes} process{plural}"


# -- the suite's side ------------------------------------------------------------------------


class BenchCluster:
    """A local Redis Cluster of ``MASTERS`` masters for the run, started with redisflow's own
    launcher (``redisflow.testing.cluster``, imported from ``root``). Its nodes' data dirs are
    made under an ``rf-bench-cluster-*`` temp dir, so the children's guard accepts them."""

    def __init__(self, root: Path) -> None:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))  # this checkout's launcher, not the venv's
        from redisflow.testing.cluster import RedisCluster

        self.dir = tempfile.mkdtemp(prefix=f"{common.PRIVATE_DIR}cluster-")
        saved, tempfile.tempdir = tempfile.tempdir, self.dir  # RedisServer's mkdtemp goes here
        try:
            self.cluster = RedisCluster.start(masters=MASTERS)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        finally:
            tempfile.tempdir = saved
        self.masters = self.cluster.masters()  # by first slot: node 1 serves slots 0-5460...
        self.clients = [node.client() for node in self.masters]
        self.url = self.cluster.seed_url

    def describe(self) -> str:
        ports = ", ".join(str(node.port) for node in self.masters)
        return f"{len(self.masters)} masters (ports {ports}), no replicas, for the cluster rows"

    def flush(self) -> None:
        """FLUSHALL every master, after checking that it is one of ours."""
        for client in self.clients:
            workdir = str(client.config_get("dir").get("dir", ""))
            if common.PRIVATE_DIR not in workdir:
                raise SystemExit(f"a cluster node in {workdir} is not the suite's; refusing")
            client.flushall()

    def cpu(self) -> list[float]:
        """Seconds of CPU (``used_cpu_sys + used_cpu_user``) each master has used so far."""
        seconds = []
        for client in self.clients:
            info = client.info("cpu")
            seconds.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
        return seconds

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.cluster.stop()  # its own processes, by PID
        shutil.rmtree(self.dir, ignore_errors=True)


class Children:
    """The consumer processes of one run and the lines they print, read by one thread each."""

    def __init__(self, cmds: list[list[str]], envs: list[dict[str, str]]) -> None:
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.finished: set[int] = set()  # children that printed their RESULT line
        self.errors = [tempfile.TemporaryFile() for _ in cmds]
        self.procs = [
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=HERE
            )
            for cmd, env, err in zip(cmds, envs, self.errors, strict=True)
        ]
        for i, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, proc.stdout), daemon=True).start()

    def _read(self, i: int, out: IO[bytes] | None) -> None:
        assert out is not None
        for line in out:
            self.lines.put((i, line.decode().strip()))
        self.lines.put((i, None))

    def tell(self, word: str) -> None:
        for i, proc in enumerate(self.procs):
            assert proc.stdin is not None
            try:
                proc.stdin.write(word.encode() + b"\n")
                proc.stdin.flush()
            except OSError:  # it died
                proc.wait()
                raise RuntimeError(f"consumer {i + 1}: {self.last_error(i)}") from None

    def next(self, deadline: float) -> tuple[int, str]:
        """The next line of any child; RuntimeError if one ended before its ``RESULT`` line
        or none spoke in time."""
        while True:
            wait = min(STALL, deadline - time.monotonic())
            try:
                i, line = self.lines.get(timeout=max(wait, 0.001))
            except queue.Empty:
                raise RuntimeError(f"no word from the consumers for {wait:.0f}s") from None
            if line is not None:
                if line.startswith("RESULT "):
                    self.finished.add(i)
                return i, line
            if i not in self.finished:
                self.procs[i].wait()
                raise RuntimeError(f"consumer {i + 1}: {self.last_error(i)}")

    def last_error(self, i: int) -> str:
        err = self.errors[i]
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
        return (lines or [f"exit code {self.procs[i].returncode}"])[-1][:300]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # a child left running after a failure: ours, by its Popen
            proc.wait()
        for err in self.errors:
            err.close()


def measure(
    python: str, case: str, partitions: int, processes: int, cluster: BenchCluster, n: int,
    args: argparse.Namespace, env: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """One run of a cluster row (``case`` over ``partitions``, consumed by ``processes``):
    msg/s from GO to the N-th handled message, and the Redis CPU each master spent per message
    over the same span. RuntimeError with the reason on failure."""
    cluster.flush()
    k = processes
    cmds, envs = [], []
    for i in range(k):
        cmd = [python, str(HERE / "cluster.py"), "--kind", case, "--url", cluster.url]
        cmd += ["--n", str(n), "--partitions", str(partitions)]
        cmd += ["--index", str(i), "--processes", str(k)] + (["--uvloop"] if args.uvloop else [])
        cmds.append(cmd)
        envs.append(dict(env))
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            name = f"cluster-{case}-p{partitions}-{i + 1}of{k}-{time.time_ns()}.prof"
            envs[-1]["BENCH_PROFILE"] = str((Path(args.profile) / name).resolve())
    children = Children(cmds, envs)
    try:
        return _run(children, cluster, n, time.monotonic() + args.timeout)
    finally:
        children.close()


def _run(children: Children, cluster: BenchCluster, n: int, deadline: float) -> dict[str, Any]:
    k = len(children.procs)
    ready = 0
    while ready < k:
        ready += children.next(deadline)[1] == "READY"
    before = cluster.cpu()
    t0 = time.time()
    children.tell("GO")
    counts = [0] * k
    while sum(counts) < n:
        i, line = children.next(deadline)
        if line.startswith("COUNT "):
            counts[i] = int(line.split()[1])
    after = cluster.cpu()
    children.tell("STOP")
    results: list[dict[str, Any] | None] = [None] * k
    while not all(results):
        i, line = children.next(deadline)
        if line.startswith("RESULT "):
            results[i] = json.loads(line.removeprefix("RESULT "))
    done = [r for r in results if r is not None]
    elapsed = max(r["last"] for r in done if r["count"]) - t0
    used = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(used) or 1e-9
    return {
        "value": n / elapsed,
        "unit": "msg/s",
        "n": n,
        "handled": [r["count"] for r in done],  # per process; more than N: redeliveries
        "cpu_us": sum(r["cpu"] for r in done) / n * 1e6,  # the consumers' CPU, all processes
        "redis_us": [u / n * 1e6 for u in used],  # per master, by slot range
        "share": [u / total for u in used],
    }


# -- a consumer process ------------------------------------------------------------------------


class Counter:
    """Handled messages and the wall-clock time (comparable across processes) of the last."""

    __slots__ = ("count", "last")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0

    def hit(self) -> None:
        self.last = time.time()
        self.count += 1


async def lines_of_stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    with common.timed_import("redisflow"):
        import redisflow
        from redisflow import Flow
    common.expect_source(redisflow)
    counter = Counter()
    flow = Flow(args.url, prefix="bench")

    async def handle(email: Email) -> None:
        counter.hit()

    produce: Callable[..., Awaitable[Any]]
    if args.kind == "queue":
        flow.on_queue("q", partitions=args.partitions)(handle)
        produce = flow.enqueue_many
    else:
        flow.on_stream("q", group="g", partitions=args.partitions)(handle)
        produce = flow.append_many
    for part in common.chunks(common.emails(args.n)[args.index :: args.processes], 10_000):
        await produce("q", part)
    stdin = await lines_of_stdin()
    print("READY", flush=True)
    await stdin.readline()  # GO
    with common.profiled():
        cpu = time.process_time()
        await flow.start()
        stop = asyncio.ensure_future(stdin.readline())
        shown = 0
        while not stop.done():
            if counter.count != shown:
                shown = counter.count
                print(f"COUNT {shown}", flush=True)
            await asyncio.wait([stop], timeout=REPORT_EVERY)
        cpu = time.process_time() - cpu
    await flow.stop()
    return {"count": counter.count, "last": counter.last, "cpu": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description="one consumer process of a cluster row")
    p.add_argument("--kind", choices=("queue", "stream"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, required=True, help="messages in all (every process)")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--index", type=int, default=0, help="this process, from 0")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    common.guard(args.url, flush=False)  # one of the suite's servers; the parent flushes

    result = common.run_guarded(lambda: consume(args), uvloop=args.uvloop)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # done: skip the teardown of whatever the flow left running


if __name__ == "__main__":
    main()
