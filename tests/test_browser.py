"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium; nothing is downloaded) against ``redisflow ui``
serving a running shop (tests/support/shop.py).

It opens the overview and sees a queue's row change as messages are enqueued, without a
reload; opens the dead letters of a source, replays one and sees the count drop. It saves
screenshots in ``$REDISFLOW_SCREENSHOTS`` (``make screenshots``: docs/img/, which the README
shows; the shop then runs a minute first, so the charts have a history), else in a
temporary directory. Without Chromium it is skipped, except under CI (``CI`` set), where
.ci/run installs it: there a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
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
DRIVER = shutil.which("chromedriver")
#: Flags for a root user on a machine without a network beyond loopback.
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,900",
)  # fmt: skip
WAIT = 30.0  # seconds for anything the page shows to appear


def browser_or_skip() -> None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", DRIVER))
               if path is None]  # fmt: skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        reason = (f"no headless browser: {', '.join(missing)} missing (apt-get install"
                  " chromium chromium-driver; .ci/run installs them)")  # fmt: skip
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class Page:
    """A Chromium window, driven from a worker thread (Selenium blocks)."""

    def __init__(self, base: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        self.profile = tempfile.mkdtemp(prefix="redisflow-chromium-")
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
        self.base, self.shots = base, shots

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def until(self, check: Callable[[], Any], what: str, within: float = WAIT) -> Any:
        """Poll ``check`` (exceptions count as not yet) until it is truthy."""
        deadline = time.monotonic() + within
        while True:
            try:
                found = check()
            except Exception:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not show {what} within {within:g} s")
            time.sleep(0.1)

    def text(self, css: str) -> str:
        return str(self.find(css).text).strip()

    def shoot(self, name: str, full: bool = False) -> Path:
        """A screenshot of the window (``full``: of the whole page)."""
        path = self.shots / f"{name}.png"
        if full:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(1400, min(int(height) + 20, 4000))
        self.driver.save_screenshot(str(path))
        if full:
            self.driver.set_window_size(1400, 900)
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
    shop.flow.configure(url=url, prefix=ns)
    shop.STOCK_OUT.clear()
    shop.STOCK_OUT.add("kettle")
    port = free_port()
    ui = subprocess.Popen(  # noqa: ASYNC220 - starts at once; lives through the test
        [sys.executable, "-m", "redisflow", "ui", "tests.support.shop:flow", "--url", url,
         "--port", str(port)],
        cwd=ROOT, env={**os.environ, "SHOP_PREFIX": ns}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    page: Page | None = None
    try:
        async with shop.flow, anyio.create_task_group() as tg:
            stop = anyio.Event()
            tg.start_soon(traffic, stop)
            await eventually(lambda: answers(port), 30, "redisflow ui answering")
            page = await anyio.to_thread.run_sync(Page, f"http://127.0.0.1:{port}", shots)
            await anyio.sleep(60 if wanted else 4)  # charts: a history (a minute for docs)
            await run(page.open, "/")
            await run(page.until, lambda: page.all("tbody[data-source]"), "the sources")
            await run(page.shoot, "overview")
            await live_row(page)
            stop.set()
            await dead_letters(page)
            await run(page.open, "/docs")
            await run(page.until, lambda: "take_order" in page.text("main"), "the docs")
            await run(page.shoot, "docs", True)
            tg.cancel_scope.cancel()
    finally:
        if page is not None:
            await run(page.close)
        ui.terminate()
        _, err = ui.communicate(timeout=30)
    assert "Traceback" not in err, err


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(partial(fn, *args))


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

    def held() -> int:
        return number(page.text(f"{row} td.waiting")) + number(page.text(f"{row} td.inflight"))

    await run(page.until, lambda: held() == 0, "an idle e-mail queue")
    await run(page.driver.execute_script, "window.notReloaded = true")
    mails = [shop.Email(to=f"bulk{i}@example.com", subject="news") for i in range(600)]
    await shop.flow.enqueue_many(shop.EMAILS, mails)
    assert await run(page.until, held, "the e-mails waiting or in flight") > 0
    await run(page.until, lambda: held() == 0, "the e-mails drained")
    assert await run(page.driver.execute_script, "return window.notReloaded === true")


async def dead_letters(page: Page) -> None:
    """The dead letters of the orders: one replayed (its item back in stock), the count
    drops by one, on the page and in Redis."""
    await shop.flow.wait_idle(timeout=30)
    dlq = shop.flow.dlq(shop.ORDERS)
    before = await dlq.count()
    assert before >= 1, "no order died: the traffic ran too briefly"
    shop.STOCK_OUT.clear()  # a replayed kettle now goes through
    await run(page.find(f'tbody[data-source="{shop.ORDERS}"] td.name a').click)
    count = "h2#dead .count"
    await run(page.until, lambda: number(page.text(count)) == before, f"{before} dead letters")
    await run(page.shoot, "source")
    await run(page.find("tr[data-letter] a").click)
    await run(page.until, lambda: "no stock left" in page.text("pre.error-text"), "a letter")
    await run(page.shoot, "letter")
    await run(page.driver.back)
    await run(page.until, lambda: page.all("tr[data-letter] input[name=id]"), "the checkboxes")
    await run(page.find("tr[data-letter] input[name=id]").click)
    await run(page.find('button[name=scope][value=selected][formaction$="/replay"]').click)
    await run(page.until, lambda: page.text("h1") == "Replay 1 dead letter?", "the confirmation")
    await run(page.find("#confirm").click)
    await run(page.until, lambda: page.text("#done") == "Replayed 1 dead letter.", "done")
    assert number(await run(page.text, count)) == before - 1
    await shop.flow.wait_idle(timeout=30)
    assert await dlq.count() == before - 1  # it went through this time
