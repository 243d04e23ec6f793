"""Subprocess chaos harness: run ``onceflow run``, kill it, check committed output, resume.

Every run is ``python -m onceflow run`` in a new session (its own process
group) with a random ``PYTHONHASHSEED``. The harness kills the group with
SIGKILL after a delay, or lets a crash point (``ONCEFLOW_CRASH_AT``) kill it.
After every kill it checks the committed output only: no record twice,
nothing outside the oracle, every key a prefix of its sequence, and nothing
committed earlier has disappeared.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from oracle import compare, expected, identity

REPO = Path(__file__).resolve().parents[2]
JOB_FILE = Path(__file__).resolve().parent / "jobs" / "chaos_job.py"
RUN_TIMEOUT = 60.0
"""Hard cap on one run: longer means a hang."""


@dataclass(frozen=True)
class Workload:
    input_dir: Path
    n: int
    k: int
    n_files: int


@dataclass
class RunOutcome:
    index: int
    returncode: int
    seconds: float
    killed_by_harness: bool
    crash_at: str | None
    hash_seed: int
    stdout: str
    stderr: str


@dataclass
class ChaosRun:
    """One job's checkpoint and output directories, and the runs made against them."""

    root: Path
    workload: Workload
    seed: int
    parallelism: int = 1
    mode: str = "keyed"
    executor: str = field(default_factory=lambda: os.environ.get("CHAOS_EXECUTOR", "local"))
    delay_us: int = 0
    params: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    rng: random.Random = field(init=False)
    runs: list[RunOutcome] = field(default_factory=list)
    kills: Counter = field(default_factory=Counter)
    previous: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.out = self.root / "out"
        self.chk = self.root / "chk"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.oracle = expected(self.workload.n, self.workload.k, self.mode)

    # -- context for failure messages ---------------------------------------------

    def where(self) -> str:
        return f"chaos seed={self.seed} dir={self.root} (replay with CHAOS_SEED={self.seed})"

    # -- running ------------------------------------------------------------------

    def command(self) -> list[str]:
        params = {
            "input": str(self.workload.input_dir),
            "output": str(self.out),
            "mode": self.mode,
            "delay_us": str(self.delay_us),
            **self.params,
        }
        cmd = [sys.executable, "-m", "onceflow", "run", str(JOB_FILE)]
        for name, value in params.items():
            cmd += ["-p", f"{name}={value}"]
        cmd += [
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
        return cmd

    def run(
        self,
        *,
        kill_after: float | None = None,
        crash_at: str | None = None,
        timeout: float = RUN_TIMEOUT,
        runner_only: bool = False,
        label: str = "random",
        after_text: str | None = None,
    ) -> RunOutcome:
        """Start one run; SIGKILL its process group after ``kill_after`` seconds if still alive.

        With ``after_text`` the ``kill_after`` delay starts when that text first
        appears on the run's stderr (e.g. "restoring from"), not at the start.
        With ``runner_only`` only the runner process is killed; its workers (if
        any) must die with it within a few seconds, or the test fails. ``label``
        names a harness kill in the kill statistics.
        """
        index = len(self.runs) + 1
        hash_seed = self.rng.randrange(2**32)
        env = {k: v for k, v in os.environ.items() if k != "ONCEFLOW_CRASH_AT"}
        env["PYTHONHASHSEED"] = str(hash_seed)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        if crash_at:
            env["ONCEFLOW_CRASH_AT"] = crash_at
        out_path = self.logs / f"run-{index:03d}.stdout"
        err_path = self.logs / f"run-{index:03d}.stderr"
        started = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            killed = False
            try:
                if after_text is not None and kill_after is not None:
                    deadline = started + timeout
                    while after_text not in err_path.read_text(errors="replace"):
                        if proc.poll() is not None or time.monotonic() > deadline:
                            break
                        time.sleep(0.002)
                proc.wait(timeout=kill_after if kill_after is not None else timeout)
            except subprocess.TimeoutExpired:
                killed = True
                if runner_only:
                    proc.kill()
                    proc.wait()
                    survivors = _wait_for_group_exit(proc.pid, 5.0)
                    assert not survivors, (
                        f"run {index}: workers {survivors} outlived their killed runner; {self.where()}"
                    )
                self._kill_group(proc)
                if kill_after is None:
                    msg = (
                        f"run {index} did not finish within {timeout:.0f} s (hang?); "
                        f"logs in {self.logs}; {self.where()}"
                    )
                    raise AssertionError(msg) from None
            finally:
                # Whatever happened, nothing of this run may survive it.
                self._kill_group(proc)
        outcome = RunOutcome(
            index=index,
            returncode=proc.returncode,
            seconds=time.monotonic() - started,
            killed_by_harness=killed,
            crash_at=crash_at,
            hash_seed=hash_seed,
            stdout=out_path.read_text(errors="replace"),
            stderr=err_path.read_text(errors="replace"),
        )
        self.runs.append(outcome)
        with open(self.logs / "runs.jsonl", "a") as log:
            record = {k: v for k, v in outcome.__dict__.items() if k not in ("stdout", "stderr")}
            log.write(json.dumps(record) + "\n")
        if outcome.returncode == -signal.SIGKILL:
            if killed:
                label = f"{label}-runner" if runner_only else label
            else:
                label = (crash_at or "?").split(":")[0]
            self.kills[label] += 1
            self.check_intermediate(f"after run {index} ({label}, {outcome.seconds:.2f} s)")
        return outcome

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def expect_ok(self, outcome: RunOutcome) -> None:
        assert outcome.returncode == 0, (
            f"run {outcome.index} exited {outcome.returncode}, expected 0; {self.where()}\n"
            f"stderr:\n{outcome.stderr[-3000:]}"
        )

    def expect_killed(self, outcome: RunOutcome) -> None:
        assert outcome.returncode == -signal.SIGKILL, (
            f"run {outcome.index} (crash_at={outcome.crash_at}) exited {outcome.returncode}, "
            f"expected death by SIGKILL (-9); {self.where()}\nstderr:\n{outcome.stderr[-3000:]}"
        )

    def run_to_completion(self, max_runs: int = 3) -> RunOutcome:
        """Run without faults until a run exits 0 (a run may only fail by a hang, which raises)."""
        for _ in range(max_runs):
            outcome = self.run()
            if outcome.returncode == 0:
                return outcome
        self.expect_ok(outcome)
        return outcome

    # -- checks -------------------------------------------------------------------

    def committed(self) -> list[str]:
        from onceflow.operators.files import read_committed_lines

        if not self.out.exists():
            return []
        return read_committed_lines(str(self.out))

    def check_intermediate(self, when: str) -> dict[str, int]:
        """Invariants on committed output that hold at every instant, not only at the end."""
        lines = self.committed()
        figures = compare(lines, self.oracle, self.mode)
        bad = {k: figures[k] for k in ("duplicates", "unexpected", "wrong_value", "not_prefix")}
        assert not any(bad.values()), f"{when}: committed output broken {bad}; {self.where()}"
        current = {identity(line, self.mode) for line in lines}
        vanished = self.previous - current
        assert not vanished, (
            f"{when}: {len(vanished)} committed records disappeared "
            f"(e.g. {sorted(vanished)[:5]}); {self.where()}"
        )
        self.previous = current
        return figures

    def check_final(self) -> dict[str, int]:
        """Committed output equals the oracle; no leftovers; a rerun changes nothing."""
        figures = self.check_intermediate("final")
        bad = {k: v for k, v in figures.items() if k not in ("committed", "expected") and v}
        assert not bad and figures["committed"] == figures["expected"], (
            f"final output differs from the oracle: {figures}; {self.where()}"
        )
        leftovers = sorted(
            p.name for p in self.out.iterdir() if p.name.endswith((".inprogress", ".pending", ".tmp"))
        )
        assert not leftovers, f"leftover hidden files in the output: {leftovers}; {self.where()}"
        incomplete = sorted(
            str(p.relative_to(self.chk))
            for p in self.chk.glob("*/chk-*")
            if p.is_dir() and not (p / "_metadata").exists()
        )
        assert not incomplete, f"checkpoints without _metadata: {incomplete}; {self.where()}"
        before = snapshot_tree(self.root, skip=("logs",))
        rerun = self.run()
        self.expect_ok(rerun)
        assert "already finished" in rerun.stdout, (
            f"a rerun of the finished job did not say 'already finished': {rerun.stdout!r}; {self.where()}"
        )
        after = snapshot_tree(self.root, skip=("logs",))
        changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        assert not changed, f"the 'already finished' rerun changed files {changed}; {self.where()}"
        return figures

    def summary(self, test: str, figures: dict[str, int]) -> str:
        by_label = dict(sorted(self.kills.items()))
        line = (
            f"chaos summary {test}: seed={self.seed} p={self.parallelism} mode={self.mode} "
            f"executor={self.executor} "
            f"runs={len(self.runs)} kills={sum(self.kills.values())} kills_by_label={by_label} "
            f"committed={figures['committed']} expected={figures['expected']} "
            f"duplicates={figures['duplicates']} lost={figures['lost']} "
            f"unexpected={figures['unexpected']} wrong_value={figures['wrong_value']} "
            f"wall={time.monotonic() - self.started:.1f}s"
        )
        print(line)
        return line


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _wait_for_group_exit(pgid: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        members = _group_members(pgid)
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.02)


def snapshot_tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``root``.

    The run lock (``_lock``) is listed but not hashed: a run writes its pid
    into it, which is not output or checkpoint data.
    """
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        if path.is_dir():
            found[f"{rel}/"] = "dir"
        elif path.name == "_lock":
            found[str(rel)] = "lock"
        else:
            found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
