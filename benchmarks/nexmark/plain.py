"""Plain-Python Nexmark: each benchmarked query as a loop over the same files, the baseline.

A script a user would write without an engine: read each file, parse the
lines with the same functions the jobs use (``queries.parse_bids``), compute,
write the output lines to one file. No checkpoints, no recovery.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.nexmark.queries import bid_line, ms, parse_bids, q1_line, to_euro


def _bid_batches(data: Path) -> Any:
    for path in sorted((data / "bids").iterdir()):
        with open(path, encoding="utf-8") as f:
            while True:
                lines = f.readlines(65536)
                if not lines:
                    break
                yield parse_bids([line.rstrip("\n") for line in lines])


def _each_bid(data: Path, out: Path, line: Any) -> int:
    """Write ``line(bid)`` for every bid, a batch of lines at a time."""
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for bids in _bid_batches(data):
            f.write("".join(f"{line(b)}\n" for b in bids))
            n += len(bids)
    return n


def q0(data: Path, out: Path) -> int:
    return _each_bid(data, out, bid_line)


def _euro_line(b: tuple) -> str:
    return q1_line(to_euro(b))


def q1(data: Path, out: Path) -> int:
    return _each_bid(data, out, _euro_line)


def q5(data: Path, out: Path) -> int:
    """Count bids per auction in every 10 s window (starting every 2 s) it falls in; the top ones."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for bids in _bid_batches(data):
        for b in bids:
            start = int(b[4] // 2.0) * 2
            for k in range(5):
                counts[start - 2 * k][b[0]] += 1
    lines = []
    for start in sorted(counts):
        per_auction = counts[start]
        top = max(per_auction.values())
        lines += [f"{ms(start)},{ms(start + 10.0)},{a},{c}\n" for a, c in per_auction.items() if c == top]
    Path(out).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def q7(data: Path, out: Path) -> int:
    """The highest bids of every 10 s window."""
    best: dict[int, tuple[int, list]] = {}
    for bids in _bid_batches(data):
        for b in bids:
            w = int(b[4] // 10.0)
            cur = best.get(w)
            if cur is None or b[2] > cur[0]:
                best[w] = (b[2], [b])
            elif b[2] == cur[0]:
                cur[1].append(b)
    lines = [f"{w * 10000},{bid_line(b)}\n" for w in sorted(best) for b in best[w][1]]
    Path(out).write_text("".join(lines), encoding="utf-8")
    return len(lines)


PLAIN = {"q0": q0, "q1": q1, "q5": q5, "q7": q7}
