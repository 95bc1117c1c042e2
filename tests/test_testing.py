"""The pytest plugin users test their apps with (``redisflow.testing``): the README's
example test, run here as written, and what ``wait_idle`` waits for."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from redisflow import Flow, RedisflowError
from redisflow.testing import run_flow

pytestmark = pytest.mark.anyio


# -- the README's example ------------------------------------------------------------------


class Signup(BaseModel):
    email: str


flow = Flow()
sent: list[str] = []


@flow.on_queue("signups")
async def welcome(signup: Signup) -> None:
    sent.append(signup.email)


async def test_signup_sends_a_welcome_email(redisflow_url: str) -> None:
    async with run_flow(flow, url=redisflow_url) as f:
        await f.enqueue("signups", Signup(email="a@b.c"))
        await f.wait_idle()
    assert sent == ["a@b.c"]


# -- wait_idle -------------------------------------------------------------------------------


async def test_wait_idle_waits_for_retries_and_every_kind(redisflow_url: str) -> None:
    """wait_idle returns only when retries (due later), streams, priority queues and
    channels are all settled."""
    app = Flow(prefix="wi", lease=2, claim_idle=2, block_timeout=0.5)
    done: list[str] = []
    failures = 0

    @app.on_queue("q", retry_delay=0.3)
    async def flaky(n: int) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("not yet")
        done.append(f"q{n}")

    @app.on_priority("pq")
    async def urgent(n: int) -> None:
        done.append(f"pq{n}")

    @app.on_stream("s", group="g")
    async def events(n: int) -> None:
        done.append(f"s{n}")

    @app.on_channel("ch")
    async def news(n: int) -> None:
        done.append(f"ch{n}")

    async with run_flow(app, url=redisflow_url) as f:
        await f.enqueue("q", 1)
        await f.enqueue_priority("pq", 2)
        await f.append("s", 3)
        await f.publish("ch", 4)
        await f.wait_idle(timeout=20)
        assert sorted(done) == ["ch4", "pq2", "q1", "s3"]
    with pytest.raises(RedisflowError):
        await app.wait_idle()
