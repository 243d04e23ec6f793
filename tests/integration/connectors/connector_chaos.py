"""A small subprocess chaos harness (and shared helpers) for the connector tests.

Every run is ``python -m onceflow run JOBFILE ...`` in its own session (so
its whole process group can be killed) with a random ``PYTHONHASHSEED``. A
run ends by itself, by a crash point (``ONCEFLOW_CRASH_AT``), or by SIGKILL of
its process group after a delay. Logs of every run are kept under ``logs``.
"""

from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
RUN_TIMEOUT = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Outcome:
    index: int
    returncode: int
    seconds: float
    label: str
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


@dataclass
class CliRuns:
    """Runs of one ``onceflow run`` command line against the same checkpoint directory."""

    job_file: Path
    params: dict[str, str]
    args: list[str]
    logs: Path
    seed: int
    env: dict[str, str] = field(default_factory=dict)
    runs: list[Outcome] = field(default_factory=list)
    kills: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.logs.mkdir(parents=True, exist_ok=True)

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
        during: Callable[[subprocess.Popen], None] | None = None,
        timeout: float = RUN_TIMEOUT,
    ) -> Outcome:
        """Start one run and wait; kill its group after ``kill_after`` s; ``during`` runs in a thread."""
        index = len(self.runs) + 1
        env = {k: v for k, v in os.environ.items() if k != "ONCEFLOW_CRASH_AT"}
        env.update(self.env)
        env["PYTHONHASHSEED"] = str(self.rng.randrange(2**32))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        if crash_at:
            env["ONCEFLOW_CRASH_AT"] = crash_at
        out_path, err_path = self.logs / f"run-{index:03d}.out", self.logs / f"run-{index:03d}.err"
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
            harness_kill = False
            try:
                proc.wait(timeout=kill_after if kill_after is not None else timeout)
            except subprocess.TimeoutExpired:
                harness_kill = True
                if kill_after is None:
                    self._kill(proc)
                    msg = f"run {index} did not finish within {timeout:.0f} s; logs in {self.logs}"
                    raise AssertionError(msg) from None
            finally:
                self._kill(proc)
                if helper is not None:
                    helper.join(timeout=10)
        label = "random" if harness_kill else (crash_at or "").split(":")[0] or "none"
        outcome = Outcome(
            index,
            proc.returncode,
            time.monotonic() - started,
            label,
            out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"),
        )
        self.runs.append(outcome)
        if outcome.killed:
            self.kills[label] += 1
        with open(self.logs / "runs.jsonl", "a") as log:
            record = {k: v for k, v in outcome.__dict__.items() if k not in ("stdout", "stderr")}
            log.write(json.dumps(record) + "\n")
        return outcome

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def fault_plan(self, random_kills: int, labels: list[str], max_n: int = 3) -> list[tuple[str, object]]:
        """Random kills and crash points, shuffled by the seed.

        Returns ``[("random", None) | ("crash", "label:n")]``.
        """
        plan: list[tuple[str, object]] = [("random", None)] * random_kills
        plan += [("crash", f"{label}:{self.rng.randint(1, max_n)}") for label in labels]
        self.rng.shuffle(plan)
        return plan

    def summary(self, name: str, **figures: object) -> str:
        line = (
            f"chaos summary {name}: seed={self.seed} runs={len(self.runs)} "
            f"kills={sum(self.kills.values())} kills_by_label={dict(sorted(self.kills.items()))} "
            + " ".join(f"{k}={v}" for k, v in figures.items())
            + f" wall={time.monotonic() - self.started:.1f}s"
        )
        print(line)
        return line
