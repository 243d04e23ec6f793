"""``jobs/orders_payments.py``: paid and unpaid orders equal a plain-Python reference, p1 and p2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from onceflow.engine.testing import run_job_for_test
from onceflow.operators.files import read_committed_lines

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 1800.0


def load_job():
    spec = importlib.util.spec_from_file_location("orders_payments", REPO / "jobs" / "orders_payments.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(directory: Path) -> tuple[set[str], set[str]]:
    orders = {}
    payments: dict[str, list[float]] = {}
    for path in sorted((directory / "orders").glob("*.csv")):
        for line in path.read_text().splitlines():
            ts, order, customer, amount = line.split(",")
            orders[order] = (float(ts), customer, float(amount))
    for path in sorted((directory / "payments").glob("*.csv")):
        for line in path.read_text().splitlines():
            ts, _, order, _ = line.split(",")
            payments.setdefault(order, []).append(float(ts))
    paid, unpaid = set(), set()
    for order, (ts, customer, amount) in orders.items():
        in_time = [p for p in payments.get(order, []) if ts <= p <= ts + DEADLINE]
        for p in in_time:
            paid.add(f"{order},{customer},{amount:.2f},{p - ts:.3f}")
        if not in_time:
            unpaid.add(f"{order},{customer},{amount:.2f}")
    return paid, unpaid


@pytest.mark.parametrize("parallelism", [1, 2])
def test_orders_payments_commits_paid_and_unpaid_orders(tmp_path, parallelism, executor) -> None:
    job_module = load_job()
    job_module.make_files(tmp_path / "in", 3000, per_file=400)
    want_paid, want_unpaid = reference(tmp_path / "in")
    assert len(want_paid) > 1500 and len(want_unpaid) > 600
    paid, unpaid = tmp_path / "paid", tmp_path / "unpaid"
    job = job_module.build(
        orders=str(tmp_path / "in" / "orders"),
        payments=str(tmp_path / "in" / "payments"),
        output=str(paid),
        unpaid_output=str(unpaid),
    )
    run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), parallelism=parallelism, executor=executor)
    got_paid, got_unpaid = read_committed_lines(str(paid)), read_committed_lines(str(unpaid))
    assert len(got_paid) == len(set(got_paid)) and len(got_unpaid) == len(set(got_unpaid))
    assert set(got_paid) == want_paid
    assert set(got_unpaid) == want_unpaid
