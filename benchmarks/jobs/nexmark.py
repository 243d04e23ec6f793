"""The Nexmark queries as a job file: ``onceflow run benchmarks/jobs/nexmark.py -p query=q5 ...``.

``-p input=DIR`` holds the generator's ``persons/``, ``auctions/`` and
``bids/`` (``python -m benchmarks.nexmark.generator DIR N``); ``-p query=all``
runs every query, query ``qN`` committing into ``output/qN``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("benchmarks") is None:  # loaded by path from elsewhere: add the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.nexmark.queries import build as build_query
from onceflow import Job


def build(input: str = "", output: str = "", query: str = "all") -> Job:
    return build_query(query, input, output)
