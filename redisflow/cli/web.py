"""``redisflow ui`` (the web dashboard, ``redisflow.web``) and ``redisflow docs`` (the
AsyncAPI document of a flow, ``redisflow.asyncapi``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from .. import asyncapi
from .commands import connect, fail
from .run import UsageError, load_flow

#: Where ``--auth`` is read from when not given (a command line is visible to every user).
AUTH_ENV = "REDISFLOW_UI_AUTH"


def ui(args: argparse.Namespace) -> int:
    """``redisflow ui``: serve the dashboard until Ctrl-C."""
    try:
        import uvicorn

        from ..web import dashboard
        from ..web.security import is_local
    except ImportError as exc:
        hint = "the dashboard needs the ui extra: pip install starlette jinja2 uvicorn"
        return fail(str(exc) if "redisflow[ui]" in str(exc) else f"{hint} ({exc})")
    if not args.auth and not is_local(args.host):
        raise UsageError(
            f"--host {args.host} serves the dashboard beyond this machine: give --auth TOKEN"
            f" or --auth USER:PASSWORD (or set ${AUTH_ENV})"
        )
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise UsageError("give both --ssl-certfile and --ssl-keyfile, or neither")
    client, flow = connect(args)
    try:
        app = dashboard(flow or client, auth=args.auth or None, read_only=args.read_only,
                        title=args.app or "redisflow", close=True)  # fmt: skip
    except ValueError as exc:  # a bad --auth
        raise UsageError(str(exc)) from None
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    server = uvicorn.Server(config)
    scheme = "https" if args.ssl_certfile else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    notes = [f"Redis {client.connector.display}", f"prefix {client.config.prefix}"]
    notes += ["read-only"] if args.read_only else []
    notes += ["auth on"] if args.auth else ["this machine only (no --auth)"]
    print(f"redisflow: dashboard at {scheme}://{host}:{args.port}/ ({', '.join(notes)});"
          " Ctrl-C stops it", file=sys.stderr, flush=True)  # fmt: skip

    try:  # the app's lifespan closes the client; uvicorn raises the signal it stopped on
        anyio.run(server.serve)
    except KeyboardInterrupt:
        pass
    return 0


def docs(args: argparse.Namespace) -> int:
    """``redisflow docs``: print (or write) the AsyncAPI document of a flow."""
    flow = load_flow(args.app, factory=args.factory)
    fmt = args.format
    if fmt is None:
        fmt = "yaml" if args.out and args.out.endswith((".yaml", ".yml")) else "json"
    try:
        text = asyncapi.dumps(asyncapi.document(flow, title=args.title), fmt)
    except ImportError as exc:
        return fail(str(exc))
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            return fail(f"cannot write {args.out}: {exc}")
        print(f"redisflow: wrote the AsyncAPI document of {args.app} to {args.out}",
              file=sys.stderr)  # fmt: skip
    else:
        sys.stdout.write(text)
    return 0
