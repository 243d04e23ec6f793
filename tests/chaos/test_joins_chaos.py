"""Joins chaos: SIGKILL ``onceflow run`` of connect, interval_join and window_join at random moments,
rescaling between runs (1 -> 2 -> 3 -> 2 ...), rerun until it finishes, compare with the
plain-Python reference.

The job (``tests/support/jobs/joins_chaos_job.py``) reads two event logs, each with one
reader, and runs the three two-input operators of ``tests/support/joins_reference.py`` at the
run's parallelism: keyed state of both inputs, cleanup and bucket timers and open windows
are restored at another parallelism after every kill. Every output record is unique (an
interval pair by its two ids, a bucket or window by key and start) and, as the input never
has a late record, fixed: so after every kill the committed lines must be a subset of the
reference without duplicates, no committed line may vanish, and at the end they must equal it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, ChaosRun, Workload
from tests.support.joins_reference import JoinWorkload, letter_identity, output_line, write_events

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

WORKLOAD = JoinWorkload(n=60_000, n_keys=200)
FILES = 3
SLOW_US = 60
"""Spin per record: a full run takes several seconds, so random kills land mid-run."""
PARALLELISMS = [2, 3, 1]


class JoinsChaosRun(ChaosRun):
    """Runs of ``joins_chaos_job.py``, checked against the reference's lines."""

    def __init__(self, root: Path, workload: Workload, seed: int, *, want: set[str], **kwargs) -> None:
        self.want = want
        super().__init__(root, workload, seed, job_file=JOBS / "joins_chaos_job.py", mode="joins", **kwargs)

    def figures(self, lines: list[str], final: bool) -> dict[str, int]:
        got = Counter(lines)
        return {
            "committed": len(lines),
            "expected": len(self.want),
            "duplicates": sum(c - 1 for c in got.values()),
            "lost": len(self.want - got.keys()),
            "unexpected": len(got.keys() - self.want),
            "wrong_value": 0,
        }


@pytest.fixture(scope="module")
def joins_workload(tmp_path_factory) -> tuple[Workload, set[str]]:
    lefts, rights = WORKLOAD.events()
    directory = tmp_path_factory.mktemp("joins-chaos-input")
    write_events(directory / "left", lefts, FILES)
    write_events(directory / "right", rights, FILES)
    want = {output_line(r) for r in WORKLOAD.reference(lefts, rights)}
    return Workload(directory, 2 * WORKLOAD.n, WORKLOAD.n_keys, 2 * FILES), want


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_joins_survive_random_kills_with_rescaling(executor, joins_workload, chaos_dir, chaos_seed) -> None:
    """Kill at >= 4 random moments (seeded), each rerun at another parallelism, then finish:
    0 lost, 0 duplicated, 0 unexpected lines."""
    workload, want = joins_workload
    run = JoinsChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        want=want,
        parallelism=PARALLELISMS[0],
        executor=executor,
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
    )
    scales = [PARALLELISMS[0]]

    def rescale() -> None:
        run.rescale(PARALLELISMS[len(scales) % len(PARALLELISMS)])
        scales.append(run.parallelism)

    run.kill_at_random(5, (0.8, 2.5), at_least=4, after_each_kill=rescale)
    figures = run.check_final()
    run.assert_kills_landed_mid_run(figures["committed"])
    line = run.report(f"test_joins_survive_random_kills_with_rescaling[{executor}]", figures)
    print(f"{line} parallelism_per_run={scales} committed_at_kills={run.committed_at_kill}")


POISON = 97
"""A record (connect) or window (window_join) whose value is a multiple of it makes the function raise."""


class JoinDeadLettersChaosRun(JoinsChaosRun):
    """Runs of the poisoned join job: main lines and dead letters both checked against the reference."""

    BROKEN_ANY_TIME = (*JoinsChaosRun.BROKEN_ANY_TIME, "letter_duplicates", "letter_unexpected")
    BROKEN_AT_END = (*JoinsChaosRun.BROKEN_AT_END, "letter_duplicates", "letter_unexpected", "letters_lost")
    EQUAL_AT_END = (*JoinsChaosRun.EQUAL_AT_END, ("letters", "letters_expected"))

    def __init__(self, root: Path, workload: Workload, seed: int, *, letters: Counter, **kwargs) -> None:
        self.dead = root / "dead"
        self.want_letters = letters
        params = {"poison": str(POISON), "dead_letters": str(self.dead)}
        super().__init__(root, workload, seed, params=params, **kwargs)

    def letters(self) -> Counter:
        from onceflow.operators.files import read_committed_lines

        lines = read_committed_lines(str(self.dead)) if self.dead.exists() else []
        return Counter(letter_identity(line) for line in lines)

    def figures(self, lines: list[str], final: bool) -> dict[str, int]:
        got = self.letters()
        return {
            **super().figures(lines, final),
            "letters": sum(got.values()),
            "letters_expected": sum(self.want_letters.values()),
            "letter_duplicates": sum(c - 1 for c in got.values()),
            "letters_lost": len(self.want_letters.keys() - got.keys()),
            "letter_unexpected": len(got.keys() - self.want_letters.keys()),
        }

    def identities(self, lines: list[str]) -> set:
        return {*super().identities(lines), *(("letter", k) for k in self.letters())}


@pytest.fixture(scope="module")
def poisoned_workload(tmp_path_factory) -> tuple[Workload, set[str], Counter]:
    poisoned = dataclasses.replace(WORKLOAD, n=30_000, poison=POISON)  # half: a run stays well within its cap
    lefts, rights = poisoned.events()
    directory = tmp_path_factory.mktemp("joins-dead-letters-input")
    write_events(directory / "left", lefts, FILES)
    write_events(directory / "right", rights, FILES)
    want = {output_line(r) for r in poisoned.reference(lefts, rights)}
    letters = poisoned.letters(lefts, rights)
    assert {k[1] for k in letters if k[0] == "buckets"} == {1, 2} and any(k[0] == "window" for k in letters)
    return Workload(directory, 2 * poisoned.n, poisoned.n_keys, 2 * FILES), want, letters


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_join_dead_letters_survive_random_kills_with_rescaling(
    executor, poisoned_workload, chaos_dir, chaos_seed
) -> None:
    """connect and window_join with on_error="dead_letter" killed at up to 4 random moments (seeded)
    after a checkpoint, at least 3 of them mid-run (a run may finish before its kill lands), rescaled
    between runs: main lines and dead letters 0 lost, 0 duplicated, 0 unexpected."""
    workload, want, letters = poisoned_workload
    run = JoinDeadLettersChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        want=want,
        letters=letters,
        parallelism=PARALLELISMS[0],
        executor=executor,
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
    )
    scales = [PARALLELISMS[0]]

    def rescale() -> None:
        run.rescale(PARALLELISMS[len(scales) % len(PARALLELISMS)])
        scales.append(run.parallelism)

    run.kill_at_random(4, (0.3, 1.5), at_least=3, from_checkpoint=True, after_each_kill=rescale)
    figures = run.check_final()
    run.assert_kills_landed_mid_run(figures["committed"])
    line = run.report(f"test_join_dead_letters_survive_random_kills_with_rescaling[{executor}]", figures)
    print(
        f"{line} letters={figures['letters']} parallelism_per_run={scales} "
        f"committed_at_kills={run.committed_at_kill}"
    )
