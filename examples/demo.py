"""``make demo``: run examples/app.py end to end and print what each handler did.

Uses the Redis at $REDISFLOW_URL (else localhost:6379) when one answers; otherwise starts a
private redis-server on a free port for the length of the demo.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def private_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="redisflow-demo-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not reachable(url):
        if time.monotonic() > deadline:
            raise SystemExit("could not start a private redis-server")
        time.sleep(0.05)
    return proc, url, workdir


async def main(url: str) -> None:
    os.environ["REDISFLOW_URL"] = url
    from examples import app

    app.flow.url = url
    async with app.flow:
        await app.produce()
        await asyncio.sleep(1.0)  # let the handlers print
    print("demo done: every handler ran; stopped gracefully")


if __name__ == "__main__":
    url = os.environ.get("REDISFLOW_URL", "redis://localhost:6379/0")
    proc = workdir = None
    if not reachable(url):
        wanted = url
        proc, url, workdir = private_redis()
        print(f"no Redis at {wanted}: started a private one at {url}")
    else:
        print(f"using the Redis at {url}")
    try:
        asyncio.run(main(url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
            shutil.rmtree(workdir or "", ignore_errors=True)
