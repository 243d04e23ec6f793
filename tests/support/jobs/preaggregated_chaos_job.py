"""The pre-aggregation chaos job: windows whose records are folded before the key exchange.

Input lines are ``id,key,ms`` (event time in whole milliseconds) in arrival
order, written by ``tests/chaos/test_preaggregated_chaos.py``. The readers run
at the run's parallelism (each reads its share of the files and folds its own
partials), parse with an optional per-record spin (so a run can be killed
mid-way) and assign timestamps with ``max_delay``; then, pre-aggregated:

* ``tumbling``: keyed tumbling windows of ``tumble`` seconds, aggregate
  ``(count, sum of ids)``: lines ``T,key,start,count,sum``;
* ``sliding``: keyed sliding windows of ``size`` every ``slide`` seconds, a
  reduce keeping the sum of ids: lines ``S,key,start,sum``;
* ``all``: ``window_all`` tumbling windows, aggregate ``(count, sum of ids)``:
  lines ``A,start,count,sum``.

Window starts are written as whole seconds. All go to one ``FileSink``.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job, SlidingEventTimeWindows, TumblingEventTimeWindows
from tests.support.spin import csv_batch_parser


def _fields(f: list[str]) -> tuple[int, str, float]:
    return int(f[0]), f[1], int(f[2]) / 1000


def _count(acc, event):
    return (acc[0] + 1, acc[1] + event[0])


def _merge(a, b):
    return (a[0] + b[0], a[1] + b[1])


def _sum_ids(a, b):
    return (a[0] + b[0], a[1], max(a[2], b[2]))


def build(
    input: str = "",
    output: str = "",
    delay_us: str = "0",
    max_delay: str = "0.5",
    tumble: str = "5.0",
    size: str = "6.0",
    slide: str = "2.0",
    mode: str = "preaggregated",
) -> Job:
    job = Job("chaos-preaggregated")
    events = (
        job.source(FileSource(input, read_size=4096), name="read", uid="read")
        .map_batches(csv_batch_parser(_fields, float(delay_us) / 1e6), name="parse", uid="parse")
        .assign_timestamps(lambda e: e[2], max_delay=float(max_delay), name="ts", uid="ts")
    )
    keyed = events.key_by(lambda e: e[1])
    tumbling = (
        keyed.window(TumblingEventTimeWindows(float(tumble)))
        .aggregate(_count, _merge, lambda acc: acc, lambda: (0, 0), name="tumbling", uid="tumbling")
        .map(lambda r: f"T,{r[0]},{round(r[1].start)},{r[2][0]},{r[2][1]}", name="tumbling-lines")
    )
    sliding = (
        keyed.window(SlidingEventTimeWindows(float(size), float(slide)))
        .reduce(_sum_ids, name="sliding", uid="sliding")
        .map(lambda r: f"S,{r[0]},{round(r[1].start)},{r[2][0]}", name="sliding-lines")
    )
    everything = (
        events.window_all(TumblingEventTimeWindows(float(tumble)))
        .aggregate(_count, _merge, lambda acc: acc, lambda: (0, 0), name="all", uid="all")
        .map(lambda r: f"A,{round(r[0].start)},{r[1][0]},{r[1][1]}", name="all-lines")
    )
    tumbling.union(sliding, everything).sink(FileSink(output), name="write", uid="write")
    return job
