"""``redisflow run --workers N [--reload]``: run a flow in N supervised worker processes.

Each worker is ``python -m redisflow run APP ...`` in a session of its own (a Ctrl-C in the
terminal reaches the supervisor only, which forwards it once), holding one end of a socket
pair: the worker writes ``ready`` on it once its flow has started (every consumer ready),
and stops as on SIGTERM when it reads end-of-file, i.e. when the supervisor is gone, even
after a SIGKILL. Policy:

- SIGTERM or SIGINT is forwarded to every worker; the supervisor exits once all have
  stopped: 0 if each stopped cleanly, else 1. A second signal kills the workers (SIGKILL).
- A worker that exits with status 0 on its own (someone stopped it) is not started again;
  the supervisor exits 0 when no worker is left.
- A worker that crashes (non-zero status, killed by a signal) is started again after
  0.5 s, doubling with each consecutive crash up to 10 s; a worker that stayed up 30 s
  resets the count.
- A worker that fails before it is ready makes the supervisor give up, stop the other
  workers and exit: at once with status 2 if the worker exited with 2 (a usage error: its
  module does not import, a bad option), else with 1 after 5 such failures in a row (Redis
  unreachable past ``give_up_after``...). With ``--reload`` it waits for the next change.
- ``--reload`` (``pip install watchfiles``): a change to a ``.py`` file under the
  watched directories stops every worker (SIGTERM) and starts them again on the new code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import Process

if TYPE_CHECKING:
    from ..app import Flow

log = logging.getLogger(__name__)

#: Environment of a worker: the fd of its end of the socket pair, its number (1..N), and the
#: ``--url`` given to the supervisor (passed here, never on a command line: ``ps`` shows
#: those, with any password in the URL).
ENV_FD = "REDISFLOW_SUPERVISOR_FD"
ENV_WORKER = "REDISFLOW_WORKER"
ENV_URL = "REDISFLOW_SUPERVISOR_URL"
READY = b"ready\n"
STOPPED = (0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)  # a worker told to stop
USAGE = 2  # a worker's exit status for a usage error (its module does not import...)


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed worker is started again, and when the supervisor gives up."""

    first_delay: float = 0.5
    max_delay: float = 10.0
    stable_after: float = 30.0  # a worker up this long resets the crash count
    max_start_failures: int = 5  # failures before ready, in a row, before giving up

    def delay(self, crashes: int) -> float:
        """Seconds to wait before the next start after ``crashes`` consecutive crashes."""
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, crashes - 1)))


@dataclass
class _Worker:
    index: int
    proc: Process
    sock: socket.socket
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.proc.pid})"


class Supervisor:
    """Runs ``command`` in ``workers`` processes until stopped; see the module docstring.

    ``reload_dirs``: restart the workers when a ``.py`` file under them changes (needs
    ``watchfiles``). ``run()`` returns the exit status of the supervisor.
    """

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        *,
        reload_dirs: Sequence[Path] = (),
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.command = list(command)
        self.workers = workers
        self.reload_dirs = list(reload_dirs)
        self.policy = policy or RestartPolicy()
        self.env = dict(env or {})
        self._gave_up: int | None = None  # the exit status after giving up
        self._live: dict[int, _Worker] = {}
        self._stopping = False
        self._generation = 0
        self._unclean: list[str] = []

    async def run(self) -> int:
        """Start the workers and keep them running until stopped; the exit status (0 after
        a clean stop; see the module docstring)."""
        self._stopped = anyio.Event()
        self._next_generation = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals, signals)
                if self.reload_dirs:
                    tg.start_soon(self._watch)
                async with anyio.create_task_group() as slots:
                    for index in range(1, self.workers + 1):
                        slots.start_soon(self._slot, index)
                self._stopped.set()  # ends the watcher's thread (a cancel waits for it)
                tg.cancel_scope.cancel()
        if self._gave_up is not None:
            return self._gave_up
        if self._unclean:
            return 1
        log.info("all %d workers stopped", self.workers)
        return 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop every worker (with ``signum``) and start none again."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        self._next_generation.set()
        for worker in self._live.values():
            _signal(worker, signum)

    def reload(self) -> None:
        """Stop every worker and start them again at once (on the changed code)."""
        self._generation += 1
        woken, self._next_generation = self._next_generation, anyio.Event()
        woken.set()
        for worker in self._live.values():
            _signal(worker, signal.SIGTERM)

    # -- internals ------------------------------------------------------------------------

    async def _signals(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self._stopping:
                log.info("received %s: stopping %d workers", name, len(self._live))
                self.stop(signum)
            else:
                log.warning("received %s again: killing the workers", name)
                for worker in self._live.values():
                    _signal(worker, signal.SIGKILL)

    async def _slot(self, index: int) -> None:
        """Keep worker ``index`` running until the supervisor stops (or gives up)."""
        crashes = start_failures = 0
        while not self._stopping:
            generation = self._generation
            worker = await self._spawn(index)
            status = await self._wait(worker)
            if self._stopping:
                if status not in STOPPED:
                    self._unclean.append(worker.name)
                    log.warning("%s %s while stopping", worker.name, _describe(status))
                return
            if generation != self._generation:
                crashes = start_failures = 0
                continue
            if status == 0:
                log.info("%s exited with status 0: not starting it again", worker.name)
                return
            now = time.monotonic()
            if worker.ready_at is None:
                start_failures += 1
            else:
                start_failures = 0
                if now - worker.ready_at >= self.policy.stable_after:
                    crashes = 0
            crashes += 1
            if worker.ready_at is None and self.reload_dirs:
                log.error(
                    "%s %s before it was ready; waiting for a change",
                    worker.name,
                    _describe(status),
                )
                await self._next_generation.wait()
                continue
            if worker.ready_at is None and status == USAGE:
                self._give_up(USAGE, f"worker {index} {_describe(status)}: a usage error")
                return
            if start_failures >= self.policy.max_start_failures:
                self._give_up(
                    1,
                    f"worker {index} failed before it was ready {start_failures} times in a row"
                    f" (last: {_describe(status)})",
                )
                return
            delay = self.policy.delay(crashes)
            log.warning("%s %s; starting it again in %.1fs", worker.name, _describe(status), delay)
            with anyio.move_on_after(delay):
                await self._stopped.wait()

    def _give_up(self, status: int, why: str) -> None:
        log.error("%s; giving up", why)
        self._gave_up = status
        self.stop()

    async def _spawn(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair()
        env = {**os.environ, **self.env, ENV_FD: str(theirs.fileno()), ENV_WORKER: str(index)}
        try:
            proc = await anyio.open_process(
                self.command,
                stdin=None,
                stdout=None,
                stderr=None,
                env=env,
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # no terminal signals: the supervisor forwards them
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = _Worker(index, proc, ours)
        self._live[index] = worker
        log.info("%s started", worker.name)
        return worker

    async def _wait(self, worker: _Worker) -> int:
        """Wait for the worker to exit, noting when it says it is ready; its status."""
        loop = asyncio.get_running_loop()
        fd = worker.sock.fileno()

        def readable() -> None:
            data = _receive(worker.sock)
            if data is None:
                return
            if data.startswith(READY) and worker.ready_at is None:
                worker.ready_at = time.monotonic()
                log.info("%s ready", worker.name)
            if not data:
                loop.remove_reader(fd)

        loop.add_reader(fd, readable)
        try:
            async with worker.proc:
                status = await worker.proc.wait()
            readable()  # a "ready" written just before the exit
        finally:
            loop.remove_reader(fd)
            worker.sock.close()
            del self._live[worker.index]
        return status

    async def _watch(self) -> None:
        from watchfiles import PythonFilter, awatch

        paths = ", ".join(str(d) for d in self.reload_dirs)
        log.info("watching %s for changes", paths)
        watching = awatch(*self.reload_dirs, watch_filter=PythonFilter(), stop_event=self._stopped)
        async for changes in watching:
            if self._stopping:
                return
            names = sorted({Path(path).name for _, path in changes})
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            log.warning("%s changed: reloading", shown)
            self.reload()


def _signal(worker: _Worker, signum: int) -> None:
    try:
        worker.proc.send_signal(signal.Signals(signum))
    except ProcessLookupError:  # it has just exited
        pass


def _receive(sock: socket.socket) -> bytes | None:
    """What a non-blocking socket has to read: b"" once closed, None if nothing yet."""
    try:
        return sock.recv(64)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


# -- the worker's side ------------------------------------------------------------------


async def serve(flow: Flow) -> None:
    """``Flow.run`` (until SIGINT/SIGTERM), telling the supervisor that started this
    process, if any, once the flow has started."""
    handshake = Handshake.from_env()
    try:
        await flow.run(ready=handshake.ready if handshake is not None else None)
    finally:
        if handshake is not None:
            handshake.close()


class Handshake:
    """A worker's end of the socket pair of its supervisor (``from_env``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def from_env(cls) -> Handshake | None:
        """The handshake of this process if a supervisor started it, else None."""
        fd = os.environ.pop(ENV_FD, None)
        if fd is None or not fd.isdigit():
            return None
        try:
            sock = socket.socket(fileno=int(fd))
        except OSError:
            return None
        sock.set_inheritable(False)
        return cls(sock)

    def ready(self) -> None:
        """Tell the supervisor the flow has started; from now on, stop (SIGTERM to this
        process) when the supervisor is gone. Call it in the event loop."""
        try:
            self.sock.sendall(READY)
        except OSError:
            pass
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        fd = self.sock.fileno()

        def readable() -> None:
            if _receive(self.sock) == b"":
                loop.remove_reader(fd)
                log.warning("the supervisor is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(fd, readable)

    def close(self) -> None:
        """Close the socket (the supervisor sees the worker leave)."""
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except (RuntimeError, ValueError):
            pass
        self.sock.close()
