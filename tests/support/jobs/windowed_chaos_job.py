"""The windowed chaos job: event-time windows and timers over an out-of-order event log.

Input lines are ``id,key,ts`` (``ts`` a float written with ``repr``, so it reads
back exactly) in arrival order, written by ``tests/chaos/test_windowed_chaos.py``.
One reader (parallelism 1) parses them with an optional per-record spin (so a
run can be killed mid-way) and assigns timestamps with ``max_delay``; keyed by
``key``, at the run's parallelism:

* ``tumbling``: tumbling windows of ``tumble`` seconds with allowed lateness,
  aggregating ``(count, sum of ids)``: lines ``W,tumbling,key,start,end,count,sum``;
* ``session``: session windows with ``gap`` and allowed lateness, a full-window
  process function: lines ``W,session,key,start,end,count,sum``;
* ``timers``: a keyed process function that registers one event-time timer per
  record at ``ts + timer_after`` (unless that is already behind the watermark)
  and keeps the record id in map state until the timer fires: lines
  ``T,id,key,time``;
* records too late for a window go to its side output: lines ``L,kind,id``.

All four streams go to one ``FileSink``.
"""

from __future__ import annotations

from onceflow import (
    EventTimeSessionWindows,
    FileSink,
    FileSource,
    Job,
    KeyedProcessFunction,
    TumblingEventTimeWindows,
)
from tests.support.spin import csv_batch_parser


def _fields(f: list[str]) -> tuple[int, str, float]:
    return int(f[0]), f[1], float(f[2])


class ExpireLater(KeyedProcessFunction):
    """One timer per record at ``ts + after``; the timer emits the record's id exactly once."""

    def __init__(self, after: float) -> None:
        self.after = after

    def process_element(self, event, ctx):
        t = ctx.timestamp + self.after
        if t <= ctx.current_watermark:
            return None  # far too late: its timer would be in the past
        ctx.map_state("pending").put(t, event[0])
        ctx.timers.register_event_time(t)
        return None

    def on_timer(self, timestamp, ctx):
        pending = ctx.map_state("pending")
        rid = pending.get(timestamp)
        pending.remove(timestamp)
        return [f"T,{rid},{ctx.key},{timestamp!r}"]


def _count(acc, event):
    return (acc[0] + 1, acc[1] + event[0])


def _merge(a, b):
    return (a[0] + b[0], a[1] + b[1])


def _session_line(key, window, events):
    return [f"W,session,{key},{window.start!r},{window.end!r},{len(events)},{sum(e[0] for e in events)}"]


def build(
    input: str = "",
    output: str = "",
    delay_us: str = "0",
    max_delay: str = "0.5",
    lateness: str = "5.0",
    tumble: str = "5.0",
    gap: str = "3.0",
    timer_after: str = "15.0",
    mode: str = "windows",
) -> Job:
    job = Job("chaos-windows")
    events = (
        job.source(FileSource(input, read_size=4096), name="read", uid="read", parallelism=1)
        .map_batches(
            csv_batch_parser(_fields, float(delay_us) / 1e6), name="parse", uid="parse", parallelism=1
        )
        .assign_timestamps(lambda e: e[2], max_delay=float(max_delay), name="ts", uid="ts", parallelism=1)
    )
    keyed = events.key_by(lambda e: e[1])
    tumbling = (
        keyed.window(TumblingEventTimeWindows(float(tumble)))
        .allowed_lateness(float(lateness))
        .late_records("late")
        .aggregate(_count, _merge, lambda acc: acc, lambda: (0, 0), name="tumbling", uid="tumbling")
    )
    sessions = (
        keyed.window(EventTimeSessionWindows(gap=float(gap)))
        .allowed_lateness(float(lateness))
        .late_records("late")
        .process(_session_line, name="session", uid="session")
    )
    timers = keyed.process(ExpireLater(float(timer_after)), name="timers", uid="timers")
    lines = tumbling.map(
        lambda r: f"W,tumbling,{r[0]},{r[1].start!r},{r[1].end!r},{r[2][0]},{r[2][1]}", name="tumbling-lines"
    ).union(
        sessions,
        timers,
        tumbling.side_output("late").map(lambda e: f"L,tumbling,{e[0]}", name="tumbling-late"),
        sessions.side_output("late").map(lambda e: f"L,session,{e[0]}", name="session-late"),
    )
    lines.sink(FileSink(output), name="write", uid="write")
    return job
