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
    """Up to 4 kills (at least 3 mid-run) at seeded moments after a checkpoint, parallelism 2, 1,
    2, 1 (a rescale on each restore), then finish at 2: 0 lost, 0 duplicated, 0 unexpected lines.

    A run may finish before its kill lands (a busy machine, a short tail of input); the kills that
    did land must number at least 3."""
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
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
    )
    # Parallelism of each run: every restore rescales; the run after the last kill finishes at 2.
    plan = [2, 1, 2, 1, 2]
    run.rescale(plan[0])
    run.kill_at_random(
        4,
        (0.1, 1.0),
        at_least=3,
        from_checkpoint=True,
        after_each_kill=lambda: run.rescale(plan[sum(run.kills.values())]),
    )
    figures = run.check_final()
    run.assert_kills_landed_mid_run(figures["committed"])
    line = run.report(f"test_preaggregated_windows_survive_kills_and_a_rescale[{executor}]", figures)
    runs = plan[: sum(run.kills.values()) + 1]
    print(f"{line} parallelism={runs} committed_at_kills={run.committed_at_kill} repo={REPO.name}")
