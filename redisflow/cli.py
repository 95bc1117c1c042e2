"""The ``redisflow`` command: ``redisflow run module:flow`` runs a worker process."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

import anyio

from .app import Flow
from .errors import RedisflowError

log = logging.getLogger("redisflow")


class UsageError(Exception):
    """Raised when the command line names something that cannot be used."""


def load_flow(spec: str) -> Flow:
    """Import ``module:attribute`` (attribute defaults to ``flow``) and return the Flow."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "flow"
    if not module_name or not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"expected MODULE:ATTRIBUTE such as 'app:flow', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(
                f"module {module_name!r} not found (searched the current directory and PYTHONPATH)"
            ) from None
        raise UsageError(_import_failed(module_name)) from None
    except Exception:
        raise UsageError(_import_failed(module_name)) from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Flow):
        raise UsageError(f"{spec!r} is a {type(obj).__name__}, not a redisflow.Flow")
    return obj


def _import_failed(module_name: str) -> str:
    detail = "".join(traceback.format_exc(limit=-3)).rstrip()
    return f"importing module {module_name!r} failed:\n{detail}"


def _override_concurrency(flow: Flow, concurrency: int) -> None:
    for key, handler in flow.handlers.items():
        options = dataclasses.replace(handler.options, concurrency=concurrency)
        options.check(f"handler {handler.name!r}")
        flow.handlers[key] = dataclasses.replace(handler, options=options)


def _run(args: argparse.Namespace) -> int:
    flow = load_flow(args.app)
    if args.url:
        flow.url = args.url
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
        _override_concurrency(flow, args.concurrency)
    if not flow.handlers:
        log.warning("%s has no handlers; it will only wait for a signal", args.app)
    backend_options = {}
    try:
        import uvloop  # noqa: F401

        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    log.info(
        "redisflow %s: %d handlers, Redis at %s", args.app, len(flow.handlers), _safe_url(flow.url)
    )
    try:
        anyio.run(flow.run, backend_options=backend_options)
    except RedisflowError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    log.info("redisflow %s: stopped", args.app)
    return 0


def _safe_url(url: str) -> str:
    from .app import _safe

    return _safe(url)


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``redisflow`` command."""
    p = argparse.ArgumentParser(prog="redisflow", description="Redis messaging workers.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the handlers of a flow until SIGINT/SIGTERM")
    run.add_argument("app", help="the flow to run, as MODULE:ATTRIBUTE (e.g. app:flow)")
    run.add_argument("--url", help="Redis URL (default: the flow's, or $REDISFLOW_URL)")
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging level (default INFO)",
    )
    run.add_argument("--concurrency", type=int, help="override every handler's concurrency")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``redisflow`` command; returns the exit code."""
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except UsageError as exc:
        p.error(str(exc))  # exits with status 2
    return 2
