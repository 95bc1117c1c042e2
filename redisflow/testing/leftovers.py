"""Servers left behind by a test session that was killed (SIGTERM, SIGKILL: no ``atexit``
runs), found and stopped at the next start.

Each server started by ``servers.py`` gets a file in ``PID_DIR`` (one directory per checkout
of redisflow, so another checkout's servers are never touched) naming its pid, its port, the
data dir it owns, and the pid of the process that started it. The first start of a process
runs ``sweep``: a server whose starter is gone is killed (by its pid, once checked to still
be that server) and its dir removed. Servers of a live starter (another pytest worker) stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

_CHECKOUT = str(Path(__file__).resolve().parents[2]).encode()
PID_DIR = Path(tempfile.gettempdir()) / (
    "redisflow-servers-" + hashlib.sha1(_CHECKOUT).hexdigest()[:12]
)
_swept = False


def record(pid: int, port: int, data_dir: Path | None) -> None:
    """Note a server started by this process (sweeping first, once per process)."""
    global _swept
    if not _swept:
        _swept = True
        sweep()
    PID_DIR.mkdir(parents=True, exist_ok=True)
    found = {"owner": os.getpid(), "pid": pid, "port": port, "dir": data_dir and str(data_dir)}
    (PID_DIR / f"{pid}.json").write_text(json.dumps(found))


def forget(pid: int) -> None:
    """The server ``pid`` was stopped."""
    (PID_DIR / f"{pid}.json").unlink(missing_ok=True)


def sweep() -> int:
    """Stop the servers whose starter is gone (killed without its ``atexit``), by PID, after
    checking that the PID is still that server; how many were stopped."""
    stopped = 0
    for path in PID_DIR.glob("*.json") if PID_DIR.is_dir() else []:
        try:
            found = json.loads(path.read_text())
            owner, pid, port = int(found["owner"]), int(found["pid"]), int(found["port"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if alive(owner):
            continue
        cmdline = Path(f"/proc/{pid}/cmdline")
        if alive(pid) and (not cmdline.exists() or f":{port}" in cmdline.read_text()):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5  # gone once the kernel has taken it down
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            stopped += 1
        if found.get("dir"):
            shutil.rmtree(found["dir"], ignore_errors=True)
        path.unlink(missing_ok=True)
    return stopped


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive, and not ours
        return True
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return True
