"""Input and plain-Python reference of the pre-aggregation tests (``preaggregated_chaos_job.py``).

Event ``i`` has key ``k{r}`` (``r`` drawn from the seed) and event time
``i * DT_MS`` minus up to ``JITTER_MS`` milliseconds, so every record is at
most ``JITTER_MS`` behind every earlier one: with ``max_delay`` above it no
record is ever late, whatever the batching, the kills or the rescales, and
every window fires exactly once. The reference is then one exact multiset of lines.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from pathlib import Path

DT_MS = 10
JITTER_MS = 400
MAX_DELAY = 0.5
TUMBLE = 5
SIZE = 6
SLIDE = 2


def events(n: int, n_keys: int, seed: int) -> list[tuple[int, str, int]]:
    """``(id, key, ms)`` in arrival order."""
    rng = random.Random(seed)
    return [(i, f"k{rng.randrange(n_keys)}", max(0, i * DT_MS - rng.randrange(JITTER_MS))) for i in range(n)]


def write_input(directory: Path, log: list[tuple[int, str, int]], files: int) -> None:
    """``files`` files of consecutive arrivals; read in name order they form the log."""
    directory.mkdir(parents=True, exist_ok=True)
    per = math.ceil(len(log) / files)
    for f in range(files):
        chunk = log[f * per : (f + 1) * per]
        (directory / f"events-{f:02d}.csv").write_text("".join(f"{i},{k},{ms}\n" for i, k, ms in chunk))


def reference(log: list[tuple[int, str, int]]) -> Counter[str]:
    """Every line the job commits, computed with integers (milliseconds)."""
    tumbling: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    sliding: dict[tuple[str, int], int] = defaultdict(int)
    everything: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for rid, key, ms in log:
        start = ms // (TUMBLE * 1000) * TUMBLE
        tumbling[key, start][0] += 1
        tumbling[key, start][1] += rid
        everything[start][0] += 1
        everything[start][1] += rid
        last = ms // (SLIDE * 1000) * SLIDE
        for s in range(last, last - SIZE, -SLIDE):
            if s * 1000 <= ms < (s + SIZE) * 1000:
                sliding[key, s] += rid
    lines = [f"T,{k},{s},{c},{t}" for (k, s), (c, t) in tumbling.items()]
    lines += [f"S,{k},{s},{t}" for (k, s), t in sliding.items()]
    lines += [f"A,{s},{c},{t}" for s, (c, t) in everything.items()]
    return Counter(lines)
