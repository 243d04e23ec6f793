"""The scaling job: a few microseconds of Python per record, then a keyed running count.

A job file (``build(**params)``) so that the process executor's workers can
rebuild it: ``onceflow run benchmarks/jobs/scaling.py -p n=500000 --executor process``.
The source generates its numbers (nothing to ship to workers), ``spin`` costs
about 3 µs per call, and the sink only counts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("benchmarks") is None:  # loaded by path from elsewhere: add the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import CountingSink, RangeSource, add_counts, int_key, spin
from onceflow import Job


def build(n: str = "500000", shuffle: str = "1") -> Job:
    """``shuffle=1``: spin, key_by, running count (records cross processes); ``0``: spin only."""
    job = Job("bench-scaling")
    stream = job.source(RangeSource(int(n)), name="numbers", uid="numbers").map(spin, name="spin")
    if shuffle == "1":
        stream = stream.key_by(int_key).reduce(add_counts, name="count", uid="count")
    stream.sink(CountingSink(), name="count-sink", uid="count-sink")
    return job
