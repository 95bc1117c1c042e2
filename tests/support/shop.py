"""The shop the browser test (tests/test_browser.py) runs and the README's screenshots show:
one handler of each reliable kind and a schedule, an order that fails while ``STOCK_OUT``
holds its item, and what the shop declares it sends. ``redisflow ui tests.support.shop:flow``
serves its dashboard; the prefix comes from ``$SHOP_PREFIX`` (each test its own)."""

from __future__ import annotations

import os

import anyio
from pydantic import BaseModel, Field

from redisflow import Flow, Message

flow = Flow(prefix=os.environ.get("SHOP_PREFIX", "rf"), block_timeout=0.5, lease=2, grace_period=2)
ORDERS, EMAILS, LEDGER, PICKING = "store:orders", "store:emails", "store:ledger", "store:picking"
NAMES = (ORDERS, EMAILS, LEDGER, PICKING)
#: Items whose orders fail (retried once, then dead-lettered) while listed here.
STOCK_OUT = {"kettle"}


class Order(BaseModel):
    """An order placed in the shop."""

    id: int
    item: str
    quantity: int = Field(1, ge=1, description="how many of the item")


class Email(BaseModel):
    """An e-mail to a customer."""

    to: str
    subject: str


flow.produces(ORDERS, Order, summary="Orders from the checkout")
flow.produces(EMAILS, Email, summary="Confirmations to customers")


@flow.on_queue(ORDERS, max_attempts=2, retry_delay=0.2)
async def take_order(order: Order) -> None:
    """Reserve the stock of an order."""
    if order.item in STOCK_OUT:
        raise ValueError(f"no stock left for {order.item!r} (order {order.id})")
    await flow.append(LEDGER, order)


@flow.on_queue(EMAILS, concurrency=2)
async def send_email(email: Email) -> None:
    """Send a confirmation (slowly: a mail server)."""
    await anyio.sleep(0.02)


@flow.on_stream(LEDGER, group="billing")
async def bill(order: Order) -> None:
    """Bill an order once its stock is reserved."""


@flow.on_priority(PICKING, concurrency=4)
async def pick(order: Order) -> None:
    """Pick the items of an order, most urgent first."""
    await anyio.sleep(0.005)


@flow.every(5, name="store:restock")
async def restock(msg: Message) -> None:
    """Count what is left of each item, every 5 seconds."""
