"""The subprocess chaos harness: run ``onceflow run``, kill it, check committed output, resume.

Every run is ``python -m onceflow run JOBFILE ...`` in a new session (its own
process group) with a ``PYTHONHASHSEED`` drawn from the test's seeded rng. A
run ends by itself, by a crash point (``ONCEFLOW_CRASH_AT``), or by SIGKILL of
its process group after a delay. Logs of every run are kept under ``logs``.

* :class:`CliRuns`: runs of one command line against the same checkpoints; the
  caller checks the output (connector tests: a table, a stream, a bucket).
* :class:`ChaosRun`: runs of a job that commits lines through ``FileSink`` into
  ``root/out``; after every kill it checks the committed output against an
  oracle (no record twice, nothing outside the oracle, nothing committed
  earlier gone), and at the end that a rerun says "already finished".
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.oracles import compare, expected, identity

KILLS: Counter[str] = Counter()
"""Every run of this pytest session that died by SIGKILL (harness kill or crash point), by label.

``tests/conftest.py`` prints the total at the end of the run, so a CI log
shows how many kills the chaos tests put the engine through.
"""

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).resolve().parent / "jobs"
"""The job files of the chaos tests."""
SUMMARY_FIGURES = ("committed", "expected", "duplicates", "lost", "unexpected", "wrong_value")
"""The oracle figures a :class:`ChaosRun` summary line shows, in order."""
RUN_TIMEOUT = 60.0
"""Hard cap on one run: longer means a hang."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Workload:
    """Generated input of a chaos test: a folder of files, ``n`` records over ``k`` keys."""

    input_dir: Path
    n: int
    k: int
    n_files: int


@dataclass
class RunOutcome:
    index: int
    returncode: int
    seconds: float
    label: str
    """What ended the run: a harness kill label, a crash point label, or "none"."""
    killed_by_harness: bool
    crash_at: str | None
    hash_seed: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


class CliRuns:
    """Runs of one ``onceflow run`` command line against the same checkpoint directory.

    ``rng`` (seeded) draws every run's hash seed; tests draw kill delays and
    fault plans from it too, so a seed replays the same runs.
    """

    def __init__(
        self,
        job_file: Path,
        *,
        params: dict[str, str],
        args: Sequence[str],
        logs: Path,
        seed: int,
        env: dict[str, str] | None = None,
        run_timeout: float = RUN_TIMEOUT,
    ) -> None:
        self.job_file = job_file
        self.params = params
        self.args = list(args)
        self.logs = logs
        self.seed = seed
        self.env = env or {}
        self.run_timeout = run_timeout
        self.rng = random.Random(seed)
        self.runs: list[RunOutcome] = []
        self.kills: Counter[str] = Counter()
        self.started = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)

    def where(self) -> str:
        return f"chaos seed={self.seed} logs={self.logs} (replay with CHAOS_SEED={self.seed})"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "onceflow", "run", str(self.job_file)]
        for name, value in self.params.items():
            cmd += ["-p", f"{name}={value}"]
        return cmd + ["--progress", "off", *self.args]

    def run(
        self,
        *,
        kill_after: float | None = None,
        crash_at: str | None = None,
        timeout: float | None = None,
        runner_only: bool = False,
        label: str = "random",
        after_text: str | None = None,
        after: Callable[[], bool] | None = None,
        during: Callable[[subprocess.Popen], None] | None = None,
        group_exit_timeout: float = 5.0,
    ) -> RunOutcome:
        """Start one run; SIGKILL its process group after ``kill_after`` seconds if still alive.

        With ``after_text`` the ``kill_after`` delay starts when that text first
        appears on the run's stderr (e.g. "restoring from"), not at the start;
        with ``after`` it starts once ``after()`` is true (e.g. a checkpoint
        completed), so a kill lands where the test means it to on a busy machine.
        With ``runner_only`` only the runner process is killed; its workers (if
        any) must die with it within ``group_exit_timeout`` seconds, or the test fails. ``label``
        names a harness kill in the kill statistics. ``during(proc)`` runs in a
        thread while the run is alive. A run that outlives ``timeout`` without
        ``kill_after`` is a hang: AssertionError.
        """
        timeout = self.run_timeout if timeout is None else timeout
        index = len(self.runs) + 1
        hash_seed = self.rng.randrange(2**32)
        env = {k: v for k, v in os.environ.items() if k != "ONCEFLOW_CRASH_AT"}
        env.update(self.env)
        env["PYTHONHASHSEED"] = str(hash_seed)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
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
            helper = None
            if during is not None:
                helper = threading.Thread(target=during, args=(proc,), daemon=True)
                helper.start()
            killed = False
            try:
                if (after_text is not None or after is not None) and kill_after is not None:
                    deadline = started + timeout

                    def waiting() -> bool:
                        if after_text is not None and after_text not in err_path.read_text(errors="replace"):
                            return True
                        return after is not None and not after()

                    while waiting():
                        if proc.poll() is not None or time.monotonic() > deadline:
                            break
                        time.sleep(0.002)
                proc.wait(timeout=kill_after if kill_after is not None else timeout)
            except subprocess.TimeoutExpired:
                killed = True
                if runner_only:
                    proc.kill()
                    proc.wait()
                    survivors = _wait_for_group_exit(proc.pid, group_exit_timeout)
                    assert not survivors, (
                        f"run {index}: workers {_described(survivors)} outlived their killed runner; "
                        f"{self.where()}"
                    )
                _kill_group(proc)
                if kill_after is None:
                    msg = f"run {index} did not finish within {timeout:.0f} s (hang?); {self.where()}"
                    raise AssertionError(msg) from None
            finally:
                # Whatever happened, nothing of this run may survive it.
                _kill_group(proc)
                if helper is not None:
                    helper.join(timeout=10)
        if killed:
            label = f"{label}-runner" if runner_only else label
        else:
            label = (crash_at or "").split(":")[0] or "none"
        outcome = RunOutcome(
            index=index,
            returncode=proc.returncode,
            seconds=time.monotonic() - started,
            label=label,
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
        if outcome.killed:
            self.kills[label] += 1
            KILLS[label] += 1
            self.after_kill(outcome)
        return outcome

    def after_kill(self, outcome: RunOutcome) -> None:
        """Check what must hold after every kill; nothing here (connector tests check it themselves)."""

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

    def fault_plan(self, random_kills: int, labels: list[str], max_n: int = 3) -> list[tuple[str, object]]:
        """Random kills and crash points, shuffled by the seed.

        Returns ``[("random", None) | ("crash", "label:n")]``.
        """
        plan: list[tuple[str, object]] = [("random", None)] * random_kills
        plan += [("crash", f"{label}:{self.rng.randint(1, max_n)}") for label in labels]
        self.rng.shuffle(plan)
        return plan

    def summary(self, name: str, settings: dict[str, object] | None = None, **figures: object) -> str:
        """Print and return the one ``chaos summary`` line: settings, runs and kills, then figures."""
        line = (
            f"chaos summary {name}: seed={self.seed} "
            + "".join(f"{k}={v} " for k, v in (settings or {}).items())
            + f"runs={len(self.runs)} kills={sum(self.kills.values())} "
            f"kills_by_label={dict(sorted(self.kills.items()))} "
            + " ".join(f"{k}={v}" for k, v in figures.items())
            + f" wall={time.monotonic() - self.started:.1f}s"
        )
        print(line)
        return line


class ChaosRun(CliRuns):
    """Runs of a job that reads ``workload`` and commits lines into ``root/out`` with ``FileSink``.

    The command adds ``input``, ``output`` and ``delay_us`` to ``params`` and
    the checkpoint directory ``root/chk`` (interval 0.1 s), parallelism and
    executor to ``args``. Subclasses for other jobs override :meth:`figures`
    (and :meth:`identities`, and the figure names below) and keep the checks.
    """

    BROKEN_ANY_TIME: tuple[str, ...] = ("duplicates", "unexpected", "wrong_value", "not_prefix")
    """Figures that must be 0 at every instant: committed output may lack records, never be wrong."""
    BROKEN_AT_END: tuple[str, ...] = (*BROKEN_ANY_TIME, "lost")
    """Figures that must be 0 once the job has finished."""
    EQUAL_AT_END: tuple[tuple[str, str], ...] = (("committed", "expected"),)
    """Pairs of figures that must be equal once the job has finished."""

    def __init__(
        self,
        root: Path,
        workload: Workload,
        seed: int,
        *,
        parallelism: int = 1,
        mode: str = "keyed",
        executor: str | None = None,
        delay_us: int = 0,
        params: dict[str, str] | None = None,
        args: Sequence[str] = (),
        job_file: Path = JOBS / "chaos_job.py",
    ) -> None:
        self.root = root
        self.workload = workload
        self.parallelism = parallelism
        self.mode = mode
        self.executor = executor or os.environ.get("CHAOS_EXECUTOR", "local")
        self.out = root / "out"
        self.chk = root / "chk"
        self.previous: set = set()
        self.committed_at_kill: list[int] = []
        """How many lines were committed after each kill (a kill that commits nothing proves little)."""
        self._oracle: dict[str, str] | None = None
        super().__init__(
            job_file,
            params={
                "input": str(workload.input_dir),
                "output": str(self.out),
                "mode": mode,
                "delay_us": str(delay_us),
                **(params or {}),
            },
            args=[
                "--checkpoint-dir",
                str(self.chk),
                "--checkpoint-interval",
                "0.1",
                "--parallelism",
                str(parallelism),
                "--executor",
                self.executor,
                *args,
            ],
            logs=root / "logs",
            seed=seed,
        )

    def has_completed_checkpoint(self) -> bool:
        """Whether any checkpoint of the job in ``root/chk`` has its ``_metadata`` (it completed)."""
        return any(self.chk.glob("*/chk-*/_metadata"))

    def latest_completed_checkpoint(self) -> int:
        """The highest id of a checkpoint in ``root/chk`` with its ``_metadata``, 0 if none."""
        return max((int(p.parent.name.split("-")[1]) for p in self.chk.glob("*/chk-*/_metadata")), default=0)

    def checkpoint_completed_from_now(self) -> Callable[[], bool]:
        """A condition for ``run(after=...)``: a checkpoint newer than the latest one now has completed.

        A kill timed from it lands after the run committed something of its own,
        however busy the machine is.
        """
        before = self.latest_completed_checkpoint()
        return lambda: self.latest_completed_checkpoint() > before

    def where(self) -> str:
        return f"chaos seed={self.seed} dir={self.root} (replay with CHAOS_SEED={self.seed})"

    def rescale(self, parallelism: int) -> None:
        """Run the next runs at ``parallelism``: they restore the latest checkpoint rescaled."""
        at = self.args.index("--parallelism")
        self.args[at + 1] = str(parallelism)
        self.parallelism = parallelism

    def kill_at_random(
        self,
        kills: int,
        within: tuple[float, float],
        *,
        at_least: int | None = None,
        from_checkpoint: bool = False,
        before_run: Callable[[], dict[str, Any] | None] | None = None,
        after_each_kill: Callable[[], None] | None = None,
        finish: bool = True,
    ) -> bool:
        """Kill runs with SIGKILL at seeded moments until ``kills`` kills landed or a run finished.

        ``within`` bounds the seconds from a run's start (or, with
        ``from_checkpoint``, from the first checkpoint the run completes: a kill
        then lands after the run committed something of its own, however busy
        the machine is) to its kill. ``before_run`` may change the next run
        and return extra arguments of :meth:`run`; ``after_each_kill`` runs
        after every kill (a rescale, say). At least ``at_least`` (default
        ``kills``) kills must land before the job finishes. With ``finish``,
        runs without faults follow until the job finished. Returns whether a
        killed-at-random run finished by itself.
        """
        finished = False
        while sum(self.kills.values()) < kills:
            extra = (before_run() if before_run is not None else None) or {}
            after = self.checkpoint_completed_from_now() if from_checkpoint else None
            outcome = self.run(kill_after=self.rng.uniform(*within), after=after, **extra)
            if outcome.returncode == 0:
                finished = True
                break
            self.expect_killed(outcome)
            if after_each_kill is not None:
                after_each_kill()
        done = sum(self.kills.values())
        wanted = kills if at_least is None else at_least
        assert done >= wanted, f"the job finished after only {done} kills; {self.where()}"
        if finish and not finished:
            self.run_to_completion()
        return finished

    def assert_kills_landed_mid_run(self, final: int, at_least: int = 3) -> None:
        """At least ``at_least`` kills came after something and before everything was committed."""
        mid_run = [c for c in self.committed_at_kill if 0 < c < final]
        assert len(mid_run) >= at_least, (
            f"kills did not land mid-run: committed {self.committed_at_kill} of {final}; {self.where()}"
        )

    def after_kill(self, outcome: RunOutcome) -> None:
        """Check the committed output after every kill."""
        self.check_intermediate(f"after run {outcome.index} ({outcome.label}, {outcome.seconds:.2f} s)")

    def committed(self) -> list[str]:
        from onceflow.operators.files import read_committed_lines

        if not self.out.exists():
            return []
        return read_committed_lines(str(self.out))

    def figures(self, lines: list[str], final: bool) -> dict[str, int]:
        """Compare committed ``lines`` with the reference: the counts named in ``BROKEN_*``."""
        if self._oracle is None:
            self._oracle = expected(self.workload.n, self.workload.k, self.mode)
        return compare(lines, self._oracle, self.mode)

    def identities(self, lines: list[str]) -> set:
        """What identifies each committed record (and anything else committed that may never vanish)."""
        return {identity(line, self.mode) for line in lines}

    def check_intermediate(self, when: str) -> dict[str, int]:
        """Invariants on committed output that hold at every instant, not only at the end."""
        lines = self.committed()
        figures = self.figures(lines, final=False)
        bad = {k: figures[k] for k in self.BROKEN_ANY_TIME if figures.get(k)}
        assert not bad, f"{when}: committed output broken {bad}; {self.where()}"
        current = self.identities(lines)
        vanished = self.previous - current
        assert not vanished, (
            f"{when}: {len(vanished)} committed records disappeared "
            f"(e.g. {sorted(map(str, vanished))[:5]}); {self.where()}"
        )
        self.previous = current
        if when.startswith("after run"):
            self.committed_at_kill.append(len(lines))
        return figures

    def final_figures(self) -> dict[str, int]:
        """Check that the committed output equals the reference; return the figures."""
        self.check_intermediate("final")
        figures = self.figures(self.committed(), final=True)
        bad = {k: figures[k] for k in self.BROKEN_AT_END if figures.get(k)}
        unequal = [(a, b) for a, b in self.EQUAL_AT_END if figures[a] != figures[b]]
        assert not bad and not unequal, f"final output differs from the reference: {figures}; {self.where()}"
        return figures

    def check_final(self) -> dict[str, int]:
        """Committed output equals the oracle; no leftovers; a rerun changes nothing."""
        figures = self.final_figures()
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

    def report(self, name: str, figures: dict[str, int]) -> str:
        """Print the summary line with this run's settings and the oracle figures."""
        return self.summary(
            name,
            {"p": self.parallelism, "mode": self.mode, "executor": self.executor},
            **{
                k: figures[k]
                for k in ("committed", "expected", "duplicates", "lost", "unexpected", "wrong_value")
            },
        )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


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


def _described(pids: list[int]) -> list[str]:
    """``pid command line`` of each process still there, to tell which one outlived its runner."""
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"{pid} {cmdline[:160].strip()}")
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
