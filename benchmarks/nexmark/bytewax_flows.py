"""The benchmarked Nexmark queries (q0, q1, q5, q7) on Bytewax 0.21, for the same table.

Same files (read one after another, in name order), same parse and format
functions as the onceflow jobs; Bytewax's ``FileSink``, recovery on with a snapshot every second
(as onceflow checkpoints every second). Event times become timezone-aware
datetimes, which Bytewax's windows need.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from benchmarks.nexmark.queries import bid_line, ms, parse_bids, q1_line, to_euro

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
IN_ORDER = timedelta(seconds=10)
"""Event time never goes back in the files read in name order (as onceflow's one reader reads them),
but a Bytewax event clock also moves its watermark with the wall clock since the latest record: a
pause of a millisecond would make the next record (1 ms of event time later) late. 10 s of slack."""


def _when(bid: tuple) -> datetime:
    return EPOCH + timedelta(seconds=bid[4])


def _sequential_files(folder: Path) -> Any:
    """A Bytewax source of the lines of every file in ``folder``, one file after another.

    (Bytewax's ``DirSource`` reads the files side by side, so event time would
    jump back and forth between them and windows would drop records as late.)
    """
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    class Partition(StatefulSourcePartition):
        def __init__(self, resume: tuple[int, int] | None) -> None:
            self.files = sorted(folder.iterdir())
            self.index, self.offset = resume or (0, 0)
            self.handle: Any = None

        def next_batch(self) -> list[str]:
            while self.index < len(self.files):
                if self.handle is None:
                    self.handle = open(self.files[self.index], "rb")  # noqa: SIM115 - kept open across batches
                    self.handle.seek(self.offset)
                chunk = self.handle.readlines(65536)
                if chunk:
                    self.offset = self.handle.tell()
                    return [line.decode().rstrip("\n") for line in chunk]
                self.handle.close()
                self.handle, self.index, self.offset = None, self.index + 1, 0
            raise StopIteration

        def snapshot(self) -> tuple[int, int]:
            return (self.index, self.offset)

    class Files(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return ["all"]

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Partition:
            return Partition(resume_state)

    return Files()


def _bids(flow: Any, data: Path) -> Any:
    import bytewax.operators as op

    lines = op.input("read", flow, _sequential_files(data / "bids"))
    return op.flat_map_batch("parse", lines, parse_bids)


def _count(n: int, bid: tuple) -> int:
    return n + 1


def _window_time(item: tuple) -> datetime:
    return item[1]


def build(query: str, data: Path, out: Path) -> Any:
    """The Bytewax dataflow of ``query`` writing lines to the file ``out``."""
    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.connectors.files import FileSink
    from bytewax.dataflow import Dataflow

    flow = Dataflow(f"nexmark_{query}")
    bids = _bids(flow, data)
    if query == "q0":
        lines = op.map("format", bids, bid_line)
    elif query == "q1":
        lines = op.map("euro", bids, lambda b: q1_line(to_euro(b)))
    elif query == "q5":
        clock = win.EventClock(_when, wait_for_system_duration=IN_ORDER)
        # windows start every 2 s from -8 s (the first ones hold the first events), so window n is
        # [2n - 10, 2n) s
        sliding = win.SlidingWindower(
            timedelta(seconds=10), timedelta(seconds=2), EPOCH - timedelta(seconds=10)
        )
        counts = win.count_window("count", bids, clock, sliding, lambda b: str(b[0])).down
        # (auction, (window id, count)): the window's end stamps the second stage
        stamped = op.map(
            "stamp",
            counts,
            lambda kv: ("all", (kv[0], EPOCH + timedelta(seconds=2 * kv[1][0], microseconds=-1), kv[1])),
        )
        top_clock = win.EventClock(lambda v: v[1], wait_for_system_duration=IN_ORDER)
        tumbling = win.TumblingWindower(timedelta(seconds=2), EPOCH)
        windows = win.collect_window("top", stamped, top_clock, tumbling).down
        lines = op.flat_map("hottest", windows, _hottest)
    elif query == "q7":
        clock = win.EventClock(_when, wait_for_system_duration=IN_ORDER)
        tumbling = win.TumblingWindower(timedelta(seconds=10), EPOCH)
        keyed = op.key_on("all", bids, lambda b: "all")
        best = win.fold_window(
            "highest", keyed, clock, tumbling, lambda: (-1, []), _fold_best, _merge_best
        ).down
        lines = op.flat_map(
            "lines", best, lambda kv: [f"{kv[1][0] * 10000},{bid_line(b)}" for b in kv[1][1][1]]
        )
    else:
        msg = f"no Bytewax version of {query}"
        raise ValueError(msg)
    op.output("write", op.key_on("one-file", lines, lambda line: "all"), FileSink(out))
    return flow


def _hottest(kv: tuple) -> list:
    items = kv[1][1]
    top = max(i[2][1] for i in items)
    out = []
    for auction, _, (window, count) in items:
        if count == top:
            start = 2.0 * window - 10.0
            out.append(f"{ms(start)},{ms(start + 10.0)},{auction},{count}")
    return out


def _fold_best(acc: tuple, bid: tuple) -> tuple:
    if bid[2] > acc[0]:
        return (bid[2], [bid])
    if bid[2] == acc[0]:
        acc[1].append(bid)
    return acc


def _merge_best(a: tuple, b: tuple) -> tuple:
    if a[0] != b[0]:
        return a if a[0] > b[0] else b
    return (a[0], a[1] + b[1])


def run(query: str, data: Path, out: Path, tmp: str) -> None:
    """Run ``query`` to the end with recovery on (a snapshot every second)."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    db_dir = Path(tempfile.mkdtemp(prefix="bytewax-", dir=tmp))
    init_db_dir(db_dir, 1)
    run_main(
        build(query, data, out), epoch_interval=timedelta(seconds=1), recovery_config=RecoveryConfig(db_dir)
    )
