"""Tumbling, sliding and session windows over 200,000 out-of-order events equal a plain-Python
reference: uninterrupted, with checkpoints every 100 ms, and with a crash and restore, at
parallelism 1 and 2, under both executors.

What is deterministic, and how the input is built so the reference can be exact
------------------------------------------------------------------------------
The watermark a record meets depends on the batches before it (a timestamp
assigner raises the watermark after each batch) and, with several readers, on
how their channels interleave. So the input is built with margins that make
every record's fate independent of both:

* on time (97%): ``ts = i * DT - U(0, MAX_DELAY)``: at most ``MAX_DELAY`` behind
  every earlier record, so never behind the watermark of its own reader: never
  late, at any parallelism, whatever the batching;
* late within the lateness (1.5%): ``MAX_DELAY + U(0, LATENESS - 0.1)`` behind:
  its window may already have fired (then it fires again with the update) but
  is never purged, so the record always counts;
* far too late (1.5%): 30-60 s behind, more than window size + lateness + one
  batch of event time: dropped to the ``late`` side output in every run. For
  sessions such a record is also isolated (no record of its key within one gap),
  so it cannot merge into a live session.

Allowed lateness makes the *number* of emissions per window depend on batching
(an early firing plus a re-firing, or one firing), so the test compares each
window's final emission: the one with the highest count (a re-firing always
adds a record), and for sessions only windows not contained in a larger
emitted session of the key (a late record that bridges two fired sessions
supersedes them, as in Flink; no retraction). Exact duplicate emissions are
counted and must be 0. The source is read by one subtask (a single ordered
stream of event time, as in ``jobs/sessionize.py``) and the windows run at the
test's parallelism; each window subtask then sees one FIFO channel.
"""

from __future__ import annotations

import collections

import pytest

from onceflow import EventTimeSessionWindows, Job, SlidingEventTimeWindows, TumblingEventTimeWindows
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Crash, TestingSink, TestingSource
from tests.support.windows_reference import EventLog, window_contents

SEED = 20261127
N = 200_000
N_KEYS = 200
DT = 0.01
MAX_DELAY = 0.5
LATENESS = 5.0
TUMBLE = 5.0
SLIDE_SIZE, SLIDE_STEP = 10.0, 5.0
GAP = 3.0
BATCH = 200


# -- input and reference (tests/support/windows_reference.py) ------------------------------

HORIZON = SLIDE_SIZE + LATENESS + 2 * BATCH * DT + 2 * MAX_DELAY + 1.0
"""Far-too-late records start after this much event time: later than window size + lateness + a batch."""
LOG = EventLog(
    n=N,
    n_keys=N_KEYS,
    seed=SEED,
    first_late=int(HORIZON / DT) + 7000,
    late_step=67,  # about 1.5%, spread out
    dt=DT,
    max_delay=MAX_DELAY,
    lateness=LATENESS,
    gap=GAP,
)


def with_crash(events: list, at: float) -> list:
    items: list = list(events)
    items.insert(int(len(items) * at), Crash())
    return items


def final_emissions(emitted: list[tuple]) -> tuple[dict[tuple, tuple[int, int]], int]:
    """Each window's last emission (highest count), superseded sessions left out; and duplicates."""
    duplicates = len(emitted) - len(set(emitted))
    best: dict[tuple, tuple[int, int]] = {}
    for kind, key, start, end, count, total in emitted:
        k = (kind, key, start, end)
        if k not in best or count > best[k][0]:
            best[k] = (count, total)
    sessions: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for kind, key, start, end in best:
        if kind == "session":
            sessions[key].append((start, end))
    for key, spans in sessions.items():
        for start, end in spans:
            if any(s <= start and end <= e and (s, e) != (start, end) for s, e in spans):
                del best[("session", key, start, end)]
    return best, duplicates


# -- the job --------------------------------------------------------------------------------


def _count(acc, event):
    return (acc[0] + 1, acc[1] + event[0])


def _merge(a, b):
    return (a[0] + b[0], a[1] + b[1])


def windows_job(items, sink: TestingSink, late: TestingSink) -> Job:
    job = Job("windows-equivalence")
    events = job.source(
        TestingSource(items, batch_size=BATCH), name="src", uid="src", parallelism=1
    ).assign_timestamps(lambda e: e[2], max_delay=MAX_DELAY, name="ts", uid="ts", parallelism=1)
    assigners = {
        "tumbling": TumblingEventTimeWindows(TUMBLE),
        "sliding": SlidingEventTimeWindows(SLIDE_SIZE, SLIDE_STEP),
        "session": EventTimeSessionWindows(gap=GAP),
    }
    outputs, lates = [], []
    for kind, assigner in assigners.items():
        windowed = (
            events.key_by(lambda e: e[1]).window(assigner).allowed_lateness(LATENESS).late_records("late")
        )
        if kind == "session":  # the full-window process function, the others incrementally
            fired = windowed.process(
                lambda key, w, values, kind=kind: [
                    (kind, key, w.start, w.end, len(values), sum(v[0] for v in values))
                ],
                name=kind,
                uid=kind,
            )
            outputs.append(fired)
        else:
            fired = windowed.aggregate(_count, _merge, lambda acc: acc, lambda: (0, 0), name=kind, uid=kind)
            outputs.append(
                fired.map(lambda r, kind=kind: (kind, r[0], r[1].start, r[1].end, *r[2]), name=f"{kind}-out")
            )
        lates.append(fired.side_output("late").map(lambda e, kind=kind: (kind, e[0]), name=f"{kind}-late"))
    outputs[0].union(*outputs[1:]).sink(sink, name="windows", uid="windows")
    lates[0].union(*lates[1:]).sink(late, name="late", uid="late")
    return job


@pytest.fixture(scope="module")
def workload():
    events, dropped = LOG.events()
    expected = window_contents(events, dropped, tumble=TUMBLE, gap=GAP, slide=(SLIDE_SIZE, SLIDE_STEP))
    kinds = collections.Counter(k[0] for k in expected)
    assert min(kinds.values()) > 5_000, kinds
    assert 2_000 < len(dropped) < 4_000
    return events, dropped, expected


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("mode", ["uninterrupted", "checkpoints", "crash"])
def test_windows_commit_the_reference(workload, parallelism, mode, executor):
    events, dropped, expected = workload
    sink, late = TestingSink(), TestingSink()
    items = with_crash(events, 0.6) if mode == "crash" else events
    interval = 3600 if mode == "uninterrupted" else 0.02
    result = run_job_for_test(
        windows_job(items, sink, late),
        parallelism=parallelism,
        checkpoint_interval=interval,
        executor=executor,
        batch_size=BATCH,
    )
    if mode == "uninterrupted":
        assert result.checkpoints_completed == 1
    else:
        assert result.checkpoints_completed > 3, result
    assert result.restarts == (1 if mode == "crash" else 0)

    got, duplicates = final_emissions(sink.committed)
    assert duplicates == 0
    missing = expected.keys() - got.keys()
    unexpected = got.keys() - expected.keys()
    wrong = [k for k in expected.keys() & got.keys() if got[k] != expected[k]]
    assert (len(missing), len(unexpected), len(wrong)) == (0, 0, 0), (
        sorted(missing)[:3],
        sorted(unexpected)[:3],
        [(k, got[k], expected[k]) for k in wrong[:3]],
    )
    late_ids = collections.Counter(late.committed)
    assert all(c == 1 for c in late_ids.values())
    for kind in ("tumbling", "sliding", "session"):
        assert {rid for k, rid in late_ids if k == kind} == dropped, kind
    assert sink.pending == {} and late.pending == {}
