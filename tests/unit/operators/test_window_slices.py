"""Sliding windows by slices give exactly the per-window operator's output: random out-of-order
streams with late records, snapshots, and restores at other parallelisms."""

from __future__ import annotations

import random

import pytest
from event_time_harness import Harness, restored_for
from test_windows import _subtask, counting

from onceflow import SlidingEventTimeWindows, TumblingEventTimeWindows, Window
from onceflow.operators.window_slices import SlicingWindowOperator, slice_length, window_operator
from onceflow.operators.windows import WindowOperator


def _per_window(assigner, lateness, kind):
    """The same counting functions in an operator that keeps one accumulator per window."""
    op = counting(assigner, lateness=lateness, kind=kind)
    return WindowOperator(
        assigner,
        kind=kind,
        timestamp_fn=op.timestamp_fn,
        allowed_lateness=lateness,
        late_tag="late",
        **_fns_of(op, kind),
    )


def _fns_of(op, kind):
    if kind == "reduce":
        return {"reduce_fn": op._add}
    if kind == "aggregate":
        return {
            "add_fn": op._add,
            "merge_fn": op._combine,
            "result_fn": op._result_fn,
            "init_fn": op._init_fn,
        }
    return {"process_fn": op._process_fn}


def _stream(rng, steps=80, keys=6):
    out, top = [], 0.0
    for i in range(steps):
        batch = []
        for _ in range(rng.randint(0, 10)):
            t = i * 0.7 + rng.uniform(-3, 0) if rng.random() > 0.1 else i * 0.7 - rng.uniform(4, 20)
            batch.append((f"k{rng.randint(0, keys - 1)}", round(t, 3), rng.randint(1, 9)))
            top = max(top, t)
        out.append(("feed", batch))
        out.append(("wm", top - 2.5))
    return out


def _run(h, steps):
    out: list = []
    for what, arg in steps:
        out += h.feed(arg) if what == "feed" else h.watermark(arg) if arg > h.op.watermark else []
    return out


def _values(out, kind):
    if kind == "process":
        return sorted(out)
    return sorted((k, w, v[2] if kind == "reduce" else v) for k, w, v in out)


@pytest.mark.parametrize(("size", "slide"), [(6.0, 2.0), (10.0, 4.0), (5.0, 3.0), (1.5, 0.25)])
@pytest.mark.parametrize("kind", ["aggregate", "reduce", "process"])
@pytest.mark.parametrize("lateness", [0.0, 3.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_slices_equal_one_accumulator_per_window(context_factory, size, slide, kind, lateness, seed):
    rng = random.Random(seed)
    steps = _stream(rng)
    sliced = Harness(
        counting(SlidingEventTimeWindows(size, slide), lateness, kind=kind),
        context_factory,
        key_fn=lambda r: r[0],
    )
    assert isinstance(sliced.op, SlicingWindowOperator)
    plain = Harness(
        _per_window(SlidingEventTimeWindows(size, slide), lateness, kind),
        context_factory,
        key_fn=lambda r: r[0],
    )
    got = _run(sliced, steps) + sliced.finish()
    expected = _run(plain, steps) + plain.finish()
    assert _values(got, kind) == _values(expected, kind), f"seed {seed}"
    assert sliced.side == plain.side
    assert sliced.op.open_windows == 0


def test_a_record_costs_one_partial_per_key_and_slice(context_factory):
    h = Harness(counting(SlidingEventTimeWindows(60.0, 1.0)), context_factory, key_fn=lambda r: r[0])
    h.feed([("a", 0.5, 1)] * 100 + [("a", 1.5, 1)] * 100)
    assert h.op.open_windows == 2  # the per-window operator would hold 61 windows
    out = h.finish()
    assert len(out) == 61 and out[0] == ("a", Window(-59.0, 1.0), (100, 100))


def test_slice_length_is_the_exact_gcd_and_refuses_too_many_slices():
    assert slice_length(10.0, 4.0) == 2.0
    assert slice_length(1.5, 0.25) == 0.25
    assert slice_length(1.0, 0.1) is None  # 0.1 is no exact binary fraction: per-window operator
    assert isinstance(
        window_operator(SlidingEventTimeWindows(1.0, 0.1), **_fns(), timestamp_fn=float), WindowOperator
    )
    assert not isinstance(
        window_operator(TumblingEventTimeWindows(1.0), **_fns(), timestamp_fn=float), SlicingWindowOperator
    )


def _fns():
    return {"kind": "reduce", "reduce_fn": max}


@pytest.mark.parametrize("kind", ["aggregate", "process"])
def test_restore_at_another_parallelism_fires_each_sliding_window_once(context_factory, kind):
    """Two subtasks checkpoint at different watermarks; their keys resume at parallelism 1 and 3,
    where the lower watermark must not fire again what the subtask further ahead already fired."""
    make = lambda: counting(SlidingEventTimeWindows(6.0, 2.0), lateness=0.0, kind=kind)  # noqa: E731
    records = [(f"k{i % 40}", float(i % 23), 1) for i in range(500)]
    reference = Harness(make(), context_factory, key_fn=lambda r: r[0])
    reference.feed(records)
    expected = sorted(reference.finish())

    olds, emitted = [], []
    for index, wm in ((0, 8.0), (1, 14.0)):
        h = Harness(make(), context_factory, key_fn=lambda r: r[0], index=index, parallelism=2)
        h.feed([r for r in records if _subtask(r[0], 2) == index])
        emitted += h.watermark(wm)
        olds.append(h.snapshot(4))
    for parallelism in (1, 3):
        out = list(emitted)
        resumed = [
            Harness(make(), context_factory, key_fn=lambda r: r[0], index=i, parallelism=parallelism,
                    restored=restored_for(olds, 4, i, parallelism))
            for i in range(parallelism)
        ]  # fmt: skip
        assert {h.op.watermark for h in resumed} == {8.0}  # the lower of the two
        for h in resumed:
            out += h.watermark(10.0) + h.finish()
            assert h.op.open_windows == 0
        assert sorted(out) == expected
