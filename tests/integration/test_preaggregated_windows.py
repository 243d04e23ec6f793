"""Pre-aggregated windows (a ``WindowCombiner`` before the key exchange) commit the plain-Python reference.

Keyed tumbling aggregate, keyed sliding reduce (slices) and ``window_all``
aggregate, read by as many readers as the run's parallelism, at parallelism 1
and 2 with a checkpoint every 20 ms (so barriers flush partials all through
the run), and a chained combiner (the only consumer of its input). Kills and
rescales: ``tests/chaos/test_preaggregated_chaos.py``.
"""

from __future__ import annotations

import pytest

from onceflow import FileSink, FileSource, Job, TumblingEventTimeWindows, read_committed_lines
from onceflow.engine.plan import build_plan
from onceflow.engine.testing import run_job_for_test
from tests.support.chaos import JOBS
from tests.support.preaggregated_reference import MAX_DELAY, events, reference, write_input

SEED = 77


def _job(input_dir, out):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "preaggregated_chaos_job", JOBS / "preaggregated_chaos_job.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(input=str(input_dir), output=str(out), max_delay=str(MAX_DELAY))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_preaggregated_windows_commit_the_reference(tmp_path, parallelism):
    log = events(12_000, 20, SEED)
    write_input(tmp_path / "in", log, files=4)
    job = _job(tmp_path / "in", tmp_path / "out")
    methods = [spec.method for spec in job.graph.specs()]
    assert methods.count("window_combine") == 3, methods
    run_job_for_test(job, parallelism=parallelism, checkpoint_interval=0.02)
    got = sorted(read_committed_lines(str(tmp_path / "out")))
    want = reference(log)
    assert len(got) == len(set(got)), f"duplicates (seed {SEED})"
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"seed {SEED}: missing {missing[:5]}, unexpected {unexpected[:5]}"


def _max_price(acc, bid):
    return bid if bid[1] > acc[1] else acc


def test_a_combiner_chains_to_its_only_input_and_pre_aggregate_false_leaves_it_out(tmp_path):
    log = events(6_000, 10, SEED)
    write_input(tmp_path / "in", log, files=2)
    outs = {}
    for pre in (True, False):
        job = Job(f"chained-{pre}")
        (
            job.source(FileSource(str(tmp_path / "in")), name="read")
            .map_batches(
                lambda lines: [
                    tuple(int(x) if i != 1 else x for i, x in enumerate(line.split(","))) for line in lines
                ]
            )
            .assign_timestamps(lambda e: e[2] / 1000, max_delay=MAX_DELAY)
            .key_by(lambda e: e[1])
            .window(TumblingEventTimeWindows(5.0))
            .reduce(lambda a, b: a if (a[0] * 7919) % 1000 >= (b[0] * 7919) % 1000 else b, pre_aggregate=pre)
            .map(lambda r: f"{r[0]},{round(r[1].start)},{r[2][0]}")
            .sink(FileSink(str(tmp_path / f"out-{pre}")), name="write")
        )
        plan = build_plan(job.graph, default_parallelism=2)
        chains = [[op.method for op in task.operators] for task in plan.tasks]
        combined = any("window_combine" in chain for chain in chains)
        assert combined is pre, chains
        if pre:
            head = next(chain for chain in chains if chain[0].startswith("source"))
            assert head[-1] == "window_combine", chains  # chained to the reader: no extra hop
        run_job_for_test(job, parallelism=2, checkpoint_interval=0.02)
        outs[pre] = sorted(read_committed_lines(str(tmp_path / f"out-{pre}")))
    assert outs[True] == outs[False]
    assert len(outs[True]) > 100
