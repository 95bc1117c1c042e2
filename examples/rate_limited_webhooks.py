"""Rate-limited webhooks: at most LIMIT deliveries per PER seconds to each URL, fleet-wide.

Tutorial pattern "Real-World Examples" (Rate-Limited Webhook Delivery). There a URL's calls
are counted when webhooks are queued, not when they are sent, in a list whose single EXPIRE
every new call pushes back; a limited webhook at the head of the queue stalls every other
URL (the loop sleeps and retries the same head); and ZRANGE then ZREM lets two workers send
the same webhook. Here ``rate_limit=RateLimit(LIMIT, per=PER, key=url)`` grants each handler
start in Redis (a sliding log per URL, exact in any window, on the server's clock, shared by
every worker); a webhook over its URL's limit waits in Redis without holding back the others.

The demo's limit is short (3 per second) so that it finishes quickly. The receiving end is
a local HTTP server that the producer starts (never the internet): the producer queues the
webhooks, waits for them to arrive and prints when each one did.

Run the worker:              redisflow run examples.rate_limited_webhooks:flow
Receive and send webhooks:   python -m examples.rate_limited_webhooks
"""

import asyncio
import threading
import time
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import BaseModel

from redisflow import Flow, RateLimit

QUEUE = "examples:rate_limited_webhooks:hooks"
LIMIT, PER = 3, 1.0

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Webhook(BaseModel):
    url: str
    event: str
    n: int


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(QUEUE, Webhook)


@flow.on_queue(QUEUE, concurrency=8, rate_limit=RateLimit(LIMIT, per=PER, key=lambda h: h.url))
def deliver(hook: Webhook) -> None:  # a plain def runs in a worker thread: blocking is fine
    request = urllib.request.Request(
        hook.url, data=hook.model_dump_json().encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        print(f"[deliver] {hook.event} #{hook.n} -> {hook.url}: HTTP {response.status}")


class Receiver(ThreadingHTTPServer):
    """A local webhook endpoint, in a thread: records when each POST arrives, by path."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Endpoint)
        self.url = f"http://127.0.0.1:{self.server_port}"
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Endpoint(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.arrivals[self.path].append(time.monotonic())  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet
        pass


async def produce(per_url: int = 6, wait: float = 30.0) -> dict[str, list[float]]:
    """Start a receiver, queue ``per_url`` webhooks to each of three URLs on it, and wait
    (at most ``wait`` seconds) until all arrive; returns the arrival times by path."""
    receiver = Receiver()
    try:
        paths = ["/shop-a", "/shop-b", "/shop-c"]
        hooks = [
            Webhook(url=receiver.url + path, event="order.created", n=n)
            for path in paths  # all of shop-a's first: it must not hold back the others
            for n in range(per_url)
        ]
        await flow.enqueue_many(QUEUE, hooks)
        print(f"queued {per_url} webhooks to each of {', '.join(receiver.url + p for p in paths)}")
        deadline = time.monotonic() + wait
        while sum(map(len, receiver.arrivals.values())) < len(hooks):
            if time.monotonic() > deadline:
                print("not every webhook arrived: is the worker running?")
                break
            await asyncio.sleep(0.05)
        start = min((t for times in receiver.arrivals.values() for t in times), default=0.0)
        for path in paths:
            times = " ".join(f"{t - start:.2f}" for t in sorted(receiver.arrivals[path]))
            print(f"{path}: arrived at {times} s (at most {LIMIT} per {PER:g} s)")
        return {path: sorted(times) for path, times in receiver.arrivals.items()}
    finally:
        receiver.shutdown()
        receiver.server_close()


async def main() -> None:
    """The producer process: send and watch, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
