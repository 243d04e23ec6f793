"""Run metrics: the one place that turns subtask counters into per-operator figures, and their exporters.

Every reader of run figures (the terminal progress display, the Prometheus
endpoint of ``--metrics-port``, the JSON lines of ``--metrics-file``) calls
:func:`read_metrics` on the executor. It reads what the executor already
reports (:class:`~onceflow.engine.executors.base.SubtaskMetrics`, counted per
batch by the subtasks; a worker process sends them to the runner twice a
second) and the coordinator's completed checkpoints: there is no second
counting path and nothing here runs per record.

:class:`MetricsReporter` is a tick hook (called after every scheduler round,
acting at most every ``interval``) that keeps counters monotonic across
restarts, observes each completed checkpoint and each barrier alignment once
into histograms, serves them over HTTP and appends JSON lines.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

from onceflow.engine.coordinator import CompletedCheckpoint
from onceflow.engine.executors.base import Executor, SubtaskMetrics, TickHook

__all__ = ["JobMetrics", "MetricsReporter", "OperatorMetrics", "chain_ticks", "read_metrics"]

log = logging.getLogger("onceflow")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)
ALIGNMENT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


@dataclass(frozen=True, slots=True)
class OperatorMetrics:
    """One operator's figures at one moment, summed over its subtasks (counters of this attempt)."""

    uid: str
    name: str
    task_id: int
    records_in: int
    """Records into the operator (a source: records it read)."""
    records_out: int
    """Records it handed on (to the next operator of its chain, or downstream)."""
    backpressure: float
    """Share of its task's steps blocked by a full downstream channel, worst subtask, 0..1."""
    watermark: float
    """Its task's event-time watermark, the minimum over subtasks (minus infinity: none yet)."""
    source_lag: int | None
    """Sources only: input left to read, in ``source_lag_unit``; None when the reader cannot tell."""
    source_lag_unit: str | None

    def watermark_lag(self, now_wall: float) -> float | None:
        """Seconds the watermark is behind the wall clock, or None without event time."""
        if not math.isfinite(self.watermark):
            return None
        return max(now_wall - self.watermark, 0.0)


@dataclass(frozen=True, slots=True)
class JobMetrics:
    """Everything a metrics reader shows, read at once from one executor (one attempt)."""

    job_name: str
    operators: tuple[OperatorMetrics, ...]
    last_checkpoint: CompletedCheckpoint | None
    checkpoints_completed: int
    checkpoints_aborted: int


def read_metrics(executor: Executor, subtasks: Sequence[SubtaskMetrics] | None = None) -> JobMetrics:
    """Combine the executor's subtask counters (or ``subtasks``, read from it) into per-operator figures.

    Operators come in task order, chain order within a task.
    """
    plan = executor.plan
    records_in: dict[str, int] = {}
    records_out: dict[str, int] = {}
    lags: dict[str, tuple[int, str | None] | None] = {}
    backpressure: dict[int, float] = {}
    watermarks: dict[int, float] = {}
    for m in executor.metrics() if subtasks is None else subtasks:
        task = plan.task(m.key[0])
        specs = task.operators
        counts = list(m.records_in)
        if task.is_source:
            uid = specs[0].uid
            records_in[uid] = records_in.get(uid, 0) + m.source_records
            counts.insert(0, m.source_records)
            backlog = m.backlog
            previous = lags.get(uid, (0, None))
            if backlog is None or previous is None:
                lags[uid] = None
            else:
                lags[uid] = (previous[0] + backlog.amount, backlog.unit)
            specs_after = specs[1:]
        else:
            specs_after = specs
        for spec, n in zip(specs_after, m.records_in):
            records_in[spec.uid] = records_in.get(spec.uid, 0) + n
        # Out of operator i is into operator i + 1; the last one's out went downstream.
        outs = [*counts[1:], m.records_out]
        for spec, n in zip(specs, outs):
            records_out[spec.uid] = records_out.get(spec.uid, 0) + n
        total = m.steps + m.blocked_steps
        ratio = m.blocked_steps / total if total else 0.0
        backpressure[task.task_id] = max(backpressure.get(task.task_id, 0.0), ratio)
        watermarks[task.task_id] = min(watermarks.get(task.task_id, math.inf), m.watermark)
    operators = []
    for task in plan.tasks:
        for op in task.operators:
            left = lags.get(op.uid)
            operators.append(
                OperatorMetrics(
                    uid=op.uid,
                    name=op.name,
                    task_id=task.task_id,
                    records_in=records_in.get(op.uid, 0),
                    records_out=records_out.get(op.uid, 0),
                    backpressure=backpressure.get(task.task_id, 0.0),
                    watermark=watermarks.get(task.task_id, -math.inf),
                    source_lag=left[0] if left else None,
                    source_lag_unit=left[1] if left else None,
                )
            )
    coordinator = executor.coordinator
    return JobMetrics(
        job_name=plan.job_name,
        operators=tuple(operators),
        last_checkpoint=coordinator.last_completed,
        checkpoints_completed=coordinator.completed_count,
        checkpoints_aborted=coordinator.aborted_count,
    )


def chain_ticks(*hooks: TickHook | None) -> TickHook | None:
    """Return one tick hook calling every given hook in order (None when there is none)."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def tick(executor: Executor, now: float) -> None:
        for hook in present:
            hook(executor, now)

    return tick


class MetricsReporter:
    """Tick hook: every ``interval`` reads :func:`read_metrics` and publishes it.

    Counters (records in/out, checkpoints) are kept monotonic over restarts:
    a new attempt's executor counts from zero, so the totals of the previous
    attempt are carried as a base. Histograms observe every completed
    checkpoint (duration, size) and every subtask's barrier alignment once.

    Publishing: ``port`` serves Prometheus text on ``/metrics`` (a daemon
    thread of ``prometheus-client``, reading only the last published figures);
    ``file`` gets one JSON line per interval.

    Cost: nothing per record or per batch; per interval one pass over the
    subtasks' counters.
    """

    def __init__(self, *, port: int | None = None, file: str | None = None, interval: float = 1.0) -> None:
        self.interval = interval
        self._file: IO[str] | None = open(file, "a", encoding="utf-8") if file else None
        self._last = -math.inf
        self._lock = threading.Lock()
        self._executor: Executor | None = None
        self._base_in: dict[str, int] = {}
        self._base_out: dict[str, int] = {}
        self._base_checkpoints = (0, 0)
        self._latest: JobMetrics | None = None
        self._totals: tuple[dict[str, int], dict[str, int], tuple[int, int]] = ({}, {}, (0, 0))
        self._seen_checkpoint = 0
        self._seen_alignment: dict[tuple[int, int], int] = {}
        self.server: Any = None
        self.port: int | None = None
        self._histograms = _Histograms()
        if port is not None:
            self._serve(port)

    # ------------------------------------------------------------ tick hook

    def __call__(self, executor: Executor, now: float) -> None:
        """Read and publish the figures if ``interval`` passed since the last time."""
        if now - self._last < self.interval:
            return
        self._last = now
        self.publish(executor)

    def publish(self, executor: Executor) -> JobMetrics:
        """Read the executor's figures now, observe new checkpoints and alignments, publish; return them."""
        subtasks = executor.metrics()
        metrics = read_metrics(executor, subtasks)
        with self._lock:
            if executor is not self._executor:
                self._carry_over()
                self._executor = executor
            self._latest = metrics
            self._totals = (
                {op.uid: self._base_in.get(op.uid, 0) + op.records_in for op in metrics.operators},
                {op.uid: self._base_out.get(op.uid, 0) + op.records_out for op in metrics.operators},
                (
                    self._base_checkpoints[0] + metrics.checkpoints_completed,
                    self._base_checkpoints[1] + metrics.checkpoints_aborted,
                ),
            )
            self._observe(executor, subtasks)
        if self._file is not None:
            self._file.write(json.dumps(self.snapshot()) + "\n")
            self._file.flush()
        return metrics

    def _carry_over(self) -> None:
        """Start a new attempt's counters from the previous attempt's totals."""
        self._base_in, self._base_out, self._base_checkpoints = self._totals
        self._seen_alignment.clear()

    def _observe(self, executor: Executor, subtasks: Sequence[SubtaskMetrics]) -> None:
        for chk in executor.coordinator.recent_completed:
            if chk.checkpoint_id > self._seen_checkpoint:
                self._seen_checkpoint = chk.checkpoint_id
                self._histograms.checkpoint(chk)
        for m in subtasks:
            seen = self._seen_alignment.get(m.key, 0)
            for checkpoint_id, seconds in m.alignments:
                if checkpoint_id > seen:
                    self._histograms.alignment(seconds)
                    seen = checkpoint_id
            self._seen_alignment[m.key] = seen

    # ------------------------------------------------------------ readers

    def snapshot(self) -> dict[str, Any]:
        """Return the last published figures as plain data (what a JSON line holds)."""
        with self._lock:
            metrics = self._latest
            totals_in, totals_out, (completed, aborted) = self._totals
            histograms = self._histograms.as_dict()
        if metrics is None:
            return {}
        now_wall = time.time()
        chk = metrics.last_checkpoint
        return {
            "time": now_wall,
            "job": metrics.job_name,
            "operators": [
                {
                    "uid": op.uid,
                    "name": op.name,
                    "records_in": totals_in.get(op.uid, 0),
                    "records_out": totals_out.get(op.uid, 0),
                    "backpressure": round(op.backpressure, 4),
                    "watermark_lag_seconds": op.watermark_lag(now_wall),
                    "source_lag": op.source_lag,
                    "source_lag_unit": op.source_lag_unit,
                }
                for op in metrics.operators
            ],
            "checkpoints_completed": completed,
            "checkpoints_aborted": aborted,
            "last_checkpoint": asdict(chk) if chk is not None else None,
            "histograms": histograms,
        }

    def collect(self) -> Iterator[Any]:
        """Prometheus collector protocol: yield every metric family from the last published figures."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        data = self.snapshot()
        labels = ["job", "operator", "uid"]
        records_in = CounterMetricFamily("onceflow_records_in", "Records into the operator", labels=labels)
        records_out = CounterMetricFamily("onceflow_records_out", "Records handed on", labels=labels)
        backpressure = GaugeMetricFamily(
            "onceflow_backpressure_ratio", "Share of steps blocked by a full channel", labels=labels
        )
        watermark_lag = GaugeMetricFamily(
            "onceflow_watermark_lag_seconds", "Wall clock minus event-time watermark", labels=labels
        )
        source_lag = GaugeMetricFamily(
            "onceflow_source_lag", "Input left to read by a source", labels=[*labels, "unit"]
        )
        for op in data.get("operators", []):
            values = [data["job"], op["name"], op["uid"]]
            records_in.add_metric(values, op["records_in"])
            records_out.add_metric(values, op["records_out"])
            backpressure.add_metric(values, op["backpressure"])
            if op["watermark_lag_seconds"] is not None:
                watermark_lag.add_metric(values, op["watermark_lag_seconds"])
            if op["source_lag"] is not None:
                source_lag.add_metric([*values, op["source_lag_unit"]], op["source_lag"])
        yield from (records_in, records_out, backpressure, watermark_lag, source_lag)
        if data:
            job = [data["job"]]
            completed = CounterMetricFamily(
                "onceflow_checkpoints_completed", "Checkpoints completed", labels=["job"]
            )
            completed.add_metric(job, data["checkpoints_completed"])
            aborted = CounterMetricFamily(
                "onceflow_checkpoints_aborted", "Checkpoints aborted", labels=["job"]
            )
            aborted.add_metric(job, data["checkpoints_aborted"])
            yield completed
            yield aborted
        yield from self._histograms.families(data.get("job", ""))

    def _serve(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self.server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        self.port = self.server.server_port

    def close(self) -> None:
        """Publish a last reading (the final counters), stop serving and close the file; never raises."""
        if self._executor is not None:
            try:
                self.publish(self._executor)
            except Exception:  # noqa: BLE001 - closing must not raise
                log.debug("the last metrics reading failed", exc_info=True)
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()


class _Histograms:
    """Checkpoint duration, size and alignment time, as cumulative bucket counts (Prometheus style)."""

    def __init__(self) -> None:
        self._data = {
            "checkpoint_duration_seconds": _Buckets(DURATION_BUCKETS),
            "checkpoint_size_bytes": _Buckets(SIZE_BUCKETS),
            "checkpoint_alignment_seconds": _Buckets(ALIGNMENT_BUCKETS),
        }

    def checkpoint(self, chk: CompletedCheckpoint) -> None:
        self._data["checkpoint_duration_seconds"].observe(chk.duration_s)
        self._data["checkpoint_size_bytes"].observe(chk.size_bytes)

    def alignment(self, seconds: float) -> None:
        self._data["checkpoint_alignment_seconds"].observe(seconds)

    def as_dict(self) -> dict[str, Any]:
        return {name: b.as_dict() for name, b in self._data.items()}

    def families(self, job: str) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        for name, b in self._data.items():
            family = HistogramMetricFamily(f"onceflow_{name}", name.replace("_", " "), labels=["job"])
            family.add_metric([job], b.cumulative(), b.total)
            yield family


class _Buckets:
    """One histogram: counts per upper bound, plus ``+Inf``, and the sum of observations."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"count": sum(self.counts), "sum": round(self.total, 6), "buckets": dict(self.cumulative())}
