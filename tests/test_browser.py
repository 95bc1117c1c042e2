"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright through ``executable_path``: nothing is downloaded) against ``redisflow ui``
serving a running shop (tests/support/shop.py).

It opens the overview and sees a queue's row change as messages are enqueued, without a
reload; opens the dead letters of a source, replays one and sees the count drop; pauses a
queue (what is enqueued then waits, the row says so) and resumes it (the queue drains). It saves
screenshots in ``$REDISFLOW_SCREENSHOTS`` (``make screenshots``: docs/img/, which the README
shows; the shop then runs a minute first, so the charts have a history), else in the test's
temporary directory. Without Chromium it is skipped, except under CI (``CI`` set), where
.ci/run installs it: there a missing browser fails the test.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from tests.support import shop
from tests.support.flows import eventually
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Flags for a root user on a machine without a network beyond loopback.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
SIZE = {"width": 1400, "height": 900}
WAIT = 30.0  # seconds for anything the page shows to appear


def browser_or_skip() -> None:
    missing = [] if CHROMIUM else ["chromium (apt-get install chromium)"]
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (the dev extra)")
    if missing:
        reason = f"no headless browser: {', '.join(missing)} missing (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@asynccontextmanager
async def chromium(base: str, shots: Path) -> AsyncIterator[Page]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport=SIZE)
            yield Page(page, base, shots)
        finally:
            await browser.close()


class Page:
    """A browser tab on the dashboard."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots

    async def open(self, path: str) -> None:
        await self.page.goto(self.base + path)

    async def text(self, css: str) -> str:
        return str(await self.page.locator(css).first.inner_text(timeout=1000)).strip()

    async def click(self, css: str) -> None:
        await self.page.locator(css).first.click(timeout=WAIT * 1000)

    async def until(self, check: Callable[[], Any], what: str, within: float = WAIT) -> Any:
        """Poll ``check`` (sync or async; an exception counts as not yet) until truthy."""
        deadline = time.monotonic() + within
        while True:
            try:
                found = check()
                if inspect.isawaitable(found):
                    found = await found
            except Exception:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not show {what} within {within:g} s")
            await anyio.sleep(0.1)

    async def shoot(self, name: str, height: int | None = None) -> Path:
        """A screenshot of the window (``height``: of the whole page, at least that high)."""
        path = self.shots / f"{name}.png"
        if height is not None:
            await self.page.set_viewport_size({"width": SIZE["width"], "height": height})
        await self.page.screenshot(path=str(path), full_page=height is not None)
        if height is not None:
            await self.page.set_viewport_size(SIZE)
        return path


def number(text: str) -> int:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else 0


async def traffic(stop: anyio.Event) -> None:
    """Orders (every 7th a kettle, out of stock), picking and e-mails, ~10 per second."""
    i = 0
    while not stop.is_set():
        i += 1
        item = "kettle" if i % 7 == 0 else ("tea", "cups", "spoons")[i % 3]
        order = shop.Order(id=i, item=item, quantity=1 + i % 3)
        await shop.flow.enqueue(shop.ORDERS, order)
        await shop.flow.enqueue_priority(shop.PICKING, order, priority=i % 4)
        await shop.flow.enqueue(shop.EMAILS, shop.Email(to=f"c{i}@example.com", subject="ok"))
        await anyio.sleep(0.1)


async def test_dashboard_in_a_real_browser(
    r: aioredis.Redis, url: str, ns: str, tmp_path: Path
) -> None:
    browser_or_skip()
    wanted = os.environ.get("REDISFLOW_SCREENSHOTS")
    shots = Path(wanted) if wanted else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    for name in shop.NAMES:  # fixed names (the screenshots show them): start clean
        await r.delete(name)
    prefix = "shop" if wanted else ns  # the screenshots show it
    shop.flow.configure(url=url, prefix=prefix)
    shop.STOCK_OUT.clear()
    shop.STOCK_OUT.add("kettle")
    port = free_port()
    ui = subprocess.Popen(  # noqa: ASYNC220 - starts at once; lives through the test
        [sys.executable, "-m", "redisflow", "ui", "tests.support.shop:flow", "--url", url,
         "--port", str(port)],
        cwd=ROOT, env={**os.environ, "SHOP_PREFIX": prefix}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        async with shop.flow, anyio.create_task_group() as tg:
            stop = anyio.Event()
            tg.start_soon(traffic, stop)
            await eventually(lambda: answers(port), 30, "redisflow ui answering")
            async with chromium(f"http://127.0.0.1:{port}", shots) as page:
                await anyio.sleep(60 if wanted else 1)  # charts: a history (a minute: docs)
                await page.open("/")
                await page.until(lambda: page.page.locator("tbody[data-source]").count(),
                                 "the sources")  # fmt: skip
                restock = 'tr[data-schedule="store:restock"]'
                await page.until(lambda: contains(page.text(restock), "every 5000 ms"),
                                 "the schedule")  # fmt: skip
                await live_row(page)
                stop.set()
                await dead_letters(page)
                await pause_and_resume(page)
                await page.open("/docs")
                await page.until(lambda: page.page.get_by_text("take_order").count(), "docs")
                await page.shoot("docs")
            tg.cancel_scope.cancel()
    finally:
        ui.terminate()
        _, err = ui.communicate(timeout=30)
    assert "Traceback" not in err, err


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/live", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


async def live_row(page: Page) -> None:
    """Messages enqueued: the queue's row shows them (waiting in Redis, or in flight: a
    worker takes up to ``prefetch`` at once), then drained, without a reload (a mark set on
    the window survives only if the page was not loaded again)."""
    row = f'tbody[data-source="{shop.EMAILS}"]'

    async def held() -> int:
        waiting = number(await page.text(f"{row} td.waiting"))
        return waiting + number(await page.text(f"{row} td.inflight"))

    async def idle() -> bool:
        return await held() == 0

    await page.until(idle, "an idle e-mail queue")
    await page.page.evaluate("window.notReloaded = true")
    mails = [shop.Email(to=f"bulk{i}@example.com", subject="news") for i in range(300)]
    await shop.flow.enqueue_many(shop.EMAILS, mails)
    assert await page.until(held, "the e-mails waiting or in flight") > 0
    await page.until(idle, "the e-mails drained")
    assert await page.page.evaluate("window.notReloaded === true")


async def dead_letters(page: Page) -> None:
    """The dead letters of the orders: one replayed (its item back in stock), the count
    drops by one, on the page and in Redis."""
    await shop.flow.wait_idle(timeout=30)
    dlq = shop.flow.dlq(shop.ORDERS)
    before = await dlq.count()
    assert before >= 1, "no order died: the traffic ran too briefly"
    shop.STOCK_OUT.clear()  # a replayed kettle now goes through
    await page.click(f'tbody[data-source="{shop.ORDERS}"] td.name a')
    count = "h2#dead .count"

    async def shown() -> int:
        return number(await page.text(count))

    await page.until(lambda: equals(shown(), before), f"{before} dead letters")
    await page.shoot("source")
    await page.click("tr[data-letter] a")
    await page.until(lambda: contains(page.text("pre.error-text"), "no stock left"), "a letter")
    await page.shoot("letter")
    await page.page.go_back()
    await page.click("tr[data-letter] input[name=id]")
    await page.click('button[name=scope][value=selected][formaction$="/replay"]')
    await page.until(lambda: equals(page.text("h1"), "Replay 1 dead letter?"), "confirmation")
    await page.click("#confirm")
    await page.until(lambda: equals(page.text("#done"), "Replayed 1 dead letter."), "done")
    assert await shown() == before - 1
    await shop.flow.wait_idle(timeout=30)
    assert await dlq.count() == before - 1  # it went through this time


async def pause_and_resume(page: Page) -> None:
    """Pause the e-mails from their page: the overview shows them paused and what is
    enqueued waits in Redis; resume: the queue drains."""
    await page.open("/")
    await page.click(f'tbody[data-source="{shop.EMAILS}"] td.name a')
    await page.click("#pause")
    await page.until(lambda: equals(page.text("#paused"), "paused"), "the queue paused")
    await page.shoot("paused")
    await page.open("/")
    row = f'tbody[data-source="{shop.EMAILS}"]'
    await page.until(lambda: equals(page.text(f"{row} td.state"), "paused"), "paused row")
    await anyio.sleep(1.0)  # every worker has seen it (they read the pauses every 0.25 s)
    await shop.flow.enqueue_many(shop.EMAILS, [shop.Email(to="x@y.z", subject="s")] * 50)
    waiting = f"{row} td.waiting"
    await page.until(lambda: equals(page.text(waiting), "50"), "50 e-mails waiting")
    await page.shoot("overview", height=560)  # the README's: a paused queue, charts
    await anyio.sleep(2.5)  # a report later, still nothing taken
    assert await page.text(waiting) == "50"
    await page.click(f"{row} td.name a")
    await page.click("#resume")
    await page.until(lambda: equals(page.text("#state .pill"), "consuming"), "resumed")
    await page.open("/")
    await page.until(lambda: equals(page.text(waiting), "0"), "the e-mails drained")
    assert await page.text(f"{row} td.state") == "consuming"


async def equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def contains(value: Any, part: str) -> bool:
    return part in await value
