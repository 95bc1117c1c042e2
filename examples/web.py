"""A FastAPI app that publishes from its request handlers, with the flow in its lifespan.

The web process only produces (its connections open on first use and close with the app);
the worker process consumes. Both share the module, so the model and names are defined once.

    pip install fastapi uvicorn jinja2  # the web extra (jinja2 for the dashboard)
    uvicorn examples.web:app            # the web app
    redisflow run examples.web:flow     # the worker
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"id": 1, "item": "tea"}'
    curl localhost:8000/orders/<message id>

The app also serves the redisflow dashboard at http://localhost:8000/redisflow/ (to this
machine only, unless $REDISFLOW_UI_AUTH gives a token or user:password).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from redisflow import Flow
from redisflow.web import dashboard

flow = Flow(track=True)  # $REDISFLOW_URL, else redis://localhost:6379/0
ORDERS = "examples:web:orders"


class Order(BaseModel):
    id: int
    item: str


class Accepted(BaseModel):
    message_id: str | None  # None: the same order was already accepted
    duplicate: bool


flow.produces(ORDERS, Order, summary="Orders accepted by POST /orders")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await flow.aclose()  # close the producer connections with the app


app = FastAPI(lifespan=lifespan)
app.mount("/redisflow", dashboard(flow, auth=os.environ.get("REDISFLOW_UI_AUTH")))


@app.post("/orders", status_code=202)
async def create_order(order: Order) -> Accepted:
    """Queue the order once: a retried POST of the same order id is not queued again."""
    message_id = await flow.enqueue(ORDERS, order, dedup_key=f"order:{order.id}")
    return Accepted(message_id=message_id, duplicate=message_id is None)


@app.get("/orders/{message_id}")
async def order_status(message_id: str) -> dict[str, object]:
    """Where the order's message is: published, processing, completed, failed or dead."""
    status = await flow.status(message_id)
    if status is None:
        raise HTTPException(404, "unknown message")
    return {"status": status.status, "attempts": status.attempts, "error": status.error}


@flow.on_queue(ORDERS, concurrency=8)
async def fulfil(order: Order) -> None:
    print(f"[worker] fulfilling order {order.id}: {order.item}")
