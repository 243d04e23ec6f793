"""Orders and payments: join two event streams, and find the orders not paid in time.

Run it with ``onceflow run jobs/orders_payments.py`` (input: the shipped
``data/orders`` and ``data/payments``; regenerate or enlarge them with
``python jobs/orders_payments.py --orders 100000``). Input lines are CSV, in the
order they were received (out of order by up to a minute):

    data/orders/*.csv      ts,order,customer,amount
    data/payments/*.csv    ts,payment,order,amount

``ts`` is epoch seconds. Two outputs:

* ``out/paid``: ``order,customer,amount,paid_after_s`` for every payment made
  within ``deadline`` seconds (default 30 minutes) of its order: an
  ``interval_join`` of orders with payments, ``lower=0``, ``upper=deadline``;
* ``out/unpaid``: ``order,customer,amount`` for every order without a payment
  within the deadline: a ``connect`` of both streams into a keyed co-process
  function that keeps the order and the first payment per order id in shared
  state and decides on an event-time timer at the deadline.

Both keep state only until the watermark passes the deadline, so the job runs
on unbounded input with bounded state. Kill the run at any moment and rerun
the same command: the committed output is what an uninterrupted run commits.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from onceflow import FileSink, FileSource, Job, KeyedCoProcessFunction

Order = tuple[float, str, str, float]
Payment = tuple[float, str, str, float]


def parse_order(line: str) -> Order:
    """``1772438400.5,o000017,c0042,19.90`` -> ``(ts, order, customer, amount)``."""
    ts, order, customer, amount = line.split(",")
    return float(ts), order, customer, float(amount)


def parse_payment(line: str) -> Payment:
    """``1772438460.25,p000017,o000017,19.90`` -> ``(ts, payment, order, amount)``."""
    ts, payment, order, amount = line.split(",")
    return float(ts), payment, order, float(amount)


class UnpaidOrders(KeyedCoProcessFunction):
    """Per order id: the order (first input) and its first payment (second input), decided at the deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def process_element1(self, order: Order, ctx):
        """Keep the order until its deadline."""
        ctx.value_state("order").update(order)
        ctx.timers.register_event_time(order[0] + self.deadline)

    def process_element2(self, payment: Payment, ctx):
        """Note the earliest payment (it may arrive before its order)."""
        paid = ctx.value_state("paid_at")
        if paid.value() is None or payment[0] < paid.value():
            paid.update(payment[0])
        if ctx.value_state("order").value() is None:
            # the order's deadline is at most this far away: forget the payment after it
            ctx.timers.register_event_time(payment[0] + self.deadline)

    def on_timer(self, timestamp: float, ctx):
        """At the order's deadline: emit it if unpaid; forget the order id either way."""
        order = ctx.value_state("order").value()
        paid_at = ctx.value_state("paid_at").value()
        ctx.value_state("order").clear()
        ctx.value_state("paid_at").clear()
        if order is not None and timestamp == order[0] + self.deadline:
            if paid_at is None or paid_at > timestamp:
                return [f"{order[1]},{order[2]},{order[3]:.2f}"]
        return None


def build(
    orders: str = "data/orders",
    payments: str = "data/payments",
    output: str = "out/paid",
    unpaid_output: str = "out/unpaid",
    deadline: str = "1800",
    max_delay: str = "60",
) -> Job:
    job = Job("orders-payments")
    limit, delay = float(deadline), float(max_delay)
    order_stream = (
        job.source(FileSource(orders), name="read-orders", uid="read-orders")
        .map(parse_order, name="parse-orders")
        .assign_timestamps(lambda o: o[0], max_delay=delay, name="order-time")
        .key_by(lambda o: o[1])
    )
    payment_stream = (
        job.source(FileSource(payments), name="read-payments", uid="read-payments")
        .map(parse_payment, name="parse-payments")
        .assign_timestamps(lambda p: p[0], max_delay=delay, name="payment-time")
        .key_by(lambda p: p[2])
    )
    (
        order_stream.interval_join(payment_stream, lower=0.0, upper=limit)
        .process(
            lambda o, p: [f"{o[1]},{o[2]},{o[3]:.2f},{p[0] - o[0]:.3f}"],
            name="paid",
            uid="paid",
        )
        .sink(FileSink(output), name="write-paid", uid="write-paid")
    )
    (
        order_stream.connect(payment_stream)
        .process(UnpaidOrders(limit), name="unpaid", uid="unpaid")
        .sink(FileSink(unpaid_output), name="write-unpaid", uid="write-unpaid")
    )
    return job


def make_files(directory: Path, n_orders: int, *, seed: int = 7, per_file: int = 1000) -> None:
    """Write ``orders/`` and ``payments/`` under ``directory``: CSV files in arrival order.

    An order every ~2 s over 500 customers; 85% are paid once, 1 s to 40 minutes
    later (about a quarter of those after the 30-minute deadline); arrival is up
    to 60 s behind the event (the job's ``max_delay``).
    """
    rng = random.Random(seed)
    start = 1_772_409_600.0  # 2026-03-02T00:00:00Z
    orders, payments = [], []
    t = start
    for i in range(n_orders):
        t += rng.expovariate(0.5)
        amount = round(rng.uniform(5, 200), 2)
        orders.append((round(t, 3), f"o{i:07d}", f"c{rng.randrange(500):04d}", amount))
        if rng.random() < 0.85:
            paid = round(t + rng.uniform(1, 2400), 3)
            payments.append((paid, f"p{i:07d}", f"o{i:07d}", amount))
    payments.sort()
    for name, rows in (("orders", orders), ("payments", payments)):
        received = sorted(rows, key=lambda r: r[0] + rng.uniform(0, 60))
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.csv"):
            old.unlink()
        for f in range(0, len(received), per_file):
            chunk = received[f : f + per_file]
            text = "".join(f"{r[0]},{r[1]},{r[2]},{r[3]:.2f}\n" for r in chunk)
            (folder / f"{name}-{f // per_file:04d}.csv").write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="generate data/orders and data/payments")
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--out", default="data")
    args = parser.parse_args()
    make_files(Path(args.out), args.orders)
