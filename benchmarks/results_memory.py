"""Redis memory of N kept results (issue 20): each one record ``<prefix>:result:{<id>}``
written by the same script handlers use (``features/results.py``), on a private Redis.

    python benchmarks/results_memory.py --n 1000000

Prints ``used_memory`` before and after, the bytes per result, and ``MEMORY USAGE`` of
one record; the payload is a small model dumped as JSON (``{"url": ..., "width": n}``).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from pydantic import BaseModel
from suite import PrivateRedis

from redisflow import Client, FlowConfig
from redisflow.features.results import success
from redisflow.keys import result_key
from redisflow.protocol.envelope import new_id
from redisflow.protocol.replies import info


class Thumb(BaseModel):
    url: str
    width: int


async def measure(url: str, n: int, ttl_s: float) -> dict[str, float]:
    client = Client(FlowConfig.build(url, prefix="rf"))
    before = int(info(await client.send("INFO", "memory"))["used_memory"])
    t0 = time.perf_counter()
    ids: list[str] = []
    for start in range(0, n, 10_000):
        part = [new_id() for _ in range(min(10_000, n - start))]
        ids += part[:1]
        await asyncio.gather(
            *(
                client.results.write(
                    rid, success(Thumb(url=f"t/{rid}.png", width=i)), int(ttl_s * 1000)
                )
                for i, rid in enumerate(part)
            )
        )
    seconds = time.perf_counter() - t0
    after = int(info(await client.send("INFO", "memory"))["used_memory"])
    one = int(await client.send("MEMORY", "USAGE", result_key("rf", ids[0])))
    keys = int(await client.send("DBSIZE"))
    await client.aclose()
    return {
        "n": n,
        "keys": keys,
        "used_before_mb": before / 2**20,
        "used_after_mb": after / 2**20,
        "bytes_per_result": (after - before) / n,
        "memory_usage_one": one,
        "writes_per_s": n / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--ttl", type=float, default=3600.0, help="the records' TTL, seconds")
    args = p.parse_args()
    redis = PrivateRedis()
    try:
        for key, value in asyncio.run(measure(redis.url, args.n, args.ttl)).items():
            print(f"{key}: {value:,.1f}")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
