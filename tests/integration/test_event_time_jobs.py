"""Event-time jobs end to end: bad timestamps, an idle split, timers and processing-time windows
across a crash and restore, side outputs; under both executors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from onceflow import (
    Job,
    KeyedProcessFunction,
    OperatorError,
    Source,
    SourceReader,
    TumblingEventTimeWindows,
    TumblingProcessingTimeWindows,
)
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Crash, Pause, TestingSink, TestingSource


def test_a_bad_timestamp_fails_the_job_naming_the_operator_and_the_record(executor):
    items = [{"user": "ann", "ts": float(i)} for i in range(100)] + [{"user": "bob", "ts": "noon"}]
    job = Job("bad-ts")
    (
        job.source(TestingSource(items, batch_size=10), name="src")
        .assign_timestamps(lambda c: c["ts"], name="stamp")
        .key_by(lambda c: c["user"])
        .window(TumblingEventTimeWindows(10.0))
        .reduce(lambda a, b: a, name="first")
        .sink(TestingSink(), name="out")
    )
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, executor=executor, restart_attempts=0)
    message = str(info.value)
    assert "'stamp'" in message and "TypeError" in message
    assert "{'user': 'bob', 'ts': 'noon'}" in message


# -- an idle split does not hold back event time forever ------------------------------------


class _TwoSplits(Source):
    """Split 0 ticks event time forward; split 1 sends one record and then nothing until the
    first window result exists (``marker``) or ``deadline`` seconds passed."""

    def __init__(self, marker: str, deadline: float) -> None:
        self.marker = marker
        self.deadline = deadline

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        return _TwoSplitsReader(self, subtask_index)


class _TwoSplitsReader(SourceReader):
    def __init__(self, source: _TwoSplits, index: int) -> None:
        self.source = source
        self.index = index
        self.sent = 0
        self.started = time.monotonic()

    def restore_state(self, restored) -> None:
        for old, state in restored.operator_states:
            if old == self.index:
                self.sent = state

    def poll_batch(self, max_records: int) -> list | None:
        done = Path(self.source.marker).exists()
        if self.index == 0:
            if done or self.sent >= 100_000:
                return None
            time.sleep(0.001)
            self.sent += 1
            return [("a", float(self.sent))]
        if self.sent == 0:
            self.sent = 1
            return [("b", 0.0)]
        if done:
            Path(self.source.marker + ".quiet-split-saw-it").touch()
            return None
        if time.monotonic() - self.started > self.source.deadline:
            return None
        time.sleep(0.001)
        return []

    def snapshot_state(self, checkpoint_id: int) -> int:
        return self.sent


def test_an_idle_split_does_not_block_windows_forever(tmp_path, executor):
    marker = str(tmp_path / "first-window")

    def note(result):
        Path(marker).touch()
        return result

    sink = TestingSink()
    job = Job("idle")
    (
        job.source(_TwoSplits(marker, deadline=20.0), name="src", parallelism=2)
        .assign_timestamps(lambda r: r[1], max_delay=1.0, idle_timeout=0.2, name="stamp", parallelism=2)
        .key_by(lambda r: r[0])
        .window(TumblingEventTimeWindows(10.0))
        .aggregate(lambda n, r: n + 1, lambda a, b: a + b, lambda n: n, lambda: 0, name="count")
        .map(note, name="note")
        .sink(sink, name="out")
    )
    started = time.monotonic()
    run_job_for_test(job, executor=executor, parallelism=2, checkpoint_interval=0.2)
    # windows fired while split 1 was quiet: that is what ended it, long before its deadline
    assert Path(marker + ".quiet-split-saw-it").exists()
    assert time.monotonic() - started < 15.0
    results = sink.committed
    assert ("b", (0.0, 10.0), 1) in [(k, tuple(w), n) for k, w, n in results]
    assert any(k == "a" and n == 10 for k, _, n in results)


# -- keyed process function timers across a crash ------------------------------------------


class _Expire(KeyedProcessFunction):
    def process_element(self, value, ctx):
        ctx.value_state("n").update((ctx.value_state("n").value() or 0) + 1)
        ctx.map_state("ids").put(ctx.timestamp + 5.0, value[0])
        ctx.timers.register_event_time(ctx.timestamp + 5.0)
        if value[0] % 100 == 0:
            ctx.output("hundreds", value[0])

    def on_timer(self, timestamp, ctx):
        rid = ctx.map_state("ids").get(timestamp)
        ctx.map_state("ids").remove(timestamp)
        return [(rid, ctx.key, timestamp)]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_each_timer_fires_exactly_once_across_a_crash_and_restore(parallelism, executor):
    n = 20_000
    events = [(i, f"k{i % 37}", i * 0.01) for i in range(n)]
    items: list = []
    for i, e in enumerate(events):
        if i and i % 2000 == 0:
            items.append(Pause(0.02))
        if i == 12_000:
            items.append(Crash())
        items.append(e)
    sink, hundreds = TestingSink(), TestingSink()
    job = Job("timers")
    fired = (
        job.source(TestingSource(items, batch_size=100), name="src", parallelism=1)
        .assign_timestamps(lambda e: e[2], name="stamp", parallelism=1)
        .key_by(lambda e: e[1])
        .process(_Expire(), name="expire", uid="expire")
    )
    fired.sink(sink, name="out")
    fired.side_output("hundreds").sink(hundreds, name="hundreds")
    result = run_job_for_test(job, executor=executor, parallelism=parallelism, checkpoint_interval=0.02)
    assert result.restarts == 1 and result.checkpoints_completed > 2
    assert sorted(sink.committed) == sorted((i, k, t + 5.0) for i, k, t in events)
    assert sorted(hundreds.committed) == list(range(0, n, 100))


# -- processing-time windows ---------------------------------------------------------------


def test_processing_time_windows_count_every_record_once_across_a_crash(executor):
    n = 5_000
    items: list = []
    for i in range(n):
        if i and i % 500 == 0:
            items.append(Pause(0.05))
        if i == 3_000:
            items.append(Crash())
        items.append(i)
    sink = TestingSink()
    job = Job("processing-time")
    (
        job.source(TestingSource(items, batch_size=50), name="src")
        .key_by(lambda i: i % 3)
        .window(TumblingProcessingTimeWindows(0.1))
        .aggregate(lambda acc, i: acc + (i,), lambda a, b: a + b, lambda acc: acc, tuple, name="batch")
        .sink(sink, name="out")
    )
    result = run_job_for_test(job, executor=executor, parallelism=2, checkpoint_interval=0.05)
    assert result.restarts == 1
    windows = sink.committed
    assert sorted(i for _, _, ids in windows for i in ids) == list(range(n))
    assert len({w for _, w, _ in windows}) > 3  # the clock, not the data, cut the windows


class _TimerSideOnly(KeyedProcessFunction):
    """Timers that emit only to a side output (no main output at all)."""

    def process_element(self, value, ctx):
        ctx.timers.register_event_time(ctx.timestamp + 1.0)

    def on_timer(self, timestamp, ctx):
        ctx.output("fired", (ctx.key, timestamp))


def test_side_outputs_of_timers_without_main_output_are_emitted(executor):
    events = [(f"k{i % 5}", float(i)) for i in range(200)]
    fired = TestingSink()
    job = Job("timer-side-only")
    out = (
        job.source(TestingSource(events, batch_size=10), name="src")
        .assign_timestamps(lambda e: e[1], name="stamp")
        .key_by(lambda e: e[0])
        .process(_TimerSideOnly(), name="timers")
    )
    out.sink(TestingSink(), name="main")
    out.side_output("fired").sink(fired, name="fired")
    run_job_for_test(job, executor=executor, checkpoint_interval=0.01)
    assert sorted(fired.committed) == sorted((k, t + 1.0) for k, t in events)
