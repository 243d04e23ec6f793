"""The TTY progress display against a fake terminal: log lines survive, narrow screens, restarts.

Issue 11 item 8: the redrawn frame erased restart warnings, showed a negative
rate after a restart, and stacked copies of itself on a narrow terminal
(wrapped lines take two rows, and the cursor went back over only one).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from types import SimpleNamespace

import pytest

from onceflow import FileSink, FileSource, Job
from onceflow.engine.executors.base import SubtaskMetrics
from onceflow.engine.plan import PhysicalPlan, build_plan
from onceflow.engine.progress import ProgressDisplay


class FakeTerminal:
    """Just enough of a terminal: wraps at ``width``, knows cursor-up-to-column-0 and clear-to-end."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows = [""]
        self.row = 0
        self.col = 0

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def write(self, text: str) -> int:
        for token in re.split(r"(\x1b\[\d+F|\x1b\[J|\n)", text):
            if token == "\n":
                self._newline()
            elif token == "\x1b[J":
                self.rows[self.row] = self.rows[self.row][: self.col]
                del self.rows[self.row + 1 :]
            elif token.startswith("\x1b["):
                self.row = max(0, self.row - int(token[2:-1]))
                self.col = 0
            else:
                for ch in token:
                    if self.col == self.width:
                        self._newline()
                    line = self.rows[self.row].ljust(self.col)
                    self.rows[self.row] = line[: self.col] + ch + line[self.col + 1 :]
                    self.col += 1
        return len(text)

    def _newline(self) -> None:
        self.row += 1
        self.col = 0
        if self.row == len(self.rows):
            self.rows.append("")

    def screen(self) -> list[str]:
        rows = list(self.rows)
        while rows and not rows[-1]:
            rows.pop()
        return rows


class FakeExecutor:
    """What the display reads: a plan, the coordinator's last checkpoint, every subtask's counters."""

    def __init__(self, plan: PhysicalPlan, records: int) -> None:
        self.plan = plan
        self.coordinator = SimpleNamespace(last_completed=None, completed_count=0, aborted_count=0)
        self.records = records

    def metrics(self) -> list[SubtaskMetrics]:
        found = []
        for task in self.plan.tasks:
            initial = SubtaskMetrics.initial(self.plan, (task.task_id, 0))
            found.append(
                dataclasses.replace(
                    initial,
                    source_records=self.records,
                    records_in=(self.records,) * len(initial.records_in),
                )
            )
        return found


@pytest.fixture
def plan(tmp_path) -> PhysicalPlan:
    job = Job("a-job-with-a-rather-long-name-for-a-narrow-terminal")
    job.source(FileSource(str(tmp_path)), name="read-every-input-file", uid="read").map(
        str.upper, name="shout", uid="shout"
    ).sink(FileSink(str(tmp_path / "out")), name="write", uid="write")
    return build_plan(job.graph, default_parallelism=1, max_parallelism=128)


def frame_height(display: ProgressDisplay, executor: FakeExecutor) -> int:
    return len(display.render(executor, 1.0))


def test_a_warning_between_frames_stays_on_screen_above_the_next_frame(
    plan: PhysicalPlan, onceflow_logger: logging.Logger
) -> None:
    terminal = FakeTerminal(width=200)
    onceflow_logger.handlers[:] = [logging.StreamHandler(terminal)]
    onceflow_logger.setLevel(logging.INFO)
    onceflow_logger.propagate = False
    display = ProgressDisplay(terminal, interactive=True, interval=0.0)
    executor = FakeExecutor(plan, 100)

    t0 = time.monotonic()
    display(executor, t0 + 1)
    onceflow_logger.warning("attempt 1 failed: boom; restarting from the latest checkpoint")
    display(executor, t0 + 2)
    display(executor, t0 + 3)
    display.close()

    screen = terminal.screen()
    assert screen[0] == "attempt 1 failed: boom; restarting from the latest checkpoint", screen
    assert len(screen) == 1 + frame_height(display, executor), screen


def test_frames_on_a_narrow_terminal_fit_one_row_per_line_and_do_not_stack(
    plan: PhysicalPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    terminal = FakeTerminal(width=30)
    display = ProgressDisplay(terminal, interactive=True, interval=0.0)
    executor = FakeExecutor(plan, 123_456_789)

    t0 = time.monotonic()
    for second in range(1, 5):
        display(executor, t0 + second)
    display.close()

    screen = terminal.screen()
    assert len(screen) == frame_height(display, executor), screen
    assert all(len(row) < 30 for row in screen), screen


def test_rates_after_a_restart_are_never_negative(plan: PhysicalPlan) -> None:
    terminal = FakeTerminal(width=200)
    display = ProgressDisplay(terminal, interactive=False, interval=0.0)
    before = FakeExecutor(plan, 50_000)
    after = FakeExecutor(plan, 1_000)  # the restarted attempt counts from zero again

    display.render(before, 1.0)
    lines = display.render(after, 1.0) + display.render(FakeExecutor(plan, 500), 1.0)

    rates = [float(m.replace(",", "")) for line in lines for m in re.findall(r"(-?[\d,]+)/s", line)]
    assert rates and min(rates) >= 0, lines
