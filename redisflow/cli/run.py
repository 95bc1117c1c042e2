"""``redisflow run``: import a flow, run it (or supervise N workers running it)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import anyio

from ..app import Flow
from ..config import URL_ENV
from ..connection import redact
from ..errors import ConfigError, RedisflowError
from .local import NoServer, start_default
from .supervisor import ENV_URL, ENV_WORKER, Supervisor, serve

log = logging.getLogger("redisflow")


class UsageError(Exception):
    """Raised when the command line names something that cannot be used."""


def load_flow(spec: str, *, factory: bool = False) -> Flow:
    """Import ``module:attribute`` (attribute defaults to ``flow``) and return the Flow;
    with ``factory``, the attribute is a function called without arguments to make it."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "flow"
    if module_name.endswith(".py"):
        raise UsageError(f"{spec!r} names a file: {_module_of(module_name, attr)}")
    if not module_name or not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"expected MODULE:ATTRIBUTE such as 'app:flow', got {spec!r}")
    module = _import(module_name)
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if factory:
        if not callable(obj):
            raise UsageError(f"--factory: {spec!r} is a {type(obj).__name__}, not a function")
        obj = obj()
    if not isinstance(obj, Flow):
        made = " returned" if factory else " is"
        hint = "" if factory or not callable(obj) else " (a function that makes one? --factory)"
        raise UsageError(f"{spec!r}{made} a {type(obj).__name__}, not a redisflow.Flow{hint}")
    return obj


#: What a yes/no ``$REDISFLOW_<OPTION>`` may say (anything else is a usage error).
YES = ("1", "true", "yes", "on")
NO = ("", "0", "false", "no", "off")


def env_flag(option: str) -> bool:
    """``$REDISFLOW_<OPTION>`` as a yes/no (unset: no); ArgumentTypeError for another word
    (``REDISFLOW_RELOAD=maybe`` must not mean off silently)."""
    name = "REDISFLOW_" + option.upper().replace("-", "_")
    given = os.environ.get(name)
    text = (given or "").strip().lower()
    if text not in YES + NO:
        raise argparse.ArgumentTypeError(
            f"${name} must be one of {', '.join(YES)} or {', '.join(n for n in NO if n)},"
            f" got {given!r}"
        )
    return text in YES


def _module_of(path: str, attr: str) -> str:
    """How to name the module of the file ``path`` (``./app.py``, ``src/app.py``)."""
    file = Path(path).resolve()
    try:
        parts = file.with_suffix("").relative_to(Path.cwd()).parts
    except ValueError:  # outside the current directory: run from the file's own
        return f"run from its directory: cd {file.parent} && redisflow run {file.stem}:{attr}"
    if not all(part.isidentifier() for part in parts):
        return f"run from its directory: cd {file.parent} && redisflow run {file.stem}:{attr}"
    return f"give the module, as in '{'.'.join(parts)}:{attr}'"


def _import(module_name: str) -> Any:
    """Import the module of a flow (the current directory first on the path)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ConfigError as exc:  # a bad URL or option in the module: its message says it all
        origin = ""
        if os.environ.get(URL_ENV) and redact(os.environ[URL_ENV].strip()) in str(exc):
            origin = f" (from ${URL_ENV}; --url overrides it)"
        raise UsageError(f"module {module_name!r}: {exc}{origin}") from None
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(
                f"module {module_name!r} not found (searched the current directory and PYTHONPATH)"
            ) from None
        raise UsageError(_import_failed(module_name)) from None
    except Exception:
        raise UsageError(_import_failed(module_name)) from None


def use_url(url: str | None) -> None:
    """Make ``url`` (given on the command line) the one a module-level ``Flow()`` reads at
    import, so that it wins over a bad ``$REDISFLOW_URL`` too."""
    if url:
        os.environ[URL_ENV] = url


def _import_failed(module_name: str) -> str:
    detail = "".join(traceback.format_exc(limit=-3)).rstrip()
    return f"importing module {module_name!r} failed:\n{detail}"


def override_concurrency(flow: Flow, concurrency: int) -> None:
    """Give every handler of ``flow`` this concurrency (``--concurrency``)."""
    for key, handler in flow.handlers.items():
        try:  # checked when built
            options = dataclasses.replace(handler.options, concurrency=concurrency)
        except ConfigError as exc:
            raise ConfigError(f"handler {handler.name!r}: {exc}") from None
        flow.handlers[key] = dataclasses.replace(handler, options=options)


def backend_options() -> dict[str, Any]:
    """anyio's backend options: uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def check_reload(args: argparse.Namespace) -> None:
    """Usage errors of ``--reload``: a ``$REDISFLOW_RELOAD`` that says neither yes nor no,
    ``--reload-dir`` without it."""
    if args.reload is None:
        try:
            env_flag("reload")
        except argparse.ArgumentTypeError as exc:
            raise UsageError(str(exc)) from None
    if args.reload_dir and not args.reload:
        raise UsageError("--reload-dir needs --reload")


def run(args: argparse.Namespace) -> int:
    """``redisflow run``."""
    check_reload(args)
    if os.environ.get(ENV_WORKER) is not None:  # $REDISFLOW_WORKERS... are the supervisor's
        args.workers, args.reload = None, False
    url = args.url or os.environ.pop(ENV_URL, None)  # a supervisor's, kept off the command line
    use_url(url)
    flow = load_flow(args.app, factory=args.factory)  # in a supervisor too: usage errors now
    changes: dict[str, Any] = {}
    if url:
        changes["url"] = url
    if args.give_up_after is not None:
        changes["give_up_after"] = args.give_up_after or None
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port + int(os.environ.get(ENV_WORKER, 0))
    try:
        flow.configure(**changes)
        if args.concurrency is not None:
            override_concurrency(flow, args.concurrency)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    try:  # only when no URL was given anywhere: a given URL is used as given
        local = None if url or flow.config.url_given else start_default(flow.config.url)
    except NoServer as exc:
        log.error("%s", exc)
        return 1
    try:
        if args.workers is not None or args.reload:
            return supervise(args)
        return run_one(args, flow)
    finally:
        if local is not None:
            local.stop()


def run_one(args: argparse.Namespace, flow: Flow) -> int:
    """Run ``flow`` in this process until SIGINT/SIGTERM."""
    if not flow.handlers:
        log.warning("%s has no handlers; it will only wait for a signal", args.app)
    log.info(
        "redisflow %s: %d handler%s, Redis at %s", args.app, len(flow.handlers),
        "" if len(flow.handlers) == 1 else "s", flow.client.connector.display,
    )  # fmt: skip
    try:
        anyio.run(serve, flow, backend_options=backend_options())
    except RedisflowError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    log.info("redisflow %s: stopped", args.app)
    return 0


def supervise(args: argparse.Namespace) -> int:
    """``redisflow run --workers N`` / ``--reload``."""
    dirs: list[Path] = []
    if args.reload:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise UsageError(
                "--reload needs watchfiles: pip install watchfiles (the reload extra)"
            ) from None
        dirs = [Path(d).resolve() for d in args.reload_dir or [os.getcwd()]]
        for d in dirs:
            if not d.is_dir():
                raise UsageError(f"--reload-dir {d}: not a directory")
    command = [sys.executable, "-m", "redisflow", "run", args.app]
    command += ["--log-level", args.log_level, "--log-format", args.log_format]
    command += ["--factory"] if args.factory else []
    for option in ("concurrency", "give_up_after", "metrics_port"):
        value = getattr(args, option)
        if value is not None:
            command += ["--" + option.replace("_", "-"), str(value)]
    env = {ENV_URL: args.url} if args.url else {}  # never on a command line (ps shows those)
    supervisor = Supervisor(command, args.workers or 1, reload_dirs=dirs, env=env)
    workers = supervisor.workers
    log.info("redisflow %s: supervising %d worker%s", args.app, workers, "s" * (workers != 1))
    code: int = anyio.run(supervisor.run, backend_options=backend_options())
    return code
