"""Windowed chaos: SIGKILL ``onceflow run`` of an event-time job while windows are open and timers
pending, rerun until it finishes, compare with a plain-Python oracle (FAULTS.md F23, B6).

The job (``jobs/windowed_chaos_job.py``) reads an out-of-order event log with
one reader, keys it by ``key`` at parallelism 2 and runs tumbling windows
(aggregate), session windows (process function) — both with allowed lateness and
a late side output — and a keyed process function with one event-time timer per
record. Every run is killed with SIGKILL at a random moment of the chaos seed
(a window of 5 s or 3 s of event time is open for every active key, and every
record's timer is pending for 15 s of event time, so each kill lands with
open windows and pending timers); the last run goes to the end.

What the oracle can know exactly (and why): the log is built with margins, as
in ``tests/integration/test_windows_equivalence.py``: on-time records are at
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

import bisect
import collections
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chaos_harness import REPO, ChaosRun, Workload, snapshot_tree

pytestmark = pytest.mark.chaos

JOB_FILE = Path(__file__).resolve().parent / "jobs" / "windowed_chaos_job.py"
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


def make_events(seed: int) -> tuple[list[tuple[int, str, float]], set[int]]:
    """Events ``(id, key, ts)`` in arrival order and the ids too late for any window."""
    rng = random.Random(seed)
    events = []
    for i in range(N):
        key = f"k{rng.randrange(N_KEYS)}"
        if rng.random() < 0.015:
            ts = i * DT - MAX_DELAY - rng.uniform(0, LATENESS - 0.1)
        else:
            ts = i * DT - rng.uniform(0, MAX_DELAY)
        events.append((i, key, ts))
    by_key: dict[str, list[float]] = collections.defaultdict(list)
    for _, key, ts in events:
        by_key[key].append(ts)
    for times in by_key.values():
        times.sort()
    dropped: set[int] = set()
    for i in range(10_000, N, 71):
        for _ in range(50):
            key = f"k{rng.randrange(N_KEYS)}"
            ts = i * DT - rng.uniform(30.0, 60.0)
            times = by_key[key]
            at = bisect.bisect_left(times, ts - GAP - 0.01)
            if at == len(times) or times[at] > ts + GAP + 0.01:
                _, old_key, old_ts = events[i]
                by_key[old_key].remove(old_ts)
                bisect.insort(times, ts)
                events[i] = (i, key, ts)
                dropped.add(i)
                break
    return events, dropped


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
    windows: dict[tuple, list[int]] = {}
    timers: dict[int, str] = {}
    by_key: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for rid, key, ts in events:
        if rid in dropped:
            continue
        n = math.floor(ts / TUMBLE)
        acc = windows.setdefault(("tumbling", key, n * TUMBLE, n * TUMBLE + TUMBLE), [0, 0])
        acc[0] += 1
        acc[1] += rid
        by_key[key].append((ts, rid))
        timers[rid] = f"T,{rid},{key},{ts + TIMER_AFTER!r}"
    for key, items in by_key.items():
        items.sort()
        start = end = None
        ids: list[int] = []
        for ts, rid in items + [(math.inf, -1)]:
            if start is not None and ts >= end:
                windows[("session", key, start, end)] = [len(ids), sum(ids)]
                start = None
            if ts == math.inf:
                break
            if start is None:
                start, end, ids = ts, ts + GAP, []
            end = max(end, ts + GAP)
            ids.append(rid)
    late = {f"L,{kind},{rid}" for rid in dropped for kind in ("tumbling", "session")}
    return Oracle({k: tuple(v) for k, v in windows.items()}, timers, late)


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


@dataclass
class WindowedChaosRun(ChaosRun):
    want: Oracle | None = None
    committed_at_kill: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.out = self.root / "out"
        self.chk = self.root / "chk"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        params = {
            "input": str(self.workload.input_dir),
            "output": str(self.out),
            "delay_us": str(self.delay_us),
            "max_delay": str(MAX_DELAY),
            "lateness": str(LATENESS),
            "tumble": str(TUMBLE),
            "gap": str(GAP),
            "timer_after": str(TIMER_AFTER),
        }
        cmd = [sys.executable, "-m", "onceflow", "run", str(JOB_FILE)]
        for name, value in params.items():
            cmd += ["-p", f"{name}={value}"]
        return cmd + [
            "--checkpoint-dir",
            str(self.chk),
            "--checkpoint-interval",
            "0.1",
            "--progress",
            "off",
            "--parallelism",
            str(self.parallelism),
            "--executor",
            self.executor,
            *self.args,
        ]

    def check_intermediate(self, when: str) -> dict[str, int]:
        lines = self.committed()
        figures = compare(lines, self.want, final=False)
        bad = {k: figures[k] for k in ("duplicates", "unexpected", "wrong_value")}
        assert not any(bad.values()), f"{when}: committed output broken {bad}; {self.where()}"
        current = set(lines)
        vanished = self.previous - current
        assert not vanished, f"{when}: {len(vanished)} committed lines disappeared; {self.where()}"
        self.previous = current
        if when.startswith("after run"):
            self.committed_at_kill.append(len(lines))
        return figures

    def check_final(self) -> dict[str, int]:
        self.check_intermediate("final")
        figures = compare(self.committed(), self.want, final=True)
        bad = {k: figures[k] for k in ("duplicates", "lost", "unexpected", "wrong_value")}
        assert not any(bad.values()), f"final output differs from the oracle: {figures}; {self.where()}"
        hidden = (".inprogress", ".pending", ".tmp")
        leftovers = [p.name for p in self.out.iterdir() if p.name.endswith(hidden)]
        assert not leftovers, f"leftover hidden files in the output: {leftovers}; {self.where()}"
        before = snapshot_tree(self.root, skip=("logs",))
        rerun = self.run()
        self.expect_ok(rerun)
        assert "already finished" in rerun.stdout, rerun.stdout
        assert snapshot_tree(self.root, skip=("logs",)) == before, "the finished rerun changed files"
        return figures


@pytest.fixture(scope="module")
def windowed_workload(tmp_path_factory) -> tuple[Workload, Oracle, int]:
    seed = 4242
    events, dropped = make_events(seed)
    directory = tmp_path_factory.mktemp("windowed-chaos-input")
    write_input(directory, events)
    return Workload(directory, N, N_KEYS, N_FILES), oracle(events, dropped), len(dropped)


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
        parallelism=2,
        executor=executor,
        mode="windows",
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
    )
    run.want = want
    target = 6
    finished = False
    while sum(run.kills.values()) < target:
        outcome = run.run(kill_after=run.rng.uniform(0.5, 2.5))
        if outcome.returncode == 0:
            finished = True
            break
        run.expect_killed(outcome)
    kills = sum(run.kills.values())
    assert kills >= 5, f"the job finished after only {kills} kills; {run.where()}"
    if not finished:
        run.run_to_completion()
    figures = run.check_final()
    final = figures["committed"]
    mid_run = [c for c in run.committed_at_kill if 0 < c < final]
    assert len(mid_run) >= 3, f"kills did not land mid-run: {run.committed_at_kill} of {final}"
    line = run.summary(f"test_windowed_job_survives_random_kills[{executor}]", figures)
    print(
        f"{line} windows={len(want.windows)} timers={len(want.timers)} late_records={n_late} "
        f"refirings={figures['refirings']} committed_at_kills={run.committed_at_kill} repo={REPO.name}"
    )
