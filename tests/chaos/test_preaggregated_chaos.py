"""Pre-aggregated windows under SIGKILL: kills at random moments (seeded), a rescale between runs,
then the committed output equals the plain-Python reference exactly.

The job (``tests/support/jobs/preaggregated_chaos_job.py``) folds records per key and slice in
every reader subtask before the key exchange (keyed tumbling aggregate, keyed sliding reduce,
``window_all`` aggregate) and flushes the partials at every barrier (every 0.1 s). No record is
ever late (``tests/support/preaggregated_reference.py``), so every window fires once: a partial
lost at a kill shows as a wrong count or sum, one counted twice as a wrong sum or a duplicate.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, REPO, ChaosRun, Workload
from tests.support.preaggregated_reference import MAX_DELAY, events, reference, write_input

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

N = 60_000
N_KEYS = 20
N_FILES = 4
SLOW_US = 60
"""Spin per record: a full run takes several seconds, so random kills land mid-run."""


class PreaggregatedRun(ChaosRun):
    """Runs of ``preaggregated_chaos_job.py``, checked against the exact reference."""

    EQUAL_AT_END = ()

    def __init__(self, root: Path, workload: Workload, seed: int, *, want: Counter, **kwargs) -> None:
        self.want = want
        super().__init__(
            root,
            workload,
            seed,
            job_file=JOBS / "preaggregated_chaos_job.py",
            params={"max_delay": str(MAX_DELAY)},
            **kwargs,
        )

    def figures(self, lines: list[str], final: bool) -> dict[str, int]:
        got = Counter(lines)
        return {
            "committed": len(lines),
            "expected": sum(self.want.values()),
            "duplicates": sum(c - 1 for c in got.values() if c > 1),
            "unexpected": sum(1 for line in got if line not in self.want),
            "lost": sum(1 for line in self.want if line not in got),
            "wrong_value": 0,
        }

    def identities(self, lines: list[str]) -> set:
        return set(lines)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_preaggregated_windows_survive_kills_and_a_rescale(executor, chaos_dir, chaos_seed) -> None:
    """>= 4 kills at seeded random moments, parallelism 2, 1, 2, 1 (a rescale on each restore), then
    finish at 2: 0 lost, 0 duplicated, 0 unexpected lines."""
    log = events(N, N_KEYS, chaos_seed)
    directory = chaos_dir / "input"
    write_input(directory, log, N_FILES)
    want = reference(log)
    run = PreaggregatedRun(
        chaos_dir / "runs",
        Workload(directory, N, N_KEYS, N_FILES),
        chaos_seed,
        want=want,
        parallelism=2,
        executor=executor,
        mode="preaggregated",
        delay_us=SLOW_US,
    )
    plan = [2, 1, 2, 1]
    for parallelism in plan:
        run.rescale(parallelism)
        outcome = run.run(kill_after=run.rng.uniform(0.1, 1.0), after=run.checkpoint_completed_from_now())
        run.expect_killed(outcome)
    run.rescale(2)
    run.run_to_completion()
    figures = run.check_final()
    final = figures["committed"]
    mid_run = [c for c in run.committed_at_kill if 0 < c < final]
    assert len(mid_run) >= 3, f"kills did not land mid-run: {run.committed_at_kill} of {final}"
    line = run.report(f"test_preaggregated_windows_survive_kills_and_a_rescale[{executor}]", figures)
    print(f"{line} parallelism={plan}+[2] committed_at_kills={run.committed_at_kill} repo={REPO.name}")
