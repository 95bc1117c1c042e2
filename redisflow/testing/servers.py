"""Private ``redis-server`` processes for tests and local experiments (no mocks).

One launcher shared by redisflow's own tests and by users' tests: :class:`RedisServer` (one
node), :class:`~redisflow.testing.cluster.RedisCluster` (a local Redis Cluster) and
:class:`~redisflow.testing.sentinel.SentinelSetup` (a primary, replicas and sentinels).

Every server listens on 127.0.0.1 on a free port (never 6379, where a shared Redis may
run), has persistence off unless asked for, logs to a file in its own directory, and is
stopped *only by its own PID*. Servers still running when the interpreter exits are
stopped by an ``atexit`` handler; those of a session killed by a signal (no ``atexit``) by
the next start in this checkout (``leftovers.py``: a PID file per server).

Usage::

    server = RedisServer.start(["--appendonly", "yes"])
    try:
        server.client().set("k", "v")
        server.kill()                  # SIGKILL, the data dir stays
        server.restart()               # same port, same dir: the AOF is loaded again
    finally:
        server.stop()                  # removes the temp dir it created
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import redis

from ..server import INSTALL_HINT, MIN_VERSION, binary_version, embedded_binary, spawn, terminate
from .leftovers import forget, record

__all__ = [
    "HOST",
    "MIN_VERSION",
    "RedisServer",
    "free_port",
    "redis_server_binary",
    "redis_server_version",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
#: A cluster node also listens on port + 10,000 (the cluster bus), so 16379 is the bus of a
#: node on the shared port: never listen on either.
FORBIDDEN_PORTS = frozenset({6379, 16379})
BUS_OFFSET = 10_000

_INSTALL_HINT = (
    f"{INSTALL_HINT}; or set REDISFLOW_REDIS_SERVER to a redis-server executable, or "
    "REDISFLOW_TEST_URL to use a running server (e.g. redis://127.0.0.1:6380/0)."
)


# The servers started here and not yet stopped, by PID: stopped at interpreter exit as a
# last resort (a test forgot to stop one, or was interrupted).
_live: dict[int, RedisServer] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live.values()):
        server.stop()


# -- the binary --------------------------------------------------------------------------


def _embedded_binary() -> str | None:
    """The server shipped by an optional Python package (``redisflow[server]``)."""
    return embedded_binary()


def redis_server_binary() -> str:
    """Path of the redis-server executable to run.

    ``$REDISFLOW_REDIS_SERVER`` (must be an executable file), else ``redis-server`` on PATH,
    else an embedded server from an optional package; raises RuntimeError if none is found
    or the one found is older than Redis 7.0.
    """
    explicit = os.environ.get("REDISFLOW_REDIS_SERVER")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise RuntimeError(f"REDISFLOW_REDIS_SERVER={explicit!r} is not an executable file")
        binary = explicit
    else:
        found = shutil.which("redis-server") or _embedded_binary()
        if found is None:
            raise RuntimeError(f"redis-server not found. {_INSTALL_HINT}")
        binary = found
    version = redis_server_version(binary)
    if version < MIN_VERSION:
        shown = ".".join(map(str, version))
        raise RuntimeError(f"{binary} is Redis {shown}. {_INSTALL_HINT}")
    return binary


def redis_server_version(binary: str | None = None) -> tuple[int, int, int]:
    """The ``(major, minor, patch)`` version of ``binary`` (default: the one we would run),
    from ``redis-server --version``."""
    return binary_version(binary if binary is not None else redis_server_binary())


# -- ports -------------------------------------------------------------------------------


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A currently free TCP port on 127.0.0.1, never 6379.

    With ``cluster_bus`` the port + 10,000 (a cluster node's bus port) is free too, so the
    port is at most 55,535 and neither port is 6379 or 16379.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port in FORBIDDEN_PORTS:
            continue
        if not cluster_bus:
            return port
        bus = port + BUS_OFFSET
        # The kernel hands out ports up to ~61000: a third of them have no room for a bus.
        if bus <= 65535 and bus not in FORBIDDEN_PORTS and _is_free(bus):
            return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _wants_cluster_bus(args: Sequence[str]) -> bool:
    """Whether ``args`` enable cluster mode (then the server also binds port + 10,000)."""
    return any(
        a == "--cluster-enabled" and i + 1 < len(args) and args[i + 1] == "yes"
        for i, a in enumerate(args)
    )


def _check_port(port: int, cluster_bus: bool) -> None:
    if port in FORBIDDEN_PORTS:
        raise ValueError(f"refusing to start a private redis-server on port {port}")
    if cluster_bus and (port + BUS_OFFSET > 65535 or port + BUS_OFFSET in FORBIDDEN_PORTS):
        raise ValueError(f"port {port} has no usable cluster bus port ({port + BUS_OFFSET})")


# -- one server --------------------------------------------------------------------------


@dataclass(eq=False)
class RedisServer:
    """A redis-server process started here (or an external server when ``pid`` is None).

    ``args`` holds the extra command-line options, so :meth:`restart` starts the same
    server again on the same port and data dir.
    """

    host: str = HOST
    port: int = 0
    url: str = ""
    pid: int | None = None
    data_dir: Path | None = None
    log_path: Path | None = None
    owns_dir: bool = False
    args: tuple[str, ...] = ()
    config_file: Path | None = None
    binary: str | None = field(default=None, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.url:
            self.url = f"redis://{self.host}:{self.port}/0"

    @classmethod
    def external(cls, url: str) -> Self:
        """A server this process did not start (``stop``/``kill`` do nothing)."""
        parts = urlsplit(url)
        return cls(host=parts.hostname or HOST, port=parts.port or 6379, url=url)

    @classmethod
    def start(
        cls,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        timeout: float = START_TIMEOUT,
        *,
        config_file: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Start a private redis-server on 127.0.0.1 and wait until it answers PING.

        ``extra_args`` come after the defaults (``--save "" --appendonly no
        --repl-diskless-sync-delay 0``), so they override them. ``port=None`` picks a free
        port (one with a free cluster bus port when ``extra_args`` enable cluster mode) and
        retries on a bind race.
        ``data_dir=None`` creates a temp dir that :meth:`stop` removes; an existing dir
        (e.g. ``old.data_dir``) restarts on its RDB/AOF files and is never removed.
        ``config_file`` goes first on the command line (sentinel needs one it can rewrite).
        """
        binary = redis_server_binary()
        bus = _wants_cluster_bus(extra_args)
        if port is not None:
            _check_port(port, bus)
        owns_dir = data_dir is None
        ddir = Path(tempfile.mkdtemp(prefix="redisflow-redis-") if data_dir is None else data_dir)
        ddir.mkdir(parents=True, exist_ok=True)
        server = cls(
            port=0,
            data_dir=ddir.resolve(),
            owns_dir=owns_dir,
            args=tuple(extra_args),
            config_file=Path(config_file).resolve() if config_file is not None else None,
            binary=binary,
        )
        for attempt in range(1 if port is not None else 5):
            server.port = port if port is not None else free_port(cluster_bus=bus)
            server.url = f"redis://{server.host}:{server.port}/0"
            try:
                server._spawn(timeout)
                return server
            except Exception:
                in_use = "Address already in use" in server.log_tail()
                server.stop(remove_dir=False)
                if port is not None or not in_use or attempt == 4:
                    if owns_dir:
                        shutil.rmtree(ddir, ignore_errors=True)
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, timeout: float) -> None:
        assert self.data_dir is not None and self.binary is not None
        self.log_path = self.data_dir / f"redis-{self.port}.log"
        args = [self.binary] + ([str(self.config_file)] if self.config_file else [])
        args += [
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            # A replica's full sync waits this long (5 s by default) for more replicas
            # to share the transfer: it would dominate every cluster/sentinel start-up.
            "--repl-diskless-sync-delay", "0",
            "--dir", str(self.data_dir),
            *self.args,  # later options override the defaults above
        ]  # fmt: skip
        self._proc = spawn(args, self.log_path, cwd=self.data_dir)  # Ctrl-C: pytest only
        self.pid = self._proc.pid
        _live[self.pid] = self
        record(self.pid, self.port, self.data_dir if self.owns_dir else None)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        client = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    code = self._proc.returncode if self._proc else None
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited early with code {code}; "
                        f"log tail:\n{self.log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.RedisError as e:  # includes BusyLoadingError (AOF load)
                    last_err = e
                time.sleep(0.02)
        finally:
            client.close()
        raise TimeoutError(
            f"redis-server on port {self.port} (pid {self.pid}) did not answer PING within "
            f"{timeout:.0f}s (last error: {last_err!r}); log tail:\n{self.log_tail()}"
        )

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The process object (None for an external server)."""
        return self._proc

    @property
    def running(self) -> bool:
        """Whether the process started here is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of the server's log file."""
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def client(self, **options: Any) -> redis.Redis:
        """A new sync redis-py client on this server (bytes replies unless overridden);
        close it when done."""
        options.setdefault("socket_connect_timeout", 5)
        options.setdefault("socket_timeout", 10)
        return redis.Redis(host=self.host, port=self.port, **options)

    def call(self, *args: Any, decode: bool = True, timeout: float = 10) -> Any:
        """Run one command on a fresh connection and return the bare reply (strings
        decoded unless ``decode=False``, RESP2 shapes), without redis-py's per-command reply
        parsing (which turns e.g. ``SET`` into True); error replies raise (``MovedError``,
        ``AskError``...)."""
        # redis-py 8 speaks RESP3 by default, where SENTINEL MASTER & co. reply with maps.
        options: dict[str, Any] = dict(decode_responses=decode, protocol=2)
        with self.client(socket_timeout=timeout, **options) as client:
            client.response_callbacks.clear()
            return client.execute_command(*args)

    def stop(self, remove_dir: bool | None = None, timeout: float = STOP_TIMEOUT) -> None:
        """Stop exactly this process (SIGTERM, wait, SIGKILL if needed). Idempotent.

        ``remove_dir`` defaults to whether :meth:`start` created the data dir; pass False
        to keep the files for a restart.
        """
        proc = self._proc
        if proc is not None:
            terminate(proc, timeout)
            _live.pop(proc.pid, None)
            forget(proc.pid)
        if remove_dir is None:
            remove_dir = self.owns_dir
        if remove_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.owns_dir = False

    def kill(self) -> None:
        """SIGKILL the process (a crash: nothing flushed), keeping its data dir. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        self.stop(remove_dir=False)

    def restart(self, timeout: float = START_TIMEOUT) -> Self:
        """Start the server again on the same port, data dir and options (stopping it first
        if it runs); returns ``self``, whose ``pid`` is now the new process."""
        if self.binary is None or self.data_dir is None:
            raise RuntimeError("an external server cannot be restarted")
        if not self.data_dir.is_dir():
            raise RuntimeError(f"the data dir {self.data_dir} was removed: cannot restart")
        self.stop(remove_dir=False)
        try:
            self._spawn(timeout)
        except Exception:
            self.stop(remove_dir=False)
            raise
        return self
