"""The examples run end to end against the test server, so they cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.anyio
async def test_example_app_handles_every_kind(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/app.py: one order through channel, queue, priority and stream handlers."""
    from examples import app

    app.flow.url = url
    seen = ""
    async with app.flow:
        await app.produce()
        with anyio.fail_after(10):
            while not all(
                seen.count(f"[{kind}") >= 3 for kind in ("channel", "queue", "priority", "stream")
            ):
                await anyio.sleep(0.05)
                seen += capsys.readouterr().out
    assert "[priority] picking 2 x kettle for order 1" in seen, seen


def test_demo_runs_against_given_redis(url: str) -> None:
    """`make demo`'s script uses $REDISFLOW_URL when it answers, and exits 0."""
    env = {**os.environ, "REDISFLOW_URL": url}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"using the Redis at {url}" in out.stdout
    assert "[stream] billing order 2" in out.stdout
    assert "demo done" in out.stdout
