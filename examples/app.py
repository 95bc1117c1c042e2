"""The README's example service: one handler of each kind.

Run the worker:   redisflow run examples.app:flow
Send messages:    python -m examples.app
"""

import asyncio

from pydantic import BaseModel

from redisflow import Flow, Message

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Order(BaseModel):
    id: int
    item: str
    quantity: int = 1


# What produce() sends, for the AsyncAPI document (`redisflow docs examples.app:flow`).
flow.produces("shop.orders.created", Order, kind="channel", summary="Every new order")
flow.produces("shop:emails", Order)
flow.produces("shop:picking", Order, kind="priority")
flow.produces("shop:ledger", Order, kind="stream")


@flow.on_channel("shop.orders.*")  # Pub/Sub pattern: every order event, at-most-once
async def audit(order: Order, msg: Message[Order]) -> None:
    print(f"[channel {msg.headers['channel']}] order {order.id}")


@flow.on_queue("shop:emails", concurrency=32)  # list queue, at-least-once
async def send_confirmation(order: Order, msg: Message[Order]) -> None:
    print(f"[queue] confirmation for order {order.id} (attempt {msg.attempt})")


@flow.on_priority("shop:picking", concurrency=4)  # 0 = most urgent
async def pick(order: Order) -> None:
    print(f"[priority] picking {order.quantity} x {order.item} for order {order.id}")


@flow.on_stream("shop:ledger", group="billing")  # consumer group, at-least-once
async def bill(order: Order) -> None:
    print(f"[stream] billing order {order.id}")


async def produce() -> None:
    """Send one order through every path."""
    for i, (item, urgent) in enumerate([("tea", False), ("kettle", True), ("cups", False)]):
        order = Order(id=i, item=item, quantity=i + 1)
        await flow.publish("shop.orders.created", order)
        await flow.enqueue("shop:emails", order)
        await flow.enqueue_priority("shop:picking", order, priority=0 if urgent else 5)
        await flow.append("shop:ledger", order, maxlen=10_000)


if __name__ == "__main__":
    asyncio.run(produce())
