"""Real worker processes for the fault-injection tests, and what they recorded.

``Workers`` starts ``redisflow run tests.support.chaos_app:flow`` processes that share one
configuration (see ``tests/support/chaos_app.py``), kills or stops them by PID, and reads the
records they left: which handler started, finished or was cancelled, when, where.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("queue", "priority", "stream")


class Record(NamedTuple):
    """One line a worker wrote: an event of one handler call."""

    event: str  # S(tarted), E(nded), C(ancelled)
    kind: str
    n: int
    attempt: int
    t: float  # time.monotonic() of the worker: comparable across processes
    pid: int


@dataclass
class Worker:
    """One ``redisflow run`` process."""

    proc: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (``kill -9``) and reap it."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.killed = True
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: a graceful stop."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code."""
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        """What the worker logged."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Workers:
    """Worker processes of one test: same app, same Redis, same configuration."""

    url: str
    ns: str
    out: Path
    kinds: Iterable[str] = KINDS
    flow: dict[str, Any] = field(default_factory=dict)
    handler: dict[str, Any] = field(default_factory=dict)
    sleep: tuple[float, float] = (0.0, 0.0)
    log_level: str = "WARNING"
    record: bool = True
    rate: tuple[int, float] | None = None  # a RateLimit(limit, per) keyed by the priority
    groups: str = ""  # GroupLimits as "concurrency,limit,per" (see chaos_app.py)
    every: tuple[float, str] | None = None  # a schedule <ns>:tick: (period, missed)
    args: tuple[str, ...] = ()
    started: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def start(self, *args: str) -> Worker:
        """Start one more worker (``args`` are extra ``redisflow run`` options)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDISFLOW_", "CHAOS_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            REDISFLOW_URL=self.url,  # never the default localhost:6379
            CHAOS_URL=self.url,
            CHAOS_NS=self.ns,
            CHAOS_KINDS=",".join(self.kinds),
            CHAOS_OUT=str(self.out),
            CHAOS_FLOW=json.dumps(self.flow),
            CHAOS_HANDLER=json.dumps(self.handler),
            CHAOS_SLEEP=f"{self.sleep[0]},{self.sleep[1]}",
            CHAOS_RECORD="1" if self.record else "0",
            CHAOS_RATE=f"{self.rate[0]},{self.rate[1]}" if self.rate else "",
            CHAOS_GROUPS=self.groups,
            CHAOS_EVERY=f"{self.every[0]},{self.every[1]}" if self.every else "",
        )
        log = self.out / f"worker-{len(self.started)}.log"
        argv = [sys.executable, "-m", "redisflow", "run", "tests.support.chaos_app:flow"]
        argv += ["--url", self.url, "--log-level", self.log_level, *self.args, *args]
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f
            )
        worker = Worker(proc, log)
        self.started.append(worker)
        return worker

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.started if w.alive]

    @property
    def working(self) -> list[Worker]:
        """Live workers that have started handlers (a worker still importing has not)."""
        return [w for w in self.alive if _size(self.out / f"{w.pid}.rec") > 0]

    @property
    def busy(self) -> list[Worker]:
        """Live workers in the middle of a handler call: a start recorded with no end or
        cancellation after it (killed now, they hold messages that must be taken back)."""
        out = []
        for w in self.working:
            path = self.out / f"{w.pid}.rec"
            open_calls: Counter[tuple[str, str, str]] = Counter()
            for line in path.read_text().split("\n")[:-1]:
                event, kind, n, attempt, _ = line.split()
                open_calls[(kind, n, attempt)] += 1 if event == "S" else -1
            if any(c > 0 for c in open_calls.values()):
                out.append(w)
        return out

    @property
    def ready(self) -> list[Worker]:
        """Live workers that have started (see ``tests/support/chaos_app.py``)."""
        return [w for w in self.alive if (self.out / f"{w.pid}.ready").exists()]

    def stop_all(self, timeout: float = 30) -> dict[int, int]:
        """SIGTERM every live worker and wait; their exit codes by PID. A worker still
        starting is given until ``timeout`` to be ready first: killed while it imports, it
        would die of the signal, which says nothing about redisflow."""
        deadline = time.monotonic() + timeout
        for worker in self.alive:
            while not (self.out / f"{worker.pid}.ready").exists() and worker.alive:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            worker.terminate()
        codes: dict[int, int] = {}
        for worker in self.started:
            codes[worker.pid] = worker.wait(max(0.1, deadline - time.monotonic()))
        return codes

    def cleanup(self) -> None:
        """Kill whatever is still running (after a failure); only our own PIDs."""
        for worker in self.started:
            if worker.alive:
                worker.proc.kill()
                worker.proc.wait(timeout=10)

    def records(self) -> list[Record]:
        """Every record of every worker, in no particular order."""
        out: list[Record] = []
        for path in self.out.glob("*.rec"):
            pid = int(path.stem)
            # Only whole lines: a record being written may be read half-written.
            for line in path.read_text().split("\n")[:-1]:
                event, kind, n, attempt, t = line.split()
                out.append(Record(event, kind, int(n), int(attempt), float(t), pid))
        return out

    def logs(self) -> str:
        """Every worker's log, for failure messages."""
        return "\n".join(f"--- worker {w.pid}\n{w.output()[-3000:]}" for w in self.started)


def count(records: Iterable[Record], event: str, kind: str) -> Counter[int]:
    """How many ``event`` records each message number of ``kind`` has."""
    return Counter(r.n for r in records if r.event == event and r.kind == kind)


def duplicates(counts: Counter[int]) -> int:
    """Handlings beyond the first, summed over messages."""
    return sum(c - 1 for c in counts.values() if c > 1)


def by_pid(records: Iterable[Record]) -> Iterator[tuple[int, list[Record]]]:
    """Records grouped by worker, each group in time order."""
    groups: dict[int, list[Record]] = {}
    for r in records:
        groups.setdefault(r.pid, []).append(r)
    for pid, group in groups.items():
        yield pid, sorted(group, key=lambda r: r.t)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
