"""The process executor: subtasks in worker processes, so parallelism uses every core.

Subtask ``i`` of every task runs in worker ``i % workers`` (``workers`` is the
largest parallelism in the plan), so forward edges stay inside one process and
only repartitioning edges cross processes. Each worker steps its subtasks with
the same cooperative loop as the local executor. The runner process keeps the
checkpoint coordinator and talks to workers over control pipes.

Workers are forked from the runner after the job was built and its checkpoint
loaded, so user functions never need pickling; only batches and control
elements cross process boundaries, pickled (protocol 5) over pipes. Each
cross-process channel has its own credit count (``capacity`` elements in
flight), so backpressure holds across processes without a shared budget that a
blocked channel could starve. A receiver thread per worker drains the pipes,
so two workers sending to each other can never block each other.

A worker that dies (``kill -9`` of one worker) fails the attempt: the runner
stops the others and restarts from the latest completed checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from onceflow.engine.channels import LocalChannel
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.engine.errors import (
    CheckpointDirectoryError,
    CheckpointFailureReason,
    Failure,
    WorkerError,
    classify,
)
from onceflow.engine.executors._wiring import (
    Attempt,
    ChannelId,
    ExecutionSettings,
    SubtaskSettings,
    build_subtask,
    open_subtask,
    plan_edges,
)
from onceflow.engine.plan import PhysicalPlan
from onceflow.engine.task import Subtask, SubtaskStatus
from onceflow.operators.base import RestoredState
from onceflow.state_backends.errors import ErrorDomain

log = logging.getLogger("onceflow")

_METRICS_EVERY = 0.5
_SYMPTOMS = {"BrokenPipeError", "ConnectionResetError", "EOFError"}


# -- channels across processes ----------------------------------------------------------


class _Transport:
    """A worker's pipes to its peers and the runner, and the thread that reads them."""

    def __init__(self, control: Connection, peers: dict[int, Connection]) -> None:
        self.control = control
        self.peers = peers
        self.inboxes: dict[ChannelId, deque] = {}
        self.outputs: dict[ChannelId, _RemoteOutput] = {}
        self.commands: deque = deque()
        self.wakeup = threading.Event()
        self.closed = False
        self._thread = threading.Thread(target=self._receive, name="onceflow-receiver", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def _receive(self) -> None:
        try:
            self._receive_loop()
        except BaseException as exc:  # noqa: BLE001 - handed to the worker's main loop
            self.commands.append(("receiver-failed", exc))
            self.wakeup.set()

    def _receive_loop(self) -> None:
        conns = [self.control, *self.peers.values()]
        while conns:
            for conn in wait(conns):
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    conns.remove(conn)
                    if conn is self.control:
                        self.closed = True
                        self.commands.append(("stop",))
                        self.wakeup.set()
                    continue
                kind = message[0]
                if kind == "d":
                    self.inboxes[message[1]].append(message[2])
                elif kind == "c":
                    self.outputs[message[1]].acked += message[2]
                else:
                    self.commands.append(message)
                self.wakeup.set()


class _RemoteOutput:
    """The producer end of a channel to another worker; ``capacity`` elements may be in flight."""

    __slots__ = ("conn", "cid", "capacity", "sent", "acked")

    def __init__(self, conn: Connection, cid: ChannelId, capacity: int) -> None:
        self.conn = conn
        self.cid = cid
        self.capacity = capacity
        self.sent = 0
        self.acked = 0  # written by the receiver thread only

    def put(self, element: Any) -> None:
        self.conn.send(("d", self.cid, element))
        self.sent += 1

    def has_room(self) -> bool:
        return self.sent - self.acked < self.capacity

    def poll(self) -> Any:
        msg = "the producer end of a channel cannot be read"
        raise RuntimeError(msg)

    def __len__(self) -> int:
        return self.sent - self.acked


class _RemoteInput:
    """The consumer end of a channel from another worker; every element read returns a credit."""

    __slots__ = ("conn", "cid", "queue")

    def __init__(self, conn: Connection, cid: ChannelId, queue: deque) -> None:
        self.conn = conn
        self.cid = cid
        self.queue = queue

    def put(self, element: Any) -> None:
        msg = "the consumer end of a channel cannot be written"
        raise RuntimeError(msg)

    def has_room(self) -> bool:
        return True

    def poll(self) -> Any:
        if not self.queue:
            return None
        element = self.queue.popleft()
        self.conn.send(("c", self.cid, 1))
        return element

    def __len__(self) -> int:
        return len(self.queue)


# -- the worker ---------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this worker when the runner dies (Linux only).

    The runner may die between the fork and this call; then the worker is
    already orphaned and exits at once instead of running unsupervised.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


class _Worker:
    def __init__(
        self,
        index: int,
        workers: int,
        plan: PhysicalPlan,
        restored: dict[tuple[str, int], RestoredState],
        settings: ExecutionSettings,
        subtask_settings: SubtaskSettings,
        store: CheckpointStore,
        transport: _Transport,
    ) -> None:
        self.index = index
        self.workers = workers
        self.plan = plan
        self.settings = settings
        self.transport = transport
        self.writer = SnapshotWriter(store, plan.max_parallelism)
        self.local: dict[ChannelId, LocalChannel] = {}
        self.subtasks: list[Subtask] = []
        self.sources: list[Subtask] = []
        self._edges = plan_edges(plan)
        for task in plan.tasks:
            for i in range(task.parallelism):
                if i % workers != index:
                    continue
                subtask = build_subtask(plan, task, i, self._channel, self.writer.submit, subtask_settings)
                self.subtasks.append(subtask)
                if task.is_source:
                    self.sources.append(subtask)
        # every inbox exists now: only from here on may peer messages be dispatched
        transport.start()
        for subtask in self.subtasks:
            open_subtask(subtask, plan, restored, subtask_settings)
        self._drained_sent: set[tuple[int, int]] = set()

    def _channel(self, cid: ChannelId) -> Any:
        edge = self._edges[cid.edge]
        src = cid.src % self.workers
        dst = cid.dst % self.workers
        if src == dst == self.index:
            if cid not in self.local:
                self.local[cid] = LocalChannel(self.settings.channel_capacity, str(cid))
            return self.local[cid]
        _ = edge
        if src == self.index:
            out = _RemoteOutput(self.transport.peers[dst], cid, self.settings.channel_capacity)
            self.transport.outputs[cid] = out
            return out
        queue: deque = deque()
        self.transport.inboxes[cid] = queue
        return _RemoteInput(self.transport.peers[src], cid, queue)

    def metrics(self) -> list[tuple]:
        return [
            (st.key, st.source_records, list(st.records_in), st.steps, st.blocked_steps)
            for st in self.subtasks
        ]

    def run(self) -> None:
        control = self.transport.control
        acks = self.writer.acks
        last_metrics = time.monotonic()
        commands = self.transport.commands
        stopping = False
        wakeup = self.transport.wakeup
        ticking = [st for st in self.subtasks if st.needs_ticks]
        while True:
            # clear before looking, so a message arriving from now on wakes the wait below
            wakeup.clear()
            progressed = False
            for subtask in self.subtasks:
                while subtask.step():
                    progressed = True
                    if subtask.reader is not None:
                        break
            if ticking:
                now = time.monotonic()
                for subtask in ticking:
                    subtask.tick(now)
            while acks.qsize():
                ack = acks.get_nowait()
                self.writer.outstanding -= 1
                if ack.error is not None:
                    control.send(("decline", ack.checkpoint_id, ack.key, repr(ack.error)))
                else:
                    control.send(("ack", ack.checkpoint_id, ack.key, ack.handles))
            for subtask in self.subtasks:
                if subtask.status is SubtaskStatus.DRAINED and subtask.key not in self._drained_sent:
                    self._drained_sent.add(subtask.key)
                    control.send(("drained", subtask.key))
            while commands:
                command = commands.popleft()
                kind = command[0]
                if kind == "trigger":
                    for source in self.sources:
                        source.trigger_checkpoint(command[1], command[2])
                    progressed = True
                elif kind == "complete":
                    for subtask in self.subtasks:
                        subtask.notify_checkpoint_complete(command[1])
                elif kind == "abort":
                    for subtask in self.subtasks:
                        subtask.notify_checkpoint_aborted(command[1])
                    self.writer.delete_later(command[1])
                elif kind == "stop":
                    stopping = True
                elif kind == "receiver-failed":
                    raise command[1]
            now = time.monotonic()
            if now - last_metrics >= _METRICS_EVERY or stopping:
                last_metrics = now
                if not self.transport.closed:
                    control.send(("metrics", self.metrics()))
            if stopping:
                return
            if not progressed:
                wakeup.wait(0.005 if self.writer.outstanding or ticking else 0.05)

    def close(self) -> None:
        for subtask in self.subtasks:
            subtask.close()
        self.writer.shutdown()


def _worker_main(
    index: int,
    workers: int,
    plan: PhysicalPlan,
    restored: dict[tuple[str, int], RestoredState],
    settings: ExecutionSettings,
    subtask_settings: SubtaskSettings,
    store_url: str,
    control: Connection,
    peers: dict[int, Connection],
    parent_pid: int,
) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `kill -USR1` dumps a hung worker; not possible when stderr has no file descriptor (a
    # captured or notebook stream), and that must not kill the worker before it can report
    with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    transport = _Transport(control, peers)
    worker = None
    code = 0
    try:
        store = CheckpointStore(store_url, plan.job_name)
        worker = _Worker(index, workers, plan, restored, settings, subtask_settings, store, transport)
        worker.run()
        worker.close()
        control.send(("stopped",))
    except BaseException as exc:  # noqa: BLE001 - reported to the runner, then exit
        code = 1
        with contextlib.suppress(Exception):
            control.send(("error", _describe(exc)))
        if worker is not None:
            worker.close()
    finally:
        logging.shutdown()
        os._exit(code)


def _describe(exc: BaseException) -> dict[str, Any]:
    cause = exc.__cause__
    failure = classify(exc)
    return {
        "message": str(exc),
        "type": type(exc).__name__,
        "operator": getattr(exc, "operator", "worker"),
        "uid": getattr(exc, "uid", ""),
        "subtask_index": getattr(exc, "subtask_index", -1),
        "checkpoint_id": getattr(exc, "checkpoint_id", None),
        "domain": failure.domain.value,
        "retryable": failure.retryable,
        "usage": failure.usage,
        "cause_type": type(cause).__name__ if cause is not None else "",
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _widen(*conns: Connection, size: int = 4 << 20) -> None:
    """Give a socket pipe large kernel buffers so senders rarely block on a busy receiver."""
    for conn in conns:
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            sock.close()


# -- the runner side --------------------------------------------------------------------


class _SubtaskView:
    """What the runner knows of a subtask in a worker: its identity and latest metrics."""

    def __init__(self, subtask_key: tuple[int, int], plan: PhysicalPlan) -> None:
        task = plan.task(subtask_key[0])
        self.key = subtask_key
        self.task = task
        self.index = subtask_key[1]
        self.reader = True if task.is_source else None
        self.specs = task.operators[1:] if task.is_source else task.operators
        self.records_in = [0] * len(self.specs)
        self.source_records = 0
        self.steps = 0
        self.blocked_steps = 0
        self.status = SubtaskStatus.RUNNING


class ProcessExecutor:
    """Runs a plan in worker processes; same interface as ``LocalExecutor``."""

    def __init__(self, attempt: Attempt, *, on_tick: Callable[[Any, float], None] | None = None) -> None:
        plan, store, settings = attempt.plan, attempt.store, attempt.settings
        if "memory" in store.fs.protocol:
            msg = (
                "the process executor needs checkpoint storage that worker processes share "
                f"(a local path or s3://), not {store.url!r}"
            )
            raise CheckpointDirectoryError(msg)
        self.plan = plan
        self.store = store
        self.settings = settings
        self._on_tick = on_tick
        self.workers_count = max(t.parallelism for t in plan.tasks)
        self.subtasks = [_SubtaskView((t.task_id, i), plan) for t in plan.tasks for i in range(t.parallelism)]
        self.sources = [v for v in self.subtasks if v.reader]
        self._views = {v.key: v for v in self.subtasks}
        self.coordinator = attempt.coordinator(
            [v.key for v in self.subtasks],
            trigger_sources=self._trigger_sources,
            notify_complete=lambda n: self._broadcast(("complete", n)),
            notify_abort=lambda n: self._broadcast(("abort", n)),
        )
        subtask_settings = attempt.subtask_settings()
        ctx = multiprocessing.get_context("fork")
        n = self.workers_count
        ends: dict[tuple[int, int], Connection] = {}
        for a in range(n):
            for b in range(a + 1, n):
                ends[a, b], ends[b, a] = ctx.Pipe(duplex=True)
                _widen(ends[a, b], ends[b, a])
        self.controls: list[Connection] = []
        self.processes: list[Any] = []
        for w in range(n):
            parent_end, child_end = ctx.Pipe(duplex=True)
            peers = {b: ends[w, b] for b in range(n) if b != w}
            proc = ctx.Process(
                target=_worker_main,
                args=(
                    w,
                    n,
                    plan,
                    attempt.restored,
                    settings,
                    subtask_settings,
                    store.url,
                    child_end,
                    peers,
                    os.getpid(),
                ),
                name=f"onceflow-worker-{w}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.controls.append(parent_end)
            self.processes.append(proc)
        for conn in ends.values():
            conn.close()
        self._stopped: set[int] = set()
        self._source_workers = sorted({v.index % n for v in self.sources})

    def _send(self, worker: int, message: tuple) -> None:
        # A worker that already failed has closed its pipe; its error message or
        # its exit is picked up by the run loop, which reports the real cause.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
            self.controls[worker].send(message)

    def _trigger_sources(self, checkpoint_id: int, final: bool) -> None:
        for w in self._source_workers:
            self._send(w, ("trigger", checkpoint_id, final))

    def _broadcast(self, message: tuple) -> None:
        for w in range(len(self.controls)):
            if w not in self._stopped:
                self._send(w, message)

    def _handle(self, worker: int, message: tuple) -> None:
        kind = message[0]
        coordinator = self.coordinator
        if kind == "ack":
            coordinator.acknowledge(message[1], tuple(message[2]), message[3])
        elif kind == "decline":
            coordinator.decline(
                message[1],
                CheckpointFailureReason.WRITE_FAILED,
                f"writing state of subtask {message[2]} failed: {message[3]}",
            )
        elif kind == "drained":
            self._views[tuple(message[1])].status = SubtaskStatus.DRAINED
        elif kind == "metrics":
            for key, source_records, records_in, steps, blocked in message[1]:
                view = self._views[tuple(key)]
                view.source_records, view.records_in = source_records, records_in
                view.steps, view.blocked_steps = steps, blocked
        elif kind == "stopped":
            self._stopped.add(worker)
        elif kind == "error":
            info = message[1]
            log.debug("worker %d failed:\n%s", worker, info["traceback"])
            raise WorkerError(
                info["message"]
                if info["type"].endswith("Error") and info["operator"] != "worker"
                else f"worker {worker} failed: {info['type']}: {info['message']}",
                failure=Failure(ErrorDomain(info["domain"]), info["retryable"], info["usage"]),
                cause_type=info["cause_type"],
                operator=info["operator"],
                uid=info["uid"],
                subtask_index=info["subtask_index"],
                checkpoint_id=info["checkpoint_id"],
            )

    def run(self) -> None:
        """Coordinate checkpoints until the final one is committed and every worker stopped."""
        coordinator = self.coordinator
        clock = time.monotonic
        stop_sent = False
        try:
            while len(self._stopped) < len(self.processes):
                sentinels = [p.sentinel for p in self.processes]
                ready = wait([*self.controls, *sentinels], timeout=0.02)
                exited = {w for w, sentinel in enumerate(sentinels) if sentinel in ready}
                errors: list[WorkerError] = []
                for w, conn in enumerate(self.controls):
                    if conn not in ready and w not in exited:
                        continue
                    try:
                        while conn.poll():
                            self._handle(w, conn.recv())
                    except WorkerError as exc:
                        errors.append(exc)
                    except (EOFError, OSError):
                        pass
                    if w in exited and w not in self._stopped and not errors:
                        # its sentinel fires as it exits, maybe before it can be reaped
                        self.processes[w].join(timeout=1.0)
                        code = self.processes[w].exitcode
                        errors.append(
                            WorkerError(
                                f"worker process {w} died (exit code {code})",
                                failure=Failure(ErrorDomain.EXTERNAL, retryable=True, usage=False),
                                operator=f"worker {w}",
                                uid="",
                                subtask_index=w,
                                checkpoint_id=None,
                            )
                        )
                if errors:
                    # a peer's broken pipe is a symptom; prefer the failure that caused it
                    errors.sort(key=lambda e: e.cause_type in _SYMPTOMS or "Broken pipe" in str(e))
                    raise errors[0]
                if coordinator.finished:
                    if not stop_sent:
                        self._broadcast(("stop",))
                        stop_sent = True
                    continue
                now = clock()
                coordinator.tick(now, drained=all(v.status is SubtaskStatus.DRAINED for v in self.subtasks))
                if self._on_tick is not None:
                    self._on_tick(self, now)
        finally:
            self.close()

    def close(self) -> None:
        """Stop every worker (kill those that do not stop) and close the pipes; never raises."""
        for w, proc in enumerate(self.processes):
            if proc.is_alive() and w not in self._stopped:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.processes:
            proc.join(timeout=5)
        for conn in self.controls:
            with contextlib.suppress(OSError):
                conn.close()
