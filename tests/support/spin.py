"""CPU-bound stand-ins for per-record work in the test jobs (``tests/support/jobs``).

A chaos test needs runs that last long enough to be killed mid-way, with the
time spent where real work would be (on the task's thread, holding the GIL), so
the jobs busy-wait instead of sleeping. One home for that and for the jobs'
comma-separated line parsing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def spin(seconds: float) -> None:
    """Busy-wait ``seconds`` (nothing when ``seconds <= 0``)."""
    if seconds > 0:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


def csv_batch_parser(convert: Callable[[list[str]], Any], delay_s: float) -> Callable[[list[str]], list]:
    """A ``map_batches`` function: spin ``delay_s`` a line, then ``convert`` its comma-split fields."""

    def parse(lines: list[str]) -> list:
        spin(delay_s * len(lines))
        return [convert(line.split(",")) for line in lines]

    return parse
