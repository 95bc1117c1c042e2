"""``make demo``: run examples/app.py end to end and print what each handler did.

Runs against a private server started for the demo on a free port (``redis-server`` from
PATH, else the embedded one of ``redisflow[server]``) and removed afterwards, so it never
writes to your own Redis; set $REDISFLOW_URL to run it against a server of your choice.
"""

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redisflow.testing.servers import RedisServer, redis_server_binary


async def main(url: str) -> None:
    os.environ["REDISFLOW_URL"] = url
    from examples import app

    app.flow.url = url
    async with app.flow:
        await app.produce()
        await asyncio.sleep(1.0)  # let the handlers print
    print("demo done: every handler ran; stopped gracefully")


if __name__ == "__main__":
    url = os.environ.get("REDISFLOW_URL")
    server = None
    if url:
        print(f"using the Redis at {url} ($REDISFLOW_URL)")
    else:
        try:
            binary = redis_server_binary()
        except RuntimeError as exc:
            raise SystemExit(f"demo: {exc}") from None
        server = RedisServer.start()
        url = server.url
        print(f"started a private server for the demo at {url} ({binary})")
    try:
        asyncio.run(main(url))
    finally:
        if server is not None:
            server.stop()
