"""The FastAPI example: publish from request handlers, flow connections in the lifespan."""

from __future__ import annotations

import httpx
import pytest

from examples import web
from redisflow import Flow

pytestmark = pytest.mark.anyio


async def test_web_app_queues_once_and_reports_status(url: str) -> None:
    """POST queues an order (a repeated POST does not), the worker handles it, and GET
    shows its status; the dashboard is mounted at /redisflow/; the lifespan closes the web
    process's connections."""
    web.flow.url = url
    worker = Flow(url, track=True, block_timeout=0.5)
    worker.on_queue(web.ORDERS)(web.fulfil)
    transport = httpx.ASGITransport(app=web.app)
    async with (
        web.app.router.lifespan_context(web.app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        first = await client.post("/orders", json={"id": 7, "item": "tea"})
        again = await client.post("/orders", json={"id": 7, "item": "tea"})
        assert first.status_code == 202 and again.status_code == 202
        message_id = first.json()["message_id"]
        assert message_id and again.json() == {"message_id": None, "duplicate": True}
        assert (await client.get(f"/orders/{message_id}")).json()["status"] == "published"
        async with worker:
            await worker.wait_idle()
        status = (await client.get(f"/orders/{message_id}")).json()
        assert status == {"status": "completed", "attempts": 1, "error": None}
        assert (await client.get("/orders/nope")).status_code == 404
        board = await client.get("/redisflow/")  # the dashboard the example mounts
        assert board.status_code == 200 and web.ORDERS in board.text
        assert 'href="/redisflow/static/dashboard.css"' in board.text
    await worker.aclose()
    assert not web.flow.client.open  # closed by the lifespan
