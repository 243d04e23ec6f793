"""Windowed chaos: SIGKILL ``onceflow run`` of an event-time job while windows are open and timers
pending, rerun until it finishes, compare with a plain-Python oracle (no window, timer or late
record may be lost or emitted twice after a restore).

The job (``tests/support/jobs/windowed_chaos_job.py``) reads an out-of-order event log with
one reader, keys it by ``key`` at parallelism 2 and runs tumbling windows
(aggregate), session windows (process function) — both with allowed lateness and
a late side output — and a keyed process function with one event-time timer per
record. Every run is killed with SIGKILL at a random moment of the chaos seed
(a window of 5 s or 3 s of event time is open for every active key, and every
record's timer is pending for 15 s of event time, so each kill lands with
open windows and pending timers); the last run goes to the end.

What the oracle can know exactly (and why): the log is built with margins, as
in ``tests/support/windows_reference.py``: on-time records are at
most ``MAX_DELAY`` behind every earlier record (never late, whatever the
batching after a restore), late-but-allowed records are less than the allowed
lateness behind (always counted, possibly by a re-firing), and far-too-late
records are 30-60 s behind and isolated from their key's sessions (always
dropped to the side output). So the final content of every window and the set
of late records are deterministic. How many times a window fires is not (an
early firing plus a re-firing after a late record, or one firing, depending on
where batches end), so the oracle checks each window's *final* emission: the
one with the highest count (a re-firing always adds a record); sessions
contained in a larger emitted session of the key were superseded by a merge.
Identical emissions committed twice are duplicates.

Figures: lost (oracle windows/timers/late records not committed), duplicated
(any line committed twice), unexpected (windows or ids the oracle does not
have), wrong value (a window's final count or sum differs).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, REPO, ChaosRun, Workload
from tests.support.windows_reference import EventLog, window_contents

pytestmark = pytest.mark.chaos

N = 100_000
N_KEYS = 500
N_FILES = 4
DT = 0.01
MAX_DELAY = 0.5
LATENESS = 5.0
TUMBLE = 5.0
GAP = 3.0
TIMER_AFTER = 15.0
SLOW_US = 80
"""Spin per record: a full run takes about 8 s (local), so random kills land mid-run."""


# -- input and oracle (plain Python) --------------------------------------------------------


def event_log(seed: int) -> EventLog:
    """The windowed job's input: far-too-late records from id 10,000 on, one in 71."""
    return EventLog(
        n=N,
        n_keys=N_KEYS,
        seed=seed,
        first_late=10_000,
        late_step=71,
        dt=DT,
        max_delay=MAX_DELAY,
        lateness=LATENESS,
        gap=GAP,
    )


def write_input(directory: Path, events) -> None:
    """``N_FILES`` files of consecutive arrivals; read in name order they form the log."""
    directory.mkdir(parents=True, exist_ok=True)
    per = math.ceil(len(events) / N_FILES)
    for f in range(N_FILES):
        chunk = events[f * per : (f + 1) * per]
        (directory / f"events-{f:02d}.csv").write_text("".join(f"{i},{k},{t!r}\n" for i, k, t in chunk))


@dataclass
class Oracle:
    windows: dict[tuple, tuple[int, int]]
    """``(kind, key, start, end) -> (count, sum of ids)``, final content."""
    timers: dict[int, str]
    """``id -> "T,id,key,time"`` for every record whose timer must fire."""
    late: set[str]
    """``"L,kind,id"`` lines."""


def oracle(events, dropped) -> Oracle:
    windows = window_contents(events, dropped, tumble=TUMBLE, gap=GAP)
    timers = {rid: f"T,{rid},{key},{ts + TIMER_AFTER!r}" for rid, key, ts in events if rid not in dropped}
    late = {f"L,{kind},{rid}" for rid in dropped for kind in ("tumbling", "session")}
    return Oracle(windows, timers, late)


def compare(lines: list[str], want: Oracle, final: bool) -> dict[str, int]:
    """Count duplicates, unexpected, wrong values and (when ``final``) lost entries."""
    figures = dict.fromkeys(("duplicates", "lost", "unexpected", "wrong_value", "refirings"), 0)
    figures["committed"] = len(lines)
    figures["expected"] = len(want.windows) + len(want.timers) + len(want.late)
    figures["duplicates"] = len(lines) - len(set(lines))
    best: dict[tuple, tuple[int, int]] = {}
    timers_seen: set[int] = set()
    late_seen: set[str] = set()
    sessions: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for line in set(lines):
        parts = line.split(",")
        if parts[0] == "T":
            rid = int(parts[1])
            if want.timers.get(rid) != line:
                figures["unexpected"] += 1
            timers_seen.add(rid)
        elif parts[0] == "L":
            if line not in want.late:
                figures["unexpected"] += 1
            late_seen.add(line)
        else:
            kind, key = parts[1], parts[2]
            start, end, count, total = float(parts[3]), float(parts[4]), int(parts[5]), int(parts[6])
            k = (kind, key, start, end)
            if k not in best or count > best[k][0]:
                best[k] = (count, total)
            if kind == "session":
                sessions[key].append((start, end))
    figures["refirings"] = sum(1 for line in set(lines) if line.startswith("W")) - len(best)
    for key, spans in sessions.items():
        for start, end in set(spans):
            if any(s <= start and end <= e and (s, e) != (start, end) for s, e in spans):
                best.pop(("session", key, start, end), None)
    for k, value in best.items():
        if k not in want.windows:
            # a session still growing is contained in a final one, a window still open is in the oracle
            if (
                not final
                and k[0] == "session"
                and any(
                    w[0] == "session" and w[1] == k[1] and w[2] <= k[2] and k[3] <= w[3] for w in want.windows
                )
            ):
                continue
            figures["unexpected"] += 1
        elif final or value[0] >= want.windows[k][0]:
            # before the end a window may hold fewer records (a re-firing will follow), never more
            figures["wrong_value"] += value != want.windows[k]
    if final:
        figures["lost"] = (
            len(want.windows.keys() - best.keys())
            + len(want.timers.keys() - timers_seen)
            + len(want.late - late_seen)
        )
    return figures


# -- the harness, for this job ------------------------------------------------------------


class WindowedChaosRun(ChaosRun):
    """Runs of ``windowed_chaos_job.py``, checked against the windows oracle instead of counts."""

    EQUAL_AT_END = ()  # a window may fire again with late records: committed counts its firings

    def __init__(self, root: Path, workload: Workload, seed: int, *, want: Oracle, **kwargs) -> None:
        self.want = want
        params = {
            "max_delay": str(MAX_DELAY),
            "lateness": str(LATENESS),
            "tumble": str(TUMBLE),
            "gap": str(GAP),
            "timer_after": str(TIMER_AFTER),
        }
        super().__init__(
            root, workload, seed, job_file=JOBS / "windowed_chaos_job.py", params=params, **kwargs
        )

    def figures(self, lines: list[str], final: bool) -> dict[str, int]:
        return compare(lines, self.want, final=final)

    def identities(self, lines: list[str]) -> set:
        return set(lines)


@pytest.fixture(scope="module")
def windowed_workload(tmp_path_factory) -> tuple[Workload, Oracle, int]:
    seed = 4242
    events, dropped = event_log(seed).events()
    directory = tmp_path_factory.mktemp("windowed-chaos-input")
    write_input(directory, events)
    return Workload(directory, N, N_KEYS, N_FILES), oracle(events, dropped), len(dropped)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_windowed_job_survives_random_kills(executor, windowed_workload, chaos_dir, chaos_seed) -> None:
    """Kill at >= 5 random moments (seeded) while windows are open and timers pending, then
    finish: 0 lost, 0 duplicated, 0 unexpected, 0 wrong windows, timers or late records."""
    workload, want, n_late = windowed_workload
    run = WindowedChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        want=want,
        parallelism=2,
        executor=executor,
        mode="windows",
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
    )
    run.kill_at_random(6, (0.1, 1.5), at_least=5, from_checkpoint=True)
    figures = run.check_final()
    run.assert_kills_landed_mid_run(figures["committed"])
    line = run.report(f"test_windowed_job_survives_random_kills[{executor}]", figures)
    print(
        f"{line} windows={len(want.windows)} timers={len(want.timers)} late_records={n_late} "
        f"refirings={figures['refirings']} committed_at_kills={run.committed_at_kill} repo={REPO.name}"
    )
