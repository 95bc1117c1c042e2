"""Helpers to run private, throw-away ``redis-server`` processes for tests.

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
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

__all__ = [
    "RedisProc",
    "free_port",
    "kill_redis",
    "redis_server_binary",
    "start_redis",
    "stop_redis",
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
