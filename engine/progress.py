"""Live progress of a run: a redrawn table on a terminal, plain log lines otherwise.

It reads the same per-operator figures as the metrics exporters
(:func:`~onceflow.engine.metrics.read_metrics`: records per operator, steps
blocked by full channels) and the coordinator's last checkpoint; it never
touches the per-record path.

On a terminal the frame is redrawn in place, which must never eat other
output: a log line (a restart warning) first erases the frame, so it stays on
screen above the next one; every line is cut to the terminal's width, because a
wrapped line takes two rows and the cursor would not go back over both. After a
restart the counters start again, so a rate is never the difference across it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import IO

from onceflow.engine.executors.base import Executor
from onceflow.engine.metrics import read_metrics

_ERASE_FRAME = "\x1b[{n}F\x1b[J"
"""Move the cursor to the start of the line ``n`` rows up, then clear to the end of the screen."""


class ProgressDisplay:
    """Called by the executor on every scheduler round; renders at most every ``interval``."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        interactive: bool | None = None,
        interval: float | None = None,
        columns: Callable[[], int] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = interval if interval is not None else (0.5 if self.interactive else 5.0)
        self._columns = columns or self._terminal_columns
        self._last = time.monotonic()
        self._start = self._last
        self._prev_counts: dict[str, int] = {}
        self._executor: Executor | None = None
        self._drawn = 0
        self._logger = logger or logging.getLogger("onceflow")
        if self.interactive:
            self._logger.addFilter(self._erase_before_log)

    def close(self) -> None:
        """Stop erasing the frame before log lines (the frame itself stays on screen)."""
        self._logger.removeFilter(self._erase_before_log)

    def _erase_before_log(self, record: logging.LogRecord) -> bool:
        """Logger filter: erase the frame before a log line is written, so the next frame cannot hide it."""
        if self._drawn:
            self.stream.write(_ERASE_FRAME.format(n=self._drawn))
            self.stream.flush()
            self._drawn = 0
        return True

    def _terminal_columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return shutil.get_terminal_size().columns

    def __call__(self, executor: Executor, now: float) -> None:
        """Render if the interval passed."""
        if now - self._last < self.interval:
            return
        elapsed = now - self._last
        self._last = now
        lines = self.render(executor, elapsed)
        if self.interactive:
            # One row per line: the last column stays empty, so no terminal wraps or scrolls early.
            width = max(self._columns() - 1, 10)
            lines = [line[:width] for line in lines]
            if self._drawn:
                self.stream.write(_ERASE_FRAME.format(n=self._drawn))
            self.stream.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            ops = (" ".join(line.split()) for line in lines[1:])
            self.stream.write("onceflow: " + " | ".join([lines[0], *ops]) + "\n")
        self.stream.flush()

    def render(self, executor: Executor, elapsed: float) -> list[str]:
        """Return the lines of one progress frame."""
        coordinator = executor.coordinator
        chk = coordinator.last_completed
        chk_text = (
            f"checkpoint {chk.checkpoint_id} ({chk.duration_s * 1000:.0f} ms, {_size(chk.size_bytes)})"
            if chk
            else "no checkpoint yet"
        )
        lines = [f"[{time.monotonic() - self._start:6.1f}s] {executor.plan.job_name}: {chk_text}"]
        if executor is not self._executor:
            # A restarted attempt (a new executor) counts from zero again.
            self._executor = executor
            self._prev_counts.clear()
        operators = read_metrics(executor).operators
        last_of_task = {op.task_id: op.uid for op in operators}
        for op in operators:
            n = op.records_in
            previous = self._prev_counts.get(op.uid, 0)
            # Counters only grow within an attempt; smaller means they started again.
            delta = n - previous if n >= previous else n
            rate = delta / elapsed if elapsed > 0 else 0.0
            self._prev_counts[op.uid] = n
            bp = op.backpressure
            lag = op.source_lag
            lines.append(
                f"  {op.name:<16} {n:>12,} in  {rate:>12,.0f}/s"
                + (f"  backpressure {bp:.0%}" if last_of_task[op.task_id] == op.uid and bp >= 0.01 else "")
                + (f"  {_amount(lag, op.source_lag_unit)} left" if lag else "")
            )
        return lines


def _amount(n: int, unit: str | None) -> str:
    return _size(n) if unit == "bytes" else f"{n:,} {unit or ''}".rstrip()


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
