"""Dead letters under SIGKILL: main output exact for the good records, each bad record a dead letter once.

The job (``tests/support/jobs/dead_letters_job.py``) reads 50,000 lines in 4
files (all lines of a key in one file, in id order), of which a seeded few
hundred are malformed; ``parse`` (``on_error="dead_letter"``) sends those to
the dead-letter sink, and the keyed ``count`` (``stateful_map``, also
``on_error="dead_letter"``) raises for records whose value is a multiple of
``POISON``, which must leave their key's count untouched. Every run is killed
with SIGKILL at a random moment (seeded) until at least 6 kills, then the job
runs to the end.

Oracle (plain Python): the running count per key over the good records, one
line ``id,key,count`` each; one dead letter per malformed line naming
operator ``parse``, the file and the line number and the line's repr; one per
poisoned record naming operator ``count``. After every kill: no line or dead
letter committed twice, none that the oracle lacks, nothing committed before
gone. At the end: both outputs exactly the oracle.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, REPO, ChaosRun, Workload

pytestmark = pytest.mark.chaos

N = 50_000
N_KEYS = 500
N_FILES = 4
N_BAD = 300
POISON = 1009
SLOW_US = 60
"""Spin per record in ``parse``: a full run takes about 4 s, so random kills land mid-run."""


def value_of(rid: int) -> int:
    return (rid * 7919) % 10007


@dataclass
class Oracle:
    main: dict[str, str]
    """Record id -> ``id,key,count`` line."""
    letters: dict[tuple, str]
    """Identity of a dead letter -> the repr of its record: ``("parse", file, line)`` or ``("count", id)``."""


def write_input(directory: Path, seed: int) -> Oracle:
    """Write the input (malformed lines drawn with ``seed``) and return the oracle of both outputs."""
    rng = random.Random(seed)
    bad = set(rng.sample(range(N), N_BAD))
    directory.mkdir(parents=True, exist_ok=True)
    files: list[list[str]] = [[] for _ in range(N_FILES)]
    main: dict[str, str] = {}
    letters: dict[tuple, str] = {}
    counts: Counter[str] = Counter()
    for rid in range(N):
        key = f"user-{rid % N_KEYS}"
        f = (rid % N_KEYS) % N_FILES
        name = f"in-{f:02d}.csv"
        if rid in bad:
            line = rng.choice(
                [f"garbage {rid}", f"{rid},{key}", f"{rid},{key},NaN-{rid}", "", f"{rid},{key},1,2"]
            )
            files[f].append(line)
            letters["parse", name, len(files[f])] = repr(line)
            continue
        files[f].append(f"{rid},{key},{value_of(rid)}")
        if value_of(rid) % POISON == 0:
            letters["count", rid] = repr((rid, key, value_of(rid)))
            continue
        counts[key] += 1
        main[str(rid)] = f"{rid},{key},{counts[key]}"
    for f, lines in enumerate(files):
        (directory / f"in-{f:02d}.csv").write_text("".join(line + "\n" for line in lines))
    return Oracle(main, letters)


def letter_identity(line: str) -> tuple:
    letter = json.loads(line)
    if letter["operator"] == "parse":
        source = letter["source"]
        return ("parse", Path(source["file"]).name, source["line"])
    return ("count", int(letter["record"].strip("()").split(",")[0]))


class DeadLetterChaosRun(ChaosRun):
    """Runs of ``dead_letters_job.py``: main output and dead letters checked against the oracle."""

    BROKEN_ANY_TIME = (
        *ChaosRun.BROKEN_ANY_TIME,
        "letter_duplicates",
        "letter_unexpected",
        "letter_wrong_record",
    )
    BROKEN_AT_END = (*BROKEN_ANY_TIME, "lost", "letters_lost")
    EQUAL_AT_END = (("committed", "expected"), ("letters", "letters_expected"))

    def __init__(self, root: Path, workload: Workload, seed: int, *, want: Oracle, **kwargs) -> None:
        self.want = want
        self.dead = root / "dead"
        params = {"dead_letters": str(root / "dead"), "poison": str(POISON)}
        super().__init__(root, workload, seed, job_file=JOBS / "dead_letters_job.py", params=params, **kwargs)

    def letters(self) -> list[str]:
        from onceflow.operators.files import read_committed_lines

        return read_committed_lines(str(self.dead)) if self.dead.exists() else []

    def figures(self, lines: list[str], final: bool) -> dict[str, int]:
        ids = Counter(line.split(",", 1)[0] for line in lines)
        letters = Counter(letter_identity(line) for line in self.letters())
        letter_records = {letter_identity(line): json.loads(line)["record"] for line in self.letters()}
        return {
            "committed": len(lines),
            "expected": len(self.want.main),
            "duplicates": sum(c - 1 for c in ids.values() if c > 1),
            "unexpected": sum(1 for i in ids if i not in self.want.main),
            "wrong_value": sum(
                1 for line in lines if self.want.main.get(line.split(",", 1)[0], line) != line
            ),
            "lost": sum(1 for i in self.want.main if i not in ids),
            "letters": sum(letters.values()),
            "letters_expected": len(self.want.letters),
            "letter_duplicates": sum(c - 1 for c in letters.values() if c > 1),
            "letter_unexpected": sum(1 for k in letters if k not in self.want.letters),
            "letter_wrong_record": sum(
                1 for k, r in letter_records.items() if k in self.want.letters and self.want.letters[k] != r
            ),
            "letters_lost": sum(1 for k in self.want.letters if k not in letters),
        }

    def identities(self, lines: list[str]) -> set:
        letters = {("letter", letter_identity(line)) for line in self.letters()}
        return {line.split(",", 1)[0] for line in lines} | letters


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_dead_letters_are_exact_under_random_kills(executor, tmp_path_factory, chaos_dir, chaos_seed) -> None:
    """Kill at up to 6 random moments after a checkpoint (at least 5 before the job finishes), then
    finish: main output and dead letters exactly the oracle."""
    input_dir = tmp_path_factory.mktemp("dead-letters-input")
    want = write_input(input_dir, chaos_seed)
    workload = Workload(input_dir, N, N_KEYS, N_FILES)
    run = DeadLetterChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        want=want,
        parallelism=2,
        executor=executor,
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
    )
    run.kill_at_random(6, (0.1, 1.0), at_least=5, from_checkpoint=True)
    figures = run.check_final()
    run.assert_kills_landed_mid_run(figures["committed"])
    run.summary(
        f"test_dead_letters_are_exact_under_random_kills[{executor}]",
        {"p": run.parallelism, "executor": run.executor, "repo": REPO.name},
        **figures,
        committed_at_kills=run.committed_at_kill,
    )
