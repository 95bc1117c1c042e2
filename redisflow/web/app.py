"""The dashboard as an ASGI application: its routes and pages (``dashboard()`` builds it).

GET pages: ``/`` (overview), ``/source`` (one source: handlers, dead letters), ``/letter``
(one dead letter), ``/message`` (a status record), ``/docs`` (the AsyncAPI document);
``/live/...``: the parts of a page its script fetches every 2 s. POST actions: replay,
purge and cancel answer first with a confirmation page (for dead letters, a dry run: what
would be done), then act when the confirmation is posted; pause and resume act at once
(each undoes the other); each sends the browser back (303).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import asyncapi
from ..connection import REDIS_ERRORS
from ..errors import ConfigError, RedisflowError
from ..features.cancels import DEFAULT_TTL, check_cancel
from ..keys import check_name
from ..message import KINDS, Kind
from . import schema
from .data import Dashboard
from .render import duration, environment, link
from .security import COOKIE, Auth, Csrf, Guard, Scope

if TYPE_CHECKING:
    from ..app import Flow
    from ..client import Client

log = logging.getLogger("redisflow")

STATIC = Path(__file__).parent / "static"
MAX_FORM = 1 << 20  # bytes of a POSTed form
PAGE = 50  # dead letters per page (``more`` shows more)
ACTIONS = ("replay", "purge")  # on dead letters, after a confirmation
SWITCHES = ("pause", "resume")  # at once: undone by the other
#: What a page shows as "Redis did not answer" (503) instead of failing.
FAILURES: tuple[type[BaseException], ...] = (*REDIS_ERRORS, RedisflowError)


class NotFound(Exception):
    """Raised when a request names no valid source or letter."""


class Pages:
    """The endpoints, over one ``Dashboard``."""

    def __init__(self, data: Dashboard, *, csrf: Csrf, read_only: bool, title: str) -> None:
        self.data, self.csrf, self.read_only, self.title = data, csrf, read_only, title
        self.env = environment()

    # -- plumbing ---------------------------------------------------------------------------

    def render(self, request: Request, template: str, code: int = 200, **ctx: Any) -> Response:
        """A page (or fragment) with the context every template gets, and the CSRF cookie."""
        cookie = request.cookies.get(COOKIE)
        token = cookie if cookie is not None and self.csrf.valid(cookie) else self.csrf.new()
        base = request.scope.get("root_path", "").rstrip("/")
        ctx = {
            "base": base,
            "link": lambda path, **params: link(base, path, **params),
            "csrf": token,
            "read_only": self.read_only,
            "title": self.title,
            "url": self.data.url,
            "prefix": self.data.client.config.prefix,
            "has_flow": self.data.flow is not None,
            **ctx,
        }
        html = self.env.get_template(template).render(ctx)
        response = HTMLResponse(html, status_code=code)
        response.headers["cache-control"] = "no-store"
        if token != cookie:
            secure = request.url.scheme == "https"
            response.set_cookie(COOKIE, token, path=base or "/", httponly=True,
                                samesite="strict", secure=secure)  # fmt: skip
        return response

    async def form(self, request: Request) -> dict[str, list[str]]:
        """The POSTed form, once its CSRF token is checked (``Refused`` otherwise)."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise Refused(413, "The form is too large.")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        submitted = next(iter(fields.get("csrf", [])), None)
        if not self.csrf.matches(request.cookies.get(COOKIE), submitted):
            raise Refused(403, "The form's CSRF token is missing or wrong: reload the page.")
        return fields

    def guarded(self, endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """An endpoint whose Redis errors and bad requests become pages."""

        async def run(request: Request) -> Response:
            try:
                response: Response = await endpoint(request)
                return response
            except Refused as exc:
                return self.render(request, "error.html", exc.status, message=exc.message)
            except NotFound as exc:
                return self.render(request, "error.html", 404, message=str(exc))
            except ConfigError as exc:
                return self.render(request, "error.html", 400, message=str(exc))
            except FAILURES as exc:
                message = f"Redis at {self.data.url} did not answer: {exc}"
                return self.render(request, "error.html", 503, message=message)

        return run

    def source(self, params: dict[str, str]) -> tuple[Kind, str]:
        """The source a request names (``kind`` and ``name``)."""
        kind, name = params.get("kind", ""), params.get("name", "")
        if kind not in KINDS:
            raise NotFound(f"no such kind of source: {kind!r} (one of {', '.join(KINDS)})")
        check_name(name, kind)
        return kind, name

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        template = "overview_live.html" if request.url.path.endswith("/live") else "overview.html"
        return self.render(request, template, view=await self.data.overview())

    async def source_page(self, request: Request) -> Response:
        params = dict(request.query_params)
        kind, name = self.source(params)
        snapshot, rows = await self.data.source_rows(kind, name)
        if request.url.path.endswith("/live"):
            return self.render(request, "source_live.html", kind=kind, name=name,
                               rows=rows, snapshot=snapshot)  # fmt: skip
        error = None
        try:
            filters = letter_filters(params)
        except ValueError as exc:
            filters, error = {}, str(exc)
        more = int(params["more"]) if params.get("more", "").isdigit() else PAGE
        dead = self.data.dead_letters(kind, name)
        letters = await dead.list(**filters, limit=min(max(more, 1), 5000))
        handlers = self.data.handlers(kind, name)
        groups = sorted({r.row.group for r in rows if r.row.group}
                        | {h.source.group for h in handlers if h.source.group})  # fmt: skip
        marks = await self.data.client.cancelled(name) if kind != "channel" else {}
        return self.render(
            request, "source.html", kind=kind, name=name, rows=rows, snapshot=snapshot,
            marks=[(mid, mark, datetime.fromtimestamp(mark.deadline / 1000, UTC))
                   for mid, mark in sorted(marks.items(), key=lambda kv: -kv[1].deadline)[:PAGE]],
            paused=[p for p in snapshot.paused if p.name == name], groups=groups,
            handlers=self.data.handlers(kind, name), letters=letters,
            total=await dead.count(), filters=params, filtered=bool(filters), error=error,
            more=more, done=params.get("done"), count=params.get("count"),
            done_group=params.get("group"), done_id=params.get("id"),
            options=lambda h: asyncapi.options_json(h.source.kind, h.options),
            typename=asyncapi.type_name,
            known={r.row.handler for r in rows if r.row.handler}
            | {h.name for h in self.data.handlers(kind, name)},
        )  # fmt: skip

    async def letter(self, request: Request) -> Response:
        params = dict(request.query_params)
        kind, name = self.source(params)
        found = await self.data.dead_letters(kind, name).show(params.get("id", ""))
        if found is None:
            raise NotFound(f"no dead letter {params.get('id', '')!r} in {kind} {name!r}")
        return self.render(request, "letter.html", kind=kind, name=name, letter=found)

    async def message(self, request: Request) -> Response:
        message_id = request.query_params.get("id", "").strip()
        status = await self.data.status(message_id) if message_id else None
        return self.render(request, "message.html", message_id=message_id, status=status)

    async def docs(self, request: Request) -> Response:
        doc = self.data.document(self.title)
        return self.render(request, "docs.html", doc=doc, rows=schema.rows,
                           yaml=_has_yaml())  # fmt: skip

    async def document(self, request: Request) -> Response:
        doc = self.data.document(self.title)
        if doc is None:
            raise NotFound("no AsyncAPI document: start the dashboard with an app (app:flow)")
        if request.url.path.endswith(".yaml"):
            return Response(asyncapi.dumps(doc, "yaml"), media_type="application/yaml")
        return Response(asyncapi.dumps(doc), media_type="application/json")

    # -- actions ----------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        action = request.url.path.rsplit("/", 1)[-1]
        fields = await self.form(request)
        params = {key: values[-1] for key, values in fields.items() if values}
        kind, name = self.source(params)
        scope = params.get("scope", "")
        ids = [i for i in fields.get("id", []) if i]
        try:
            filters = letter_filters(params)
        except ValueError as exc:
            raise Refused(400, str(exc)) from None
        if scope == "selected":
            if not ids:
                raise Refused(400, "Select at least one dead letter first.")
            filters = {"ids": ids}
        elif scope == "filtered":
            if not filters:
                raise Refused(400, "No filter given: to take every dead letter, use 'all'.")
        elif scope == "all":
            filters = {}
        else:
            raise Refused(400, f"unknown scope {scope!r}: selected, filtered or all")
        dead = self.data.dead_letters(kind, name)
        run = dead.replay if action == "replay" else dead.purge
        if params.get("confirm") != "yes":
            count = await run(**filters, dry_run=True)
            first = await dead.list(**{**filters, "limit": 20})
            return self.render(request, "confirm.html", action=action, kind=kind, name=name,
                               count=count, first=first, fields=fields)  # fmt: skip
        count = await run(**filters)
        log.info("dashboard: %s of %d dead letters of %s %r", action, count, kind, name)
        back = link(request.scope.get("root_path", "").rstrip("/"), "/source",
                    kind=kind, name=name, done=action, count=count)  # fmt: skip
        return RedirectResponse(back, status_code=303)

    async def switch(self, request: Request) -> Response:
        """Pause or resume a source (one group of a stream, or all of it)."""
        action = request.url.path.rsplit("/", 1)[-1]
        fields = await self.form(request)
        params = {key: values[-1] for key, values in fields.items() if values}
        kind, name = self.source(params)
        group = params.get("group") or None
        if action == "pause":
            await self.data.client.pause(name, group=group)
        else:
            await self.data.client.resume(name, group=group)
        self.data.forget()  # the next page shows the new state
        where = f"{kind} {name!r}" + (f" (group {group})" if group else "")
        log.info("dashboard: %s %s", action, where)
        back = link(request.scope.get("root_path", "").rstrip("/"), "/source",
                    kind=kind, name=name, done=action, group=group)  # fmt: skip
        return RedirectResponse(back, status_code=303)

    async def cancel(self, request: Request) -> Response:
        """Cancel one message of a source (``Client.cancel``), once confirmed: it cannot
        be undone."""
        fields = await self.form(request)
        params = {key: values[-1] for key, values in fields.items() if values}
        kind, name = self.source(params)
        message_id = params.get("message", "").strip()
        if not message_id:
            raise Refused(400, "Give the id of the message to cancel.")
        group = params.get("group") or None
        reason = params.get("reason", "").strip() or "cancelled from the dashboard"
        check_cancel(name, message_id, {kind}, group, DEFAULT_TTL)  # before asking to confirm
        if params.get("confirm") != "yes":
            return self.render(request, "confirm_cancel.html", kind=kind, name=name,
                               message_id=message_id, group=group, reason=reason)  # fmt: skip
        await self.data.client.cancel(name, message_id, reason=reason, group=group)
        log.info("dashboard: cancel of message %s of %s %r", message_id, kind, name)
        back = link(request.scope.get("root_path", "").rstrip("/"), "/source",
                    kind=kind, name=name, done="cancel", id=message_id)  # fmt: skip
        return RedirectResponse(back, status_code=303)


class Refused(Exception):
    """Raised when a request is refused: its status and the reason shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def letter_filters(params: dict[str, str]) -> dict[str, Any]:
    """The dead-letter filters of a query or form (``handler``, ``error``, ``older``,
    ``newer``); ValueError for a bad duration."""
    found: dict[str, Any] = {}
    if params.get("handler"):
        found["handler"] = params["handler"]
    if params.get("error"):
        found["error"] = params["error"]
    for field, option in (("older", "older_than"), ("newer", "newer_than")):
        seconds = duration(params.get(field))
        if seconds is not None:
            found[option] = seconds
    return found


def _has_yaml() -> bool:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def dashboard(
    target: Flow | Client | str | None = None,
    *,
    prefix: str | None = None,
    auth: str | Callable[[Scope], bool] | None = None,
    read_only: bool = False,
    title: str | None = None,
    secret: str | bytes | None = None,
    sample_every: float | None = 2.0,
    close: bool | None = None,
) -> Starlette:
    """The dashboard, an ASGI app to serve (``redisflow ui``) or mount in your own::

        app.mount("/redisflow", dashboard(flow, auth="ops:a-long-password"))

    ``target``: a Flow (its handlers, options and AsyncAPI document), a Client, or a Redis
    URL (with ``prefix``; default ``$REDISFLOW_URL``). ``auth``: a token, ``user:password``,
    or a function of the ASGI scope that says whether to serve it; without one, only this
    machine's clients (loopback) are served. ``read_only``: no actions, on the pages or
    through POSTs. ``secret`` signs the CSRF tokens (give every process of one dashboard
    the same). ``sample_every``: while the app's lifespan runs (it does not when mounted),
    read the stats that often so the charts have a history. ``close``: close the client
    (or flow) when the lifespan ends (default: only one the dashboard made).
    """
    from ..app import Flow
    from ..client import Client
    from ..config import FlowConfig

    flow: Flow | None = target if isinstance(target, Flow) else None
    owned = not isinstance(target, Client) if close is None else close
    if isinstance(target, Client):
        client = target
    else:
        client = Client(FlowConfig.build(target, prefix=prefix or "rf"))
    checked = Auth.parse(auth) if isinstance(auth, str) else auth
    data = Dashboard(client, flow)
    pages = Pages(data, csrf=Csrf(secret), read_only=read_only, title=title or "redisflow")
    g = pages.guarded
    routes = [
        Route("/", g(pages.overview)),
        Route("/live", g(pages.overview)),
        Route("/source", g(pages.source_page)),
        Route("/source/live", g(pages.source_page)),
        Route("/letter", g(pages.letter)),
        Route("/message", g(pages.message)),
        Route("/docs", g(pages.docs)),
        Route("/asyncapi.json", g(pages.document)),
        Route("/asyncapi.yaml", g(pages.document)),
        *(Route(f"/{action}", g(pages.act), methods=["POST"]) for action in ACTIONS),
        *(Route(f"/{switch}", g(pages.switch), methods=["POST"]) for switch in SWITCHES),
        Route("/cancel", g(pages.cancel), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            if sample_every:
                tg.start_soon(data.sample, sample_every)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                if owned:
                    with anyio.CancelScope(shield=True):
                        await client.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(Guard, auth=checked, read_only=read_only)
    app.state.dashboard = data
    return app
