"""redisflow and its peers, side by side on one private Redis: ``make bench``.

Starts a redis-server (no persistence) on a free port, then runs every row of ``ROWS`` in a
fresh process (``fw_<framework>.py --case ...``, see ``common.py``), ``--repeat`` times,
interleaved so that drift in the machine's load hits every row alike. ``report.py`` writes
``results.md`` (median and min-max per row), ``results.json`` (every run) and ``results.png``
to ``--out``; ``--report results.json`` draws them again without running anything.

saq (redis<8) and arq (redis<6) cannot share our venv (redis 8): each gets its own under
``benchmarks/.venvs/``, created here on first use. A peer that fails to install or to run is
reported in the table, not fatal.

Every child runs with ``PYTHONPATH`` set to the tree whose ``redisflow/`` it must import: this
checkout (not whatever tree the venv's editable install points at), or, for the twin rows of
``--baseline REF``, that commit's ``redisflow/`` exported to ``benchmarks/.baseline/<sha>/``.

    python benchmarks/suite.py [--repeat 3] [--only queue,stream] [--frameworks redisflow,arq]
    python benchmarks/suite.py --frameworks redisflow --baseline main   # this tree vs main
    python benchmarks/suite.py --smoke    # redisflow only, small N, no files: what CI runs
    python benchmarks/suite.py --only cluster   # partitioned drains on a 3-master cluster

The ``cluster`` rows (``cluster.py``) run on a local 3-master Redis Cluster started for the
run (only when such a row is selected), redisflow only, in 1 or 2 consumer processes each.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cluster
import redis
from cluster import BenchCluster
from report import WORKLOADS, Outcome, Row, describe, grade, report

from redisflow.server import find_binary

HERE = Path(__file__).resolve().parent
#: redis-server from PATH, else the embedded one of redisflow[server] (docs/server.md).
SERVER = find_binary() or "redis-server"
ROOT = HERE.parent  # the tree whose redisflow/ the rows (but --baseline twins) import
VENVS = HERE / ".venvs"
BASELINES = HERE / ".baseline"  # <full sha>/redisflow/: --baseline exports (gitignored)
START_N = 1000  # messages pre-filled for the start workload (the first one is timed)


@dataclass(frozen=True)
class Framework:
    module: str
    imports: str  # what must import for it to run
    venv: tuple[str, ...] = ()  # its own venv's requirements, when it conflicts with ours
    version_of: str = ""  # the distribution whose version is reported


FRAMEWORKS = {
    "redisflow": Framework("fw_redisflow.py", "redisflow", version_of="redisflow"),
    "faststream": Framework("fw_faststream.py", "faststream.redis", version_of="faststream"),
    "taskiq": Framework("fw_taskiq.py", "taskiq_redis", version_of="taskiq-redis"),
    "saq": Framework("fw_saq.py", "saq", ("saq[redis,hiredis]", "pydantic>=2.7", "uvloop"), "saq"),
    "arq": Framework("fw_arq.py", "arq", ("arq", "hiredis", "pydantic>=2.7", "uvloop"), "arq"),
    "redis-py": Framework("fw_redispy.py", "redis.asyncio", version_of="redis"),
}


ROWS = [
    Row("queue", "redisflow", "redisflow", "queue", target=(">=", 400_000)),
    Row("queue", "redisflow, handler awaits sleep(0)", "redisflow", "queue_await",
        target=(">=", 200_000)),
    Row("queue", "redisflow at_most_once", "redisflow", "queue_amo"),
    Row("queue", "redisflow batch handler (batch=500)", "redisflow", "queue_batch",
        target=("of", 3.0)),
    Row("queue", "redisflow, Tracing()", "redisflow", "queue_traced"),
    Row("queue", "redisflow, Tracing(), 1 % sampled", "redisflow", "queue_traced_sampled"),
    Row("queue", "FastStream list", "faststream", "queue", "slow"),
    Row("queue", "taskiq ListQueueBroker", "taskiq", "queue", "slow"),
    Row("queue", "SAQ", "saq", "queue", "job"),
    Row("queue", "arq", "arq", "queue", "job"),
    Row("queue", "redis-py BLPOP one-by-one", "redis-py", "queue", "slow"),
    Row("queue", "redis-py LPOP 500 batches", "redis-py", "queue_batch"),
    Row("stream", "redisflow", "redisflow", "stream", target=(">=", 300_000)),
    Row("stream", "redisflow batch handler (batch=500)", "redisflow", "stream_batch",
        target=("of", 3.0)),
    Row("stream", "redisflow, Tracing()", "redisflow", "stream_traced"),
    Row("stream", "FastStream StreamSub", "faststream", "stream", "slow"),
    Row("stream", "taskiq RedisStreamBroker", "taskiq", "stream", "slow"),
    Row("stream", "SAQ", "saq", None, note="no streams"),
    Row("stream", "arq", "arq", None, note="no streams"),
    Row("stream", "redis-py XREADGROUP COUNT 1 + XACK", "redis-py", "stream", "slow"),
    Row("stream", "redis-py XREADGROUP COUNT 500 + one XACK", "redis-py", "stream_batch"),
    Row("priority", "redisflow", "redisflow", "priority", target=(">=", 300_000)),
    Row("priority", "redisflow batch handler (batch=500)", "redisflow", "priority_batch"),
    Row("priority", "FastStream", "faststream", None, note="no priority queues"),
    Row("groups", "redisflow plain queue (no groups)", "redisflow", "queue"),
    Row("groups", "redisflow 1 group", "redisflow", "groups_1"),
    Row("groups", "redisflow 100 groups", "redisflow", "groups_100"),
    Row("groups", "redisflow 10,000 groups", "redisflow", "groups_10000"),
    Row("groups", "redisflow 10,000 groups, concurrency=2 each", "redisflow",
        "groups_10000_limited"),
    Row("starvation", "redisflow fair groups", "redisflow", "starvation_groups"),
    Row("starvation", "redisflow plain queue (the message joins the tail)", "redisflow",
        "starvation_plain"),
    Row("priority", "taskiq", "taskiq", None, note="no priority queues"),
    Row("priority", "SAQ", "saq", None, note="no priority queues"),
    Row("priority", "arq", "arq", None, note="no priority queues"),
    Row("priority", "redis-py BZPOPMIN one-by-one", "redis-py", "priority", "slow"),
    Row("priority", "redis-py ZPOPMIN 500 batches", "redis-py", "priority_batch"),
    Row("pubsub", "redisflow", "redisflow", "pubsub", target=(">=", 100_000)),
    Row("pubsub", "FastStream channel", "faststream", "pubsub", "slow"),
    Row("pubsub", "taskiq PubSubBroker", "taskiq", "pubsub", "slow"),
    Row("pubsub", "SAQ", "saq", None, note="no Pub/Sub consumer"),
    Row("pubsub", "arq", "arq", None, note="no Pub/Sub consumer"),
    Row("pubsub", "redis-py PubSub.listen()", "redis-py", "pubsub"),
    Row("produce", "redisflow enqueue", "redisflow", "produce", "slow", target=("of", 0.9)),
    Row("produce", "redisflow enqueue, Tracing()", "redisflow", "produce_traced", "slow"),
    Row("produce", "redisflow enqueue_many 500 per call", "redisflow", "produce_batch"),
    Row("produce", "redisflow enqueue_many 500 per call, Tracing()", "redisflow",
        "produce_batch_traced"),
    Row("produce", "FastStream publish(list=)", "faststream", "produce", "slow"),
    Row("produce", "taskiq .kiq()", "taskiq", "produce", "slow"),
    Row("produce", "SAQ enqueue", "saq", "produce", "job"),
    Row("produce", "arq enqueue_job", "arq", "produce", "job"),
    Row("produce", "redis-py RPUSH", "redis-py", "produce", "slow"),
    Row("produce", "redis-py RPUSH 500 per call", "redis-py", "produce_batch"),
    Row("produce", "redisflow enqueue, 1 replica", "redisflow", "produce", "slow", replica=True),
    Row("produce", "redisflow enqueue, 1 replica, wait_replicas=1", "redisflow", "produce_wait",
        "slow", replica=True),
    Row("produce_concurrent", "redisflow enqueue", "redisflow", "produce_concurrent",
        target=(">=", 100_000)),
    Row("produce_concurrent", "redisflow enqueue, Tracing()", "redisflow",
        "produce_concurrent_traced"),
    Row("produce_concurrent", "FastStream publish(list=)", "faststream", "produce_concurrent",
        "slow"),
    Row("produce_concurrent", "taskiq .kiq()", "taskiq", "produce_concurrent", "slow"),
    Row("produce_concurrent", "SAQ enqueue", "saq", "produce_concurrent", "job"),
    Row("produce_concurrent", "arq enqueue_job", "arq", "produce_concurrent", "job"),
    Row("produce_concurrent", "redis-py RPUSH", "redis-py", "produce_concurrent", "slow"),
    Row("produce_concurrent", "redisflow enqueue, 1 replica", "redisflow", "produce_concurrent",
        replica=True),
    Row("produce_concurrent", "redisflow enqueue, 1 replica, wait_replicas=1", "redisflow",
        "produce_concurrent_wait", replica=True),
    Row("latency", "redisflow queue", "redisflow", "latency", target=("<=", 0.3)),
    Row("latency", "FastStream list", "faststream", "latency"),
    Row("latency", "taskiq ListQueueBroker", "taskiq", "latency"),
    Row("latency", "SAQ", "saq", "latency"),
    Row("latency", "arq", "arq", "latency"),
    Row("latency", "redis-py RPUSH -> BLPOP", "redis-py", "latency"),
    Row("request", "redisflow request (queue)", "redisflow", "request", "slow"),
    Row("request", "redisflow request (channel)", "redisflow", "request_channel", "slow"),
    Row("request", "FastStream broker.request(list=)", "faststream", "request", "slow"),
    Row("request", "redis-py LPUSH + BLPOP on a reply key", "redis-py", "request", "slow"),
    Row("memory", "redisflow queue", "redisflow", "memory", "memory", target=("~", 0)),
    Row("memory", "redisflow queue, N-message backlog", "redisflow", "memory"),
    Row("memory", "FastStream list", "faststream", "memory", "memory"),
    Row("memory", "taskiq ListQueueBroker", "taskiq", "memory", "memory"),
    Row("memory", "SAQ", "saq", None, note="not run: no batch enqueue to fill 1M jobs"),
    Row("memory", "arq", "arq", None, note="not run: no batch enqueue to fill 1M jobs"),
    Row("memory", "redis-py LPOP 500 batches", "redis-py", "memory_batch", "memory"),
    Row("start", "redisflow", "redisflow", "start", "start"),
    Row("start", "redis-py BLPOP loop", "redis-py", "start", "start"),
    *(Row("cluster", cluster.label(kind, p, k), "redisflow", kind, partitions=p, processes=k)
      for kind in ("queue", "stream") for p in cluster.PARTITIONS for k in cluster.PROCESSES),
]  # fmt: skip


# -- the private Redis, the peer venvs -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server on a free loopback port, no persistence, in a temp dir (the cases
    refuse to flush any server whose dir lacks the ``rf-bench-`` prefix)."""

    def __init__(self, replica_of: PrivateRedis | None = None) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rf-bench-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", self.dir]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        self.proc = subprocess.Popen([SERVER, *args], stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def interpreter(name: str, log: list[str]) -> str | None:
    """The Python that runs a framework, or None (with the reason logged) if it can't."""
    fw = FRAMEWORKS[name]
    python = sys.executable
    if fw.venv:
        venv = VENVS / name
        python = str(venv / "bin" / "python")
        stamp = venv / ".requirements"
        wanted = "\n".join(fw.venv)
        if not stamp.exists() or stamp.read_text() != wanted:
            print(f"creating {venv} for {name} ({', '.join(fw.venv)})", file=sys.stderr)
            base = getattr(sys, "_base_executable", sys.executable)
            made = subprocess.run([base, "-m", "venv", "--clear", str(venv)], capture_output=True)
            pip = [python, "-m", "pip", "install", "-q", *fw.venv]
            done = made.returncode == 0 and subprocess.run(pip, capture_output=True).returncode == 0
            if not done:
                log.append(f"{name}: could not install {' '.join(fw.venv)} into {venv}")
                return None
            stamp.write_text(wanted)
    code = [python, "-c", f"import {fw.imports}"]
    check = subprocess.run(code, capture_output=True, text=True, env=child_env(ROOT), cwd=HERE)
    if check.returncode:
        why = (check.stderr.strip().splitlines() or ["?"])[-1]
        log.append(f"{name}: not installed ({why}); pip install -e '.[bench]'")
        return None
    return python


def version(python: str, dist: str) -> str:
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


# -- --baseline: an older commit's redisflow/ -----------------------------------------------


def git_out(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def export_baseline(ref: str) -> tuple[str, Path]:
    """(full sha of ``ref``, the directory holding that commit's ``redisflow/``): exported
    with ``git archive`` into ``benchmarks/.baseline/<sha>/`` unless already there."""
    sha = git_out("rev-parse", "--verify", f"{ref}^{{commit}}")
    dest = BASELINES / sha
    if (dest / "redisflow" / "__init__.py").exists():
        return sha, dest
    BASELINES.mkdir(exist_ok=True)
    cmd = ["git", "-C", str(ROOT), "archive", sha, "redisflow"]
    archive = subprocess.run(cmd, capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--baseline {ref}: git archive failed: {archive.stderr.decode()}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha}-", dir=BASELINES))  # renamed when complete
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    try:
        tmp.rename(dest)
    except OSError:  # another suite exported it meanwhile
        shutil.rmtree(tmp)
    print(f"exported redisflow/ of {ref} ({sha[:12]}) to {dest}", file=sys.stderr)
    return sha, dest


def twin(row: Row, sha: str) -> Row:
    """``row`` run against the ``redisflow/`` of commit ``sha``."""
    label = row.label.replace("redisflow", f"redisflow@{sha[:7]}", 1)
    return dataclasses.replace(row, label=label, target=None, baseline=sha, of=row.label)


def with_twins(rows: list[Row], sha: str) -> list[Row]:
    """Each redisflow row followed by its twin against ``sha``."""
    out: list[Row] = []
    for row in rows:
        out.append(row)
        if row.framework == "redisflow" and row.case is not None:
            out.append(twin(row, sha))
    return out


def source(row: Row) -> Path:
    """The tree whose ``redisflow/`` a row imports."""
    return BASELINES / row.baseline if row.baseline else ROOT


def child_env(tree: Path) -> dict[str, str]:
    """PYTHONPATH puts ``tree`` before the venv's editable install; the child checks that its
    ``redisflow`` came from there (``common.expect_source``). Every row gets one, the peers'
    too, so that every child starts with the same sys.path shape."""
    path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, BENCH_SOURCE=str(tree))


def check_source(tree: Path) -> None:
    """Fail loudly unless ``import redisflow`` with ``child_env(tree)`` loads ``tree``'s
    (also compiles its bytecode before anything is timed)."""
    code = "import redisflow; print(redisflow.__file__)"
    # Run in benchmarks/ as the children are: with -c, sys.path starts with the cwd, which
    # would win if it held a redisflow/ (the repository root does).
    cmd, env = [sys.executable, "-c", code], child_env(tree)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    where = Path(out.stdout.strip() or "?").resolve()
    if out.returncode or not where.is_relative_to(tree.resolve()):
        why = (out.stderr.strip().splitlines() or [f"it came from {where}"])[-1]
        raise SystemExit(f"import redisflow with PYTHONPATH={tree} failed: {why}")


# -- running --------------------------------------------------------------------------------


@dataclass
class Servers:
    """What the selected rows run against: the private Redis, the cluster (each only when a
    selected row needs it)."""

    redis: PrivateRedis | None = None
    cluster: BenchCluster | None = None
    replicated: tuple[PrivateRedis, PrivateRedis] | None = None  # a primary and its replica

    @classmethod
    def start(cls, rows: list[Row]) -> Servers:
        servers = cls()
        try:
            if any(r.workload != "cluster" and not r.replica for r in rows):
                servers.redis = PrivateRedis()
            if any(r.workload == "cluster" for r in rows):
                servers.cluster = BenchCluster(ROOT)
            if any(r.replica for r in rows):
                primary = PrivateRedis()
                servers.replicated = (primary, PrivateRedis(replica_of=primary))
                wait_for_replica(primary)
        except BaseException:
            servers.stop()
            raise
        return servers

    def url(self, row: Row) -> str:
        """Where ``row`` runs."""
        server = self.replicated[0] if row.replica and self.replicated else self.redis
        assert server is not None
        return server.url

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        for server in self.replicated or ():
            server.stop()


def wait_for_replica(primary: PrivateRedis) -> None:
    """Until the primary counts its replica as connected and in sync."""
    client = redis.Redis(port=primary.port)
    try:
        for _ in range(200):
            replica = client.info("replication").get("slave0")
            if isinstance(replica, dict) and replica.get("state") == "online":
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise SystemExit("the benchmark replica did not connect")


def run_one(
    python: str, row: Row, servers: Servers, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One measurement in a fresh process (a cluster row: in ``row.processes`` of them);
    raises RuntimeError with the reason on failure."""
    assert row.case is not None
    if row.workload == "cluster":
        assert servers.cluster is not None
        assert row.case is not None
        return cluster.measure(
            python, row.case, row.partitions, row.processes, servers.cluster, n, args,
            child_env(source(row)),
        )  # fmt: skip
    url = servers.url(row)
    cmd = [python, str(HERE / FRAMEWORKS[row.framework].module), "--case", row.case]
    cmd += ["--url", url, "--n", str(n), "--samples", str(args.samples)]
    cmd += ["--budget", str(args.budget)] + (["--uvloop"] if args.uvloop else [])
    env = child_env(source(row))
    if row.workload == "start":  # fill Redis first (not timed), then time from the spawn
        child([*cmd, "--fill"], env, args.timeout)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        name = row.framework + (f"@{row.baseline[:7]}" if row.baseline else "")
        path = Path(args.profile) / f"{name}-{row.case}-{time.time_ns()}.prof"
        env["BENCH_PROFILE"] = str(path.resolve())
    if row.workload == "start":
        cmd += ["--t0", repr(time.time())]
    out = child(cmd, env, args.timeout)
    results = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if not results:
        raise RuntimeError("no RESULT line")
    result: dict[str, Any] = json.loads(results[-1].removeprefix("RESULT "))
    return result


def child(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    """Run a framework module; its stdout, or RuntimeError with its last stderr line."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout}s") from None
    if out.returncode:
        tail = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise RuntimeError(tail[:300])
    return out.stdout


def size(row: Row, args: argparse.Namespace) -> int:
    slow = min(args.n, args.slow_n)
    sizes = {"n": args.n, "slow": slow, "job": min(slow, args.job_n), "memory": args.memory_n}
    return {**sizes, "start": START_N}[row.size]


def order(outcomes: list[Outcome], rep: int) -> list[Outcome]:
    """Every row once; on odd repeats each --baseline twin runs before its row instead of
    after it, so that neither side always runs second."""
    out = list(outcomes)
    i = 0
    while i < len(out) - 1:
        if rep % 2 and out[i + 1].row.baseline:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 1
        i += 1
    return out


def run_all(
    rows: list[Row], pythons: dict[str, str | None], servers: Servers, args: argparse.Namespace
) -> list[Outcome]:
    outcomes = [Outcome(row, size(row, args)) for row in rows]
    for rep in range(args.repeat):
        for o in order(outcomes, rep):
            if o.row.case is None or o.error:
                continue
            python = pythons[o.row.framework]
            if python is None:
                o.error = "not installed"
                continue
            t0 = time.perf_counter()
            try:
                o.runs.append(run_one(python, o.row, servers, o.n, args))
            except RuntimeError as exc:
                o.error = str(exc)
            took = time.perf_counter() - t0
            shown = describe(o)[0] if o.runs and not o.error else f"FAILED: {o.error}"
            print(
                f"[{rep + 1}/{args.repeat}] {o.row.workload:<18} {o.row.label:<43} "
                f"{shown} ({took:.1f}s)",
                file=sys.stderr,
            )
    return outcomes


# -- the command line ----------------------------------------------------------------------


def machine(
    pythons: dict[str, str | None], args: argparse.Namespace, baseline: str
) -> dict[str, Any]:
    server = subprocess.run([SERVER, "--version"], capture_output=True, text=True)
    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/suite.py", *sys.argv[1:]]),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "redisflow commit": git.stdout.strip() or "?",
        "redisflow tree": str(ROOT),
        "event loop": "uvloop" if args.uvloop else "asyncio",
        "redis-server": server.stdout.split("v=")[1].split()[0] if "v=" in server.stdout else "?",
    }
    for name, python in pythons.items():
        if python is not None:
            fw = FRAMEWORKS[name]
            info[fw.version_of] = version(python, fw.version_of)
            if fw.venv:
                info[f"redis-py for {name}"] = version(python, "redis")
    if baseline:
        subject = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %cs %s", baseline],
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["baseline"] = f"{args.baseline} = {subject[:100]} ({BASELINES / baseline})"
    info["pydantic"] = version(sys.executable, "pydantic")
    info["hiredis"] = version(sys.executable, "hiredis")
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="messages per run (default 100000)")
    p.add_argument(
        "--slow-n",
        type=int,
        default=5000,
        help="cap for one-by-one consumers and producers (default 5000)",
    )
    p.add_argument(
        "--job-n",
        type=int,
        default=2000,
        help="cap for SAQ and arq, whose enqueue is slow too (default 2000)",
    )
    p.add_argument("--memory-n", type=int, default=1_000_000, help="backlog of the memory runs")
    p.add_argument("--samples", type=int, default=2000, help="latency samples per run")
    p.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds a latency run or a memory drain may take (default 10)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    p.add_argument("--only", help="workloads: " + ",".join(WORKLOADS))
    p.add_argument("--frameworks", help="frameworks: " + ",".join(FRAMEWORKS))
    p.add_argument("--uvloop", action="store_true", help="run every event loop on uvloop")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile the measured part of each run into DIR (slows the runs down)",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per run before it fails")
    p.add_argument("--out", default=str(HERE / "results"), help="where results go ('' = none)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="redisflow only, small N, one run, no files; fails if any run fails",
    )
    p.add_argument(
        "--baseline",
        metavar="REF",
        help="also run every redisflow row against the redisflow/ of git commit REF (a twin "
        "row, interleaved), with the ratio current/baseline of the medians",
    )
    p.add_argument("--report", metavar="JSON", help="only redraw tables and chart from a JSON")
    args = p.parse_args()
    if args.report:
        rereport(args.report, args.out)
        return
    if args.smoke:
        args.n, args.slow_n, args.job_n, args.memory_n = 5000, 5000, 1000, 20_000
        args.samples = 200
        args.repeat, args.out, args.budget = 1, "", 5.0
        args.frameworks = args.frameworks or "redisflow"
        grade(False)
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    names = args.frameworks.split(",") if args.frameworks else list(FRAMEWORKS)
    bad = [w for w in workloads if w not in WORKLOADS] + [f for f in names if f not in FRAMEWORKS]
    if bad:
        p.error(f"unknown workload or framework: {', '.join(bad)}")
    rows = [r for r in ROWS if r.workload in workloads and r.framework in names]
    if args.smoke and not args.only:  # a few cluster rows: the machinery, in seconds
        smoke = {cluster.label(*x) for x in cluster.SMOKE}
        rows = [r for r in rows if r.workload != "cluster" or r.label in smoke]
    sha = ""
    if args.baseline:
        sha, tree = export_baseline(args.baseline)
        rows = with_twins(rows, sha)
        if "redisflow" in names:
            check_source(tree)
    if "redisflow" in names:
        check_source(ROOT)
    problems: list[str] = []
    used = [name for name in names if any(r.framework == name for r in rows)]
    pythons = {name: interpreter(name, problems) for name in used}
    started = time.perf_counter()
    servers = Servers.start(rows)
    try:
        info = machine(pythons, args, sha)
        if args.smoke:
            info["targets"] = "not graded (a smoke run: small N, one run each)"
        if servers.cluster is not None:
            info["redis cluster"] = servers.cluster.describe()
        outcomes = run_all(rows, pythons, servers, args)
    finally:
        servers.stop()
    info["duration"] = f"{time.perf_counter() - started:.0f} s"
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["problems"] = problems
    report(outcomes, info, args.out)
    failed = [o for o in outcomes if o.error]
    if args.smoke and failed:
        raise SystemExit(f"{len(failed)} runs failed")


def rereport(path: str, out_dir: str) -> None:
    """Tables and chart again from a results.json (after changing how they are drawn)."""
    saved = json.loads(Path(path).read_text())
    rows = {(r.workload, r.label): r for r in ROWS}

    def row(x: dict[str, Any]) -> Row:
        if x.get("baseline"):
            return twin(rows[(x["workload"], x["of"])], x["baseline"])
        return rows[(x["workload"], x["label"])]

    outcomes = [Outcome(row(x), x["n"], x["runs"], x["error"]) for x in saved["rows"]]
    report(outcomes, saved["info"], out_dir)


if __name__ == "__main__":
    main()
