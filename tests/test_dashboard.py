"""The web dashboard over HTTP, against a real Redis: every page and action, auth, CSRF,
read-only, escaping of what Redis holds, no secret in any page, the dashboard mounted in
another app, and ``redisflow ui`` itself. (The browser test is tests/test_browser.py.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import Mount

from redisflow import Flow, Message
from redisflow.features import partitions
from redisflow.protocol.envelope import now_ms
from redisflow.testing.cluster import RedisCluster
from redisflow.web import dashboard
from redisflow.web.history import History
from redisflow.web.render import duration
from tests.support.flows import eventually, make_flow
from tests.support.servers import closed_port, free_port

pytestmark = pytest.mark.anyio

XSS = "<script>alert(1)</script>"
HOST = "http://127.0.0.1:8765"


@asynccontextmanager
async def browse(
    app: Any, client: tuple[str, int] = ("127.0.0.1", 40000), **kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (cookies kept, like a browser's)."""
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url=HOST, **kwargs) as http:
        yield http


def token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def letters(html: str) -> list[str]:
    return re.findall(r'data-letter="([^"]+)"', html)


class Tags(HTMLParser):
    """Every tag of a page, with its attributes, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_escaped(html: str, where: str) -> None:
    """No markup from Redis: the only script is the dashboard's own, no image, no event
    handler attribute, no link that is not the dashboard's."""
    tags = Tags(html).tags
    scripts = [a.get("src") or "" for t, a in tags if t == "script"]
    assert all(src.endswith("/static/dashboard.js") for src in scripts), (where, scripts)
    assert len(scripts) <= 1 and "img" not in {t for t, _ in tags}, where
    handlers = [(t, k) for t, a in tags for k in a if k.startswith("on")]
    assert not handlers, (where, handlers)
    for tag, attrs in tags:
        href = attrs.get("href") or attrs.get("action") or ""
        assert href.startswith(("/", "#")) or href == "", (where, tag, href)


async def bury(r: aioredis.Redis, flow: Flow, name: str, **fields: Any) -> str:
    """A dead letter as a consumer writes it."""
    entry = {"data": b'{"n": 1}', "message_id": "m1", "error": "ValueError: boom",
             "where": "app.py:1 in handle", "attempts": 2, "handler": "handle",
             "source": f"queue {name!r}", "failed_at": now_ms(), **fields}  # fmt: skip
    entry_id = await r.xadd(flow.keys(name).dead, entry)
    return entry_id.decode()


async def seeded(url: str, ns: str) -> Flow:
    """A flow whose names, group, handler, errors and payloads all hold markup; it ran, so
    every kind has counters and dead letters."""
    flow = make_flow(url, ns, track=True)
    queue, stream, prio, chan = (f"{ns}:{k}{XSS}" for k in ("q", "s", "p", "c"))

    async def fail(payload: Any, msg: Message[Any]) -> None:
        raise ValueError(f"bad {XSS} <img src=x onerror=alert(2)>")

    fail.__qualname__ = f"handler{XSS}"
    flow.on_queue(queue, max_attempts=1)(fail)
    flow.on_stream(stream, group=f"group{XSS}", max_attempts=1)(fail)
    flow.on_priority(prio, max_attempts=1)(fail)
    flow.on_channel(chan)(fail)
    async with flow:
        await flow.enqueue(queue, {"html": XSS})
        await flow.append(stream, {"html": XSS})
        await flow.enqueue_priority(prio, {"html": XSS}, priority=1)
        await flow.publish(chan, {"html": XSS})
        dlqs = [flow.dlq(queue), flow.dlq(stream), flow.dlq(prio), flow.dlq(chan)]
        await eventually(lambda: all_dead(dlqs), 10, "a dead letter in every source")
        await flow.wait_idle()
    return flow  # stopped: its workers' last counters are in Redis


async def all_dead(dlqs: list[Any]) -> bool:
    return all([await d.count() for d in dlqs])


async def test_every_page_escapes_what_redis_holds(url: str, ns: str) -> None:
    """Names, a group, a handler name, error texts and payloads with <script> (anyone who
    can write to Redis controls them): every page shows them escaped."""
    flow = await seeded(url, ns)
    app = dashboard(flow)
    async with browse(app) as http:
        pages = ["/", "/live", "/docs", "/message", f"/message?id={XSS}"]
        home = (await http.get("/")).text
        sources = re.findall(r'href="(/source\?[^"#]+)"', home)
        assert len(set(sources)) == 4
        for source in sorted(set(sources)):
            path = source.replace("&amp;", "&")
            page = await http.get(path)
            assert page.status_code == 200
            pages += [path, path.replace("/source?", "/source/live?")]
            (first, *_) = letters(page.text)
            pages.append(path.replace("/source?", "/letter?") + f"&id={first}")
        pages += [f"/source?kind=queue&name={XSS}", f"/source?kind={XSS}&name=x",
                  f"/letter?kind=queue&name={ns}:q{XSS}&id=0-1"]  # fmt: skip
        for path in pages:
            page = await http.get(path)
            assert page.status_code in (200, 404), (path, page.status_code)
            assert_escaped(page.text, path)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in home
        letter = (await http.get(pages[-4])).text  # a letter page: payload and error shown
        assert "&lt;img src=x onerror=alert(2)&gt;" in letter
        assert "&#34;html&#34;: &#34;&lt;script&gt;" in letter
        # The confirmation page of an action shows the letters too.
        csrf = token(home if "csrf" in home else (await http.get(pages[5])).text)
        form = {"csrf": csrf, "kind": "queue", "name": f"{ns}:q{XSS}", "scope": "all"}
        confirm = await http.post("/purge", data=form)
        assert confirm.status_code == 200 and "Purge 1 dead letter?" in confirm.text
        assert_escaped(confirm.text, "confirm")
        assert confirm.headers["content-security-policy"].startswith("default-src 'none'")
        assert confirm.headers["x-frame-options"] == "DENY"
    await flow.aclose()


async def test_no_password_appears_in_any_page(r: aioredis.Redis, url: str, ns: str) -> None:
    user, password = f"{ns}-ui", f"pw-{ns}-secret"
    await r.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", "+@all",
                            "~*", "&*")  # fmt: skip
    try:
        secret_url = url.replace("redis://", f"redis://{user}:{password}@")
        flow = make_flow(secret_url, ns)

        @flow.on_queue(f"{ns}:jobs")
        async def handle(n: int) -> None:
            raise ValueError("nope")

        flow.produces(f"{ns}:jobs", int)
        await bury(r, flow, f"{ns}:jobs")
        async with browse(dashboard(flow)) as http:
            paths = ["/", "/live", f"/source?kind=queue&name={ns}:jobs", "/docs",
                     "/asyncapi.json", "/asyncapi.yaml", "/message?id=x",
                     f"/source/live?kind=queue&name={ns}:jobs"]  # fmt: skip
            for path in paths:
                page = await http.get(path)
                assert page.status_code == 200, path
                assert password not in page.text, path
            assert f"redis://{user}:***@" in (await http.get("/")).text
        # Redis gone: the error page names the server, not the password.
        gone = make_flow(f"redis://{user}:{password}@127.0.0.1:{closed_port()}/0", ns)
        async with browse(dashboard(gone)) as http:
            page = await http.get("/")
            assert page.status_code == 503 and "did not answer" in page.text
            assert password not in page.text
        await gone.aclose()
        await flow.aclose()
    finally:
        await r.execute_command("ACL", "DELUSER", user)


async def test_auth_token_user_password_and_this_machine_only(url: str, ns: str) -> None:
    flow = make_flow(url, ns)
    remote = ("203.0.113.7", 5000)
    async with browse(dashboard(flow), client=remote) as http:  # no auth: loopback only
        page = await http.get("/")
        assert page.status_code == 403 and "serves this machine only" in page.text
    async with browse(dashboard(flow), client=("::1", 5000)) as http:
        assert (await http.get("/")).status_code == 200
    async with browse(dashboard(flow, auth="t0ken-long"), client=remote) as http:
        denied = await http.get("/")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic")
        assert (await http.get("/", auth=("anyone", "t0ken-long"))).status_code == 200
        assert (await http.get("/", auth=("anyone", "wrong"))).status_code == 401
        bearer = {"authorization": "Bearer t0ken-long"}
        assert (await http.get("/live", headers=bearer)).status_code == 200
        assert (await http.get("/static/dashboard.js", headers=bearer)).status_code == 200
        assert (await http.get("/static/dashboard.js")).status_code == 401
        junk = {"authorization": "Basic !!!"}
        assert (await http.get("/", headers=junk)).status_code == 401
    async with browse(dashboard(flow, auth="ops:pa:ss"), client=remote) as http:
        assert (await http.get("/", auth=("ops", "pa:ss"))).status_code == 200
        assert (await http.get("/", auth=("other", "pa:ss"))).status_code == 401
        assert (await http.get("/", headers={"authorization": "Bearer pa:ss"})).status_code == 401
    allowed = dashboard(flow, auth=lambda scope: scope["path"] != "/docs")
    async with browse(allowed, client=remote) as http:
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/docs")).status_code == 403
    for bad in ("", "user:", ":pw"):
        with pytest.raises(ValueError, match="auth"):
            dashboard(flow, auth=bad)
    await flow.aclose()


async def test_actions_need_a_csrf_token_and_the_same_origin(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    flow = make_flow(url, ns)
    name = f"{ns}:q"
    await bury(r, flow, name)
    app = dashboard(flow)
    form = {"kind": "queue", "name": name, "scope": "all"}
    async with browse(app) as http:
        page = await http.get(f"/source?kind=queue&name={name}")
        csrf = token(page.text)
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert (await http.post("/purge", data=form)).status_code == 403  # cookie, no field
        wrong = {**form, "csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}
        assert (await http.post("/purge", data=wrong)).status_code == 403
        foreign = {**form, "csrf": csrf}
        evil = {"origin": "http://evil.example"}
        assert (await http.post("/purge", data=foreign, headers=evil)).status_code == 403
        cross = {"sec-fetch-site": "cross-site"}
        assert (await http.post("/purge", data=foreign, headers=cross)).status_code == 403
        same = {"origin": HOST, "sec-fetch-site": "same-origin"}
        ok = await http.post("/purge", data=foreign, headers=same)
        assert ok.status_code == 200 and "Purge 1 dead letter?" in ok.text
    async with browse(app) as fresh:  # a token copied without its cookie
        assert (await fresh.post("/purge", data=foreign)).status_code == 403
    # A token made by another dashboard (another key), with its own cookie: refused.
    async with browse(dashboard(flow)) as other:
        await other.get("/")
        other.cookies.set("redisflow_csrf", csrf)
        assert (await other.post("/purge", data={**form, "csrf": csrf})).status_code == 403
    assert await r.xlen(flow.keys(name).dead) == 1  # nothing was purged
    await flow.aclose()


async def test_read_only_shows_no_action_and_refuses_posts(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    flow = make_flow(url, ns)
    name = f"{ns}:q"
    entry = await bury(r, flow, name)
    async with browse(dashboard(flow, read_only=True)) as http:
        pages = [f"/source?kind=queue&name={name}", f"/letter?kind=queue&name={name}&id={entry}",
                 "/"]  # fmt: skip
        for path in pages:
            html = (await http.get(path)).text
            assert 'method="post"' not in html and "Replay" not in html and "Purge" not in html
            assert 'type="checkbox"' not in html
            assert "read-only" in html
        csrf = token(await browse_writable(flow, name))
        for action in ("replay", "purge"):
            refused = await http.post(f"/{action}", data={"csrf": csrf, "kind": "queue",
                                                          "name": name, "scope": "all",
                                                          "confirm": "yes"})  # fmt: skip
            assert refused.status_code == 403 and "read-only" in refused.text
    assert await r.xlen(flow.keys(name).dead) == 1
    await flow.aclose()


async def browse_writable(flow: Flow, name: str) -> str:
    async with browse(dashboard(flow)) as http:
        return (await http.get(f"/source?kind=queue&name={name}")).text


async def test_replay_and_purge_selected_filtered_and_all(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    """Each action asks first (a dry run: nothing changes), then acts and goes back to the
    source page, which says what was done."""
    flow = make_flow(url, ns)
    name = f"{ns}:q"
    dead = flow.keys(name).dead
    a = await bury(r, flow, name, error="TimeoutError: slow", data=b'{"n": 1}')
    b = await bury(r, flow, name, error="ValueError: bad", handler="other")
    c = await bury(r, flow, name, error="ValueError: worse", failed_at=now_ms() - 7_200_000)
    d = await bury(r, flow, name, error="KeyError: k")
    async with browse(dashboard(flow)) as http:
        page = (await http.get(f"/source?kind=queue&name={name}")).text
        assert letters(page) == [a, b, c, d] and '<span class="count">4</span>' in page
        csrf = token(page)
        base = {"csrf": csrf, "kind": "queue", "name": name}

        async def act(action: str, **form: Any) -> httpx.Response:
            asked = await http.post(f"/{action}", data={**base, **form})
            assert asked.status_code == 200, asked.text
            assert await r.xlen(dead) == before  # a confirmation changes nothing
            done = await http.post(f"/{action}", data={**base, **form, "confirm": "yes"})
            assert done.status_code == 303
            return await http.get(done.headers["location"])

        before = 4
        back = await act("replay", scope="selected", id=[a])
        assert "Replayed 1 dead letter." in back.text and letters(back.text) == [b, c, d]
        assert await r.llen(name) == 1  # back in its queue
        before = 3
        filtered = (await http.get(f"/source?kind=queue&name={name}&error=Value&older=1h")).text
        assert letters(filtered) == [c]
        back = await act("purge", scope="filtered", error="Value", older="1h")
        assert "Purged 1 dead letter." in back.text and letters(back.text) == [b, d]
        before = 2
        asked = await http.post("/replay", data={**base, "scope": "filtered", "handler": "other"})
        assert "Replay 1 dead letter?" in asked.text and "ValueError: bad" in asked.text
        back = await act("purge", scope="all")
        assert "Purged 2 dead letters." in back.text and "No dead letters." in back.text
        assert await r.xlen(dead) == 0 and await r.llen(name) == 1
        for form, says in (
            ({"scope": "selected"}, "Select at least one dead letter"),
            ({"scope": "filtered"}, "No filter given"),
            ({"scope": "filtered", "older": "soon"}, "not a duration"),
            ({"scope": "everything"}, "unknown scope"),
        ):
            refused = await http.post("/replay", data={**base, **form})
            assert refused.status_code == 400 and says in refused.text
        bad = await http.get(f"/source?kind=queue&name={name}&newer=yesterday")
        assert bad.status_code == 200 and "not a duration" in bad.text
        assert (await http.get(f"/letter?kind=queue&name={name}&id={a}")).status_code == 404
    await flow.aclose()


async def test_overview_source_message_and_docs_pages(r: aioredis.Redis, url: str, ns: str) -> None:
    """The overview lists every source with its numbers; a source page shows the handlers
    and options; the message page shows a status record; the docs page the AsyncAPI
    document; a dashboard without an app lists what the workers registered."""
    flow = make_flow(url, ns, track=True)
    queue, stream = f"{ns}:jobs", f"{ns}:events"
    done: list[int] = []

    @flow.on_queue(queue, concurrency=3, max_attempts=7)
    async def work(n: int) -> None:
        """Do the work."""
        done.append(n)

    @flow.on_stream(stream, group="audit", partitions=2)
    async def audit(event: dict[str, int]) -> int:  # a result: documented as its reply
        return len(event)

    async with flow:
        message_id = await flow.enqueue(queue, 1)
        await eventually(lambda: done == [1], 10)
        await flow.wait_idle()
    await flow.enqueue(queue, 2)  # waits: no worker now
    async with browse(dashboard(flow)) as http:
        home = (await http.get("/")).text
        assert "Redis 7." in home or "Valkey" in home
        row = re.search(r'data-source="' + re.escape(queue) + r'".*?</tbody>', home, re.S)
        assert row and re.search(r'class="n waiting hot">1<', row.group(0))
        assert re.search(r'data-source="' + re.escape(stream) + r'".*?>2</td>', home, re.S)
        page = (await http.get(f"/source?kind=queue&name={queue}")).text
        assert "<b>concurrency</b> 3" in page and "<b>max_attempts</b> 7" in page
        assert "No dead letters." in page
        status = (await http.get(f"/message?id={message_id}")).text
        assert "s-completed" in status and "work" in status
        unknown = (await http.get("/message?id=nope")).text
        assert "No status record for <code>nope</code>" in unknown
        docs = (await http.get("/docs")).text
        assert "Do the work." in docs and "asyncapi.json" in docs
        replies = r'Replies with <a href="#channel-reply\.[^"]*audit"><code>int</code>'
        assert re.search(replies, docs), docs
        assert "results of " in docs and f"<code>{ns}:reply:{{&lt;id&gt;}}</code>" in docs
        assert (await http.get("/asyncapi.json")).json()["asyncapi"] == "3.0.0"
    registry = dashboard(url, prefix=ns)
    async with browse(registry) as http:  # no app: the registry
        home = (await http.get("/")).text
        assert queue in home and stream in home
        docs = (await http.get("/docs")).text
        assert "started without an app" in docs
        assert (await http.get("/asyncapi.json")).status_code == 404
        page = (await http.get(f"/source?kind=queue&name={queue}")).text
        assert "as the workers report them" in page and "&lt;locals&gt;.work</code>" in page
    await registry.state.dashboard.client.aclose()  # the lifespan closes it when served
    await flow.aclose()


async def test_mounted_in_another_app(r: aioredis.Redis, url: str, ns: str) -> None:
    """Under a path prefix: links, the cookie and the actions stay under it."""
    flow = make_flow(url, ns)
    name = f"{ns}:q"
    await bury(r, flow, name)
    outer = Starlette(routes=[Mount("/ops/redisflow", app=dashboard(flow))])
    async with browse(outer) as http:
        home = await http.get("/ops/redisflow/")
        assert home.status_code == 200 and "Path=/ops/redisflow" in home.headers["set-cookie"]
        assert 'href="/ops/redisflow/static/dashboard.css"' in home.text
        assert 'data-live="/ops/redisflow/live"' in home.text
        assert (await http.get("/ops/redisflow/static/dashboard.css")).status_code == 200
        page = await http.get(f"/ops/redisflow/source?kind=queue&name={name}")
        assert 'action="/ops/redisflow/replay"' in page.text
        form = {"csrf": token(page.text), "kind": "queue", "name": name, "scope": "all",
                "confirm": "yes"}  # fmt: skip
        done = await http.post("/ops/redisflow/replay", data=form)
        assert done.status_code == 303 and done.headers["location"].startswith(
            "/ops/redisflow/source?"
        )
    assert await r.llen(name) == 1
    await flow.aclose()


def test_rates_from_counter_readings() -> None:
    """Differences between readings, per second, per 10 s bucket; nothing where nothing
    was read; a long gap and a counter reset give no made-up rate."""
    history = History(window=60, bucket=10)
    key = ("queue", "q", "", "h")
    for t, processed in ((100, 0), (105, 50), (110, 100), (115, 150), (160, 150), (161, 5)):
        history.add(t, [(key, {"processed": processed, "retried": 0, "dead": 0})])
    rates = history.rates(key, now=161)["processed"]
    assert len(rates) == 6
    assert rates[:2] == [10.0, 10.0]  # 100..120: 10/s (buckets start at 101)
    assert rates[2:5] == [None, None, None]  # 115..160 is a 45 s gap: unknown
    assert rates[5] == 0.0  # 160..161: the counter went down (reset)
    assert history.rates(None, now=161)["processed"] == rates


def test_durations() -> None:
    assert [duration(t) for t in ("90", "90s", "5m", "2h", "1d", " 1.5 H ", "", None)] == [
        90,
        90,
        300,
        7200,
        86400,
        5400,
        None,
        None,
    ]
    for bad in ("soon", "5 minutes", "-1s"):
        with pytest.raises(ValueError, match="not a duration"):
            duration(bad)


def ui(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``redisflow ui ARGS`` in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "redisflow", "ui", *args],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def answered(proc: subprocess.Popen[str], url: str, **kwargs: Any) -> httpx.Response:
    """The first answer of a starting ``redisflow ui``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, **kwargs)
        except httpx.ConnectError:
            assert time.monotonic() < deadline and proc.poll() is None, "ui did not start"
            time.sleep(0.1)


def stopped(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C: it exits 0; what it printed."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def test_ui_command(url: str, ns: str) -> None:
    """``redisflow ui``: refuses to serve beyond this machine without auth; serves with it
    (the token read from the environment, out of the process list); Ctrl-C stops it."""
    refused = subprocess.run(
        [sys.executable, "-m", "redisflow", "ui", "--url", url, "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "give --auth" in refused.stderr
    port = free_port()
    proc = ui("--url", url, "--prefix", ns, "--port", str(port), "--read-only",
              env={"REDISFLOW_UI_AUTH": "ops:s3cret"})  # fmt: skip
    try:
        page = answered(proc, f"http://127.0.0.1:{port}/", auth=("ops", "s3cret"))
        assert page.status_code == 200 and "read-only" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
        assert "s3cret" not in " ".join(map(str, proc.args))
    finally:
        err = stopped(proc)
    assert f"dashboard at http://127.0.0.1:{port}/" in err and "auth on" in err


def test_ui_over_https(url: str, ns: str, tmp_path: Path) -> None:
    """``--ssl-certfile/--ssl-keyfile``: HTTPS, and the CSRF cookie is ``Secure`` there."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    half = subprocess.run(
        [sys.executable, "-m", "redisflow", "ui", "--url", url, "--ssl-certfile", str(cert)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert half.returncode == 2 and "--ssl-keyfile" in half.stderr
    port = free_port()
    proc = ui("--url", url, "--prefix", ns, "--port", str(port), "--ssl-certfile", str(cert),
              "--ssl-keyfile", str(key))  # fmt: skip
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        page = answered(proc, f"https://127.0.0.1:{port}/", verify=trust)
        assert page.status_code == 200 and "Secure" in page.headers["set-cookie"]
    finally:
        err = stopped(proc)
    assert f"dashboard at https://127.0.0.1:{port}/" in err


async def test_pause_and_resume_from_the_source_page(r: aioredis.Redis, url: str, ns: str) -> None:
    """A paused queue is fetched by no worker until resumed, from the page's buttons; one
    group of a stream alone; a channel has no such button; read-only has none at all."""
    flow = make_flow(url, ns)
    queue, stream, chan = f"{ns}:q", f"{ns}:s", f"{ns}:c"
    handled: list[int] = []

    @flow.on_queue(queue)
    async def work(n: int) -> None:
        handled.append(n)

    for group in ("g1", "g2"):
        flow.on_stream(stream, group=group)(work)  # the same function, two groups

    @flow.on_channel(chan)
    async def listen(n: int) -> None: ...

    app = dashboard(flow)
    async with flow, browse(app) as http:
        page = (await http.get(f"/source?kind=queue&name={queue}")).text
        assert 'class="pill running"' in page and 'id="pause"' in page
        form = {"csrf": token(page), "kind": "queue", "name": queue}
        assert (await http.post("/pause", data={**form, "csrf": "x.y"})).status_code == 403
        done = await http.post("/pause", data=form)
        assert done.status_code == 303
        page = (await http.get(done.headers["location"])).text
        assert 'id="paused"' in page and 'id="resume"' in page and "Paused: every worker" in page
        assert [(p.name, p.group) for p in await flow.paused()] == [(queue, None)]
        home = (await http.get("/")).text
        row = re.search(r'data-source="' + re.escape(queue) + r'".*?</tbody>', home, re.S)
        assert row and 'class="pill paused"' in row.group(0)
        await anyio.sleep(1.0)  # every worker has seen the pause (it polls every 0.25 s)
        await flow.enqueue(queue, 1)
        await anyio.sleep(1.5)
        assert handled == [] and await r.llen(queue) == 1  # waits in Redis
        assert (await http.post("/resume", data=form)).status_code == 303
        await eventually(lambda: handled == [1], 10, "the message handled once resumed")
        # One group of a stream.
        sform = {**form, "kind": "stream", "name": stream, "group": "g1"}
        assert (await http.post("/pause", data=sform)).status_code == 303
        assert [(p.name, p.group) for p in await flow.paused()] == [(stream, "g1")]
        page = (await http.get(f"/source?kind=stream&name={stream}")).text
        assert re.search(r'<span class="group">g1</span><span class="pill paused">', page)
        assert not re.search(r'<span class="group">g2</span><span class="pill paused">', page)
        assert (await http.post("/pause", data={**sform, "group": ""})).status_code == 303
        refused = await http.post("/resume", data=sform)  # one group of a stream paused whole
        assert refused.status_code == 400 and "is paused whole" in refused.text
        assert (await http.post("/resume", data={**sform, "group": ""})).status_code == 303
        assert await flow.paused() == []
        page = (await http.get(f"/source?kind=channel&name={chan}")).text
        assert 'id="pause"' not in page and "consuming" not in page
        refused = await http.post("/pause", data={**form, "kind": "channel", "name": chan})
        assert refused.status_code == 400 and "cannot be paused" in refused.text
    async with browse(dashboard(flow, read_only=True)) as http:
        page = (await http.get(f"/source?kind=queue&name={queue}")).text
        assert 'id="pause"' not in page and 'class="pill running"' in page
        assert (await http.post("/pause", data=form)).status_code == 403
    assert await flow.paused() == []
    await flow.aclose()


async def test_a_partitioned_queue_on_a_cluster(redisflow_cluster: RedisCluster, ns: str) -> None:
    """On a Redis Cluster, a queue over 4 partitions (on every master): one row with its
    partitions, the dead letters of every partition on one page, a replay sends each back
    to its own partition, a pause reaches the workers."""
    url = redisflow_cluster.seed_url
    flow = make_flow(url, ns)
    q = f"{ns}:jobs"

    @flow.on_queue(q, partitions=4, max_attempts=1)
    async def handle(n: int) -> None:
        if n % 2:
            raise ValueError(f"odd {n}")

    async with flow:
        await flow.enqueue_many(q, list(range(16)))
        await eventually(lambda: dead_count(flow, q, 8), 10, "8 dead letters")
        await flow.wait_idle()
    keys = partitions.keys(q, 4)
    async with browse(dashboard(flow)) as http:
        home = (await http.get("/")).text
        row = re.search(r'data-source="' + re.escape(q) + r'".*?</tbody>', home, re.S)
        assert row and re.search(r'rowspan="1">4</td>', row.group(0))  # partitions
        assert re.search(r'class="n dead bad".*?>8</a>', row.group(0), re.S)
        page = await http.get(f"/source?kind=queue&name={q}")
        found = letters(page.text)
        assert len(found) == 8
        sources = {d.partition for d in await flow.dlq(q).list()}
        assert len(sources) > 1 and sources <= set(keys)
        form = {"csrf": token(page.text), "kind": "queue", "name": q, "scope": "all"}
        done = await http.post("/replay", data={**form, "confirm": "yes"})
        assert done.status_code == 303 and "count=8" in done.headers["location"]
        lengths = [await flow.send("LLEN", key) for key in keys]
        assert sum(lengths) == 8 and await flow.dlq(q).count() == 0
        assert (await http.post("/pause", data=form)).status_code == 303
        assert [(p.name, p.group) for p in await flow.paused()] == [(q, None)]
        assert (await http.post("/resume", data=form)).status_code == 303
    await flow.aclose()


async def dead_count(flow: Flow, name: str, count: int) -> bool:
    return await flow.dlq(name).count() == count


def test_times_for_people() -> None:
    from datetime import UTC, datetime, timedelta

    from redisflow.web.render import ago, until

    now = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    assert [ago(now - timedelta(seconds=s), now) for s in (5, 90, 7200, 200_000)] == [
        "5 s ago", "1 min ago", "2 h ago", "2 d ago"
    ]  # fmt: skip
    assert [until(now + timedelta(seconds=s), now) for s in (5, 90, 7200, -1)] == [
        "in 5 s", "in 1 min", "in 2 h", "due"
    ]  # fmt: skip
    assert ago(None) == until(None) == "\u2013"


async def test_schedules_panel(url: str, ns: str) -> None:
    """Schedules (issue 19) on the overview: when, next run, last tick, last outcome with
    its error (escaped), runs; paused and resumed from their page like a queue."""
    flow = make_flow(url, ns)
    name = f"{ns}:tick{XSS}"
    runs: list[Any] = []

    async def tick(msg: Message[Any]) -> None:
        runs.append(msg)
        raise ValueError(f"boom {XSS}")

    flow.every(0.5, name=name, max_attempts=1)(tick)
    async with flow:
        await eventually(lambda: len(runs) >= 3, 15, "three runs")
    async with browse(dashboard(flow)) as http:
        home = (await http.get("/")).text
        assert_escaped(home, "/")
        row = re.search(r"<tr data-schedule=.*?</tr>", home, re.S)
        assert row, "no schedules panel"
        cells = row.group(0)
        assert "every 500 ms" in cells and "ValueError: boom &lt;script&gt;" in cells
        fired = re.findall(r'<td class="n">(\d+)</td>', cells)[0]  # the Runs column
        assert int(fired) >= 3
        assert "running" in cells
        page = (await http.get(f"/source?kind=schedule&name={name}")).text
        assert_escaped(page, "schedule page")
        form = {"csrf": token(page), "kind": "schedule", "name": name}
        assert (await http.post("/pause", data=form)).status_code == 303
        home = (await http.get("/")).text
        row = re.search(r"<tr data-schedule=.*?</tr>", home, re.S)
        assert row and 'class="pill paused"' in row.group(0)
        assert (await http.post("/resume", data=form)).status_code == 303
        assert await flow.paused() == []
    await flow.aclose()


async def test_cancel_a_message_from_the_source_page(url: str, ns: str) -> None:
    """The source page cancels a message by id after a confirmation (a POST with the CSRF
    token), lists the live cancel marks, and the message never runs; names and reasons are
    escaped; a stream offers its groups; read-only shows no form and refuses the POST."""
    flow = make_flow(url, ns)
    queue, stream = f"{ns}:q", f"{ns}:s"
    handled: list[int] = []

    @flow.on_queue(queue)
    async def work(n: int) -> None:
        handled.append(n)

    @flow.on_stream(stream, group="audit")
    async def audit(n: int) -> None: ...

    doomed = await flow.enqueue(queue, 1, delay=0.5)
    assert doomed is not None
    app = dashboard(flow)
    async with browse(app) as http:
        page = (await http.get(f"/source?kind=queue&name={queue}")).text
        assert 'id="cancel-form"' in page and "No message of this source is cancelled" in page
        form = {"csrf": token(page), "kind": "queue", "name": queue, "message": doomed,
                "reason": XSS}  # fmt: skip
        assert (await http.post("/cancel", data={**form, "csrf": "x.y"})).status_code == 403
        empty = await http.post("/cancel", data={**form, "message": " "})
        assert empty.status_code == 400 and "Give the id" in empty.text
        grouped = await http.post("/cancel", data={**form, "group": "g"})  # refused before
        assert grouped.status_code == 400 and "group names a consumer group" in grouped.text
        chan = await http.post("/cancel", data={**form, "kind": "channel", "name": "news"})
        assert chan.status_code == 400 and "keeps no message" in chan.text
        asked = await http.post("/cancel", data=form)
        assert asked.status_code == 200 and "Cancel message <code>" in asked.text
        assert XSS not in asked.text and "&lt;script&gt;" in asked.text
        assert await flow.cancelled(queue) == {}, "nothing is done before the confirmation"
        done = await http.post("/cancel", data={**form, "confirm": "yes"})
        assert done.status_code == 303
        page = (await http.get(done.headers["location"])).text
        assert f"Cancelled message <code>{doomed}</code>" in page
        assert f'data-mark="{doomed}"' in page and XSS not in page
        marks = await flow.cancelled(queue)
        assert list(marks) == [doomed] and marks[doomed].reason == XSS
        spage = (await http.get(f"/source?kind=stream&name={stream}")).text
        assert '<option value="audit">audit</option>' in spage
    async with flow:
        await flow.enqueue(queue, 2)
        await eventually(lambda: handled == [2], 10, "the other message")
        await anyio.sleep(1.0)  # the cancelled one came due 0.5 s after it was sent
    assert handled == [2]
    async with browse(dashboard(flow, read_only=True)) as http:
        page = (await http.get(f"/source?kind=queue&name={queue}")).text
        assert 'id="cancel-form"' not in page and f'data-mark="{doomed}"' in page
        assert (await http.post("/cancel", data=form)).status_code == 403
    await flow.aclose()
