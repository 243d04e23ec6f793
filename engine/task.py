"""One subtask: a chain of operators stepped one input element at a time.

A subtask owns its operators, its input channels and its output gates. The
executor calls ``step`` repeatedly; each call moves one batch (or one control
element) through the chain, so executors stay in charge of scheduling. The
chain is compiled once into local references: each operator's declared
``Capability`` flags become the index lists ``_wm_ops``, ``_time_ops``,
``_side_ops`` and ``_arrow_input``, so per batch the cost is a few attribute
loads and one call per operator, and no operator is ever probed for a hook.

Bad records take an error path that the loop never enters otherwise: an
operator whose user function raised reports which records failed
(``BatchFailure``); :meth:`Subtask._isolate` fails the attempt naming the
record, or sends it to the dead-letter edge and goes on with the rest.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from onceflow.engine.alignment import AlignmentResult, BarrierAligner
from onceflow.engine.dead_letters import UNKEYED, dead_letter, describe_position, describe_record
from onceflow.engine.elements import END_OF_DATA, Barrier, Batch, EndOfData, Watermark
from onceflow.engine.errors import OperatorError
from onceflow.engine.faults import CRASH_POINTS
from onceflow.engine.graph import DEAD_LETTER_TAG, OnError, OperatorSpec
from onceflow.engine.plan import TaskSpec
from onceflow.operators.bad_records import BadInput, BatchFailure, TimerFailure
from onceflow.operators.base import Capability, Operator, OperatorSnapshot, RestoredState, SourceReader
from onceflow.operators.watermarks import InputWatermarks, WatermarkUpdate
from onceflow.state_backends.errors import ErrorDomain, OnceflowError

log = logging.getLogger("onceflow")

SnapshotSink = Callable[[int, tuple[int, int], list[tuple[str, OperatorSnapshot]]], None]
"""Receives ``(checkpoint_id, subtask_key, [(uid, snapshot)])`` for asynchronous writing."""


class SubtaskStatus(Enum):
    """Life cycle of a subtask within one attempt."""

    CREATED = "created"
    RUNNING = "running"
    DRAINED = "drained"
    """All input ended and ``finish`` ran; still forwards barriers until the final checkpoint."""
    STOPPED = "stopped"
    """A source that stopped reading (graceful stop); its input did not end, it still takes checkpoints."""
    CLOSED = "closed"


class Subtask:
    """Runs one subtask of a task: source reader or input channels, chain, output gates."""

    def __init__(
        self,
        *,
        task: TaskSpec,
        index: int,
        reader: SourceReader | None,
        operators: list[Operator],
        inputs: list[Any],
        gates: list[Any],
        snapshot_sink: SnapshotSink,
        batch_size: int,
        input_sides: list[int] | None = None,
    ) -> None:
        self.task = task
        self.index = index
        self.key = (task.task_id, index)
        self.reader = reader
        self.ops = operators
        self.specs = task.operators[1:] if reader is not None else task.operators
        self.inputs = inputs
        self.gates = [g for g in gates if g.tag is None]
        self.side_gates: dict[str, list[Any]] = {}
        for gate in gates:
            if gate.tag is not None:
                self.side_gates.setdefault(gate.tag, []).append(gate)
        self.all_gates = gates
        self.snapshot_sink = snapshot_sink
        self.batch_size = batch_size
        self.status = SubtaskStatus.CREATED
        self.aligner = BarrierAligner(len(inputs)) if inputs else None
        self._next_input = 0
        self._keyed_head = task.keyed_input
        self.current_checkpoint: int | None = None
        # event time: see _on_watermark / _advance_watermark
        self.watermark = -math.inf
        self._input_watermarks = InputWatermarks(len(inputs))
        self._input_idle = self._input_watermarks.idle  # read per batch; changed only through the valve
        self._idle_out = False
        # the chain compiled: each operator's declared capabilities, read once
        capabilities = [op.capabilities for op in operators]
        self._wm_ops = [i for i, c in enumerate(capabilities) if Capability.EMITS_WATERMARKS in c]
        self._emitted = dict.fromkeys(self._wm_ops, -math.inf)
        self._time_ops = [i for i, c in enumerate(capabilities) if Capability.PROCESSING_TIME in c]
        self._side_ops = [i for i, c in enumerate(capabilities) if Capability.SIDE_OUTPUTS in c]
        self._holding_ops = [i for i, c in enumerate(capabilities) if Capability.HOLDS_RECORDS in c]
        self._arrow_input = [Capability.ARROW_INPUT in c for c in capabilities]
        self._stamping_tail = (
            len(operators) - 1 if operators and Capability.TIMESTAMPED_OUTPUT in capabilities[-1] else -2
        )
        """The chain's last operator if it stamps its outputs (its batches carry their times), else -2."""
        self._heads = self._input_heads(input_sides or [0] * len(inputs))
        self._last_tick = 0.0
        self._isolating_source_batch = False
        """Error path: :meth:`_isolate` is pushing the rest of a source batch down the chain."""
        # metrics, read by the progress display
        self.records_in = [0] * len(operators)
        self.records_out = 0
        self.source_records = 0
        self.steps = 0
        self.blocked_steps = 0
        self.alignments: deque[tuple[int, float]] = deque(maxlen=16)
        """``(checkpoint_id, seconds)`` from a checkpoint's first barrier to the last, newest last."""
        self._alignment_start = 0.0

    def _input_heads(self, sides: list[int]) -> list[Callable[[list, list], list] | None]:
        """Per input channel, the head's method for its keyed batches (None: ``process_keyed_batch``).

        A two-input head (``Capability.TWO_INPUTS``: connect and the joins)
        takes the second input's batches through ``process_keyed_batch2``.
        Barriers and watermarks need no such routing: alignment and the
        watermark minimum already run over the channels of both inputs.
        """
        if not self.ops or Capability.TWO_INPUTS not in self.ops[0].capabilities:
            if any(sides):
                msg = f"task {self.task.name!r} has a second input but its head takes one input"
                raise ValueError(msg)
            return [None] * len(sides)
        head = self.ops[0]
        return [head.process_keyed_batch2 if side else None for side in sides]

    # -- life cycle ----------------------------------------------------------

    def _all_operators(self) -> list[SourceReader | Operator]:
        return ([self.reader] if self.reader else []) + self.ops

    def open(self, contexts: list[Any], restored: dict[str, RestoredState]) -> None:
        """Open every operator (reader first) and restore those with state."""
        all_ops = self._all_operators()
        for op, spec, ctx in zip(all_ops, self.task.operators, contexts):
            try:
                op.open(ctx)
                state = restored.get(spec.uid)
                if state is not None:
                    CRASH_POINTS.hit("during_restore")
                    op.restore_state(state)
            except Exception as exc:
                raise self._error(spec, exc, "open") from exc
        self.status = SubtaskStatus.RUNNING

    def close(self) -> None:
        """Close every operator; never raises."""
        for op in self._all_operators():
            try:
                op.close()
            except Exception:  # noqa: BLE001 - close must not raise
                log.exception("closing %s failed", type(op).__name__)
        self.status = SubtaskStatus.CLOSED

    # -- stepping ------------------------------------------------------------

    def has_output_room(self) -> bool:
        """Whether every downstream channel can take more (else: backpressure)."""
        for gate in self.all_gates:
            if not gate.has_room():
                return False
        return True

    @property
    def needs_ticks(self) -> bool:
        """Whether an operator of the chain reacts to processing time (timers, idleness)."""
        return bool(self._time_ops)

    def tick(self, now: float) -> None:
        """Let processing-time operators fire timers or detect idleness (at most every 10 ms)."""
        if now - self._last_tick < 0.01 or self.status is not SubtaskStatus.RUNNING:
            return
        self._last_tick = now
        for i in self._time_ops:
            out = self._time_hook(i, self.ops[i].on_processing_time, now, "timer")
            if out:
                self._push(out, None, i + 1)
            elif self._side_ops:
                self._emit_side_outputs()
        if self._wm_ops:
            self._forward_emitted()

    def step(self) -> bool:
        """Move one element through the chain; return whether anything happened."""
        if self.status is not SubtaskStatus.RUNNING and self.reader is not None:
            return False
        if self.gates and not self.has_output_room():
            self.blocked_steps += 1
            return False
        if self.reader is not None:
            return self._step_source(self.reader)
        if self.aligner is None:
            return False  # no source and no input: nothing can ever arrive
        return self._step_input(self.aligner)

    def _step_source(self, reader: SourceReader) -> bool:
        try:
            records = reader.poll_batch(self.batch_size)
        except BadInput as bad:
            records = self._bad_input(bad)
            if not len(records):
                return True
        except Exception as exc:
            raise self._error(self.task.operators[0], exc, "read") from exc
        if records is None:
            self._drain()
            return True
        if not len(records):
            return False
        self.steps += 1
        self.source_records += len(records)
        self._push(records, None, 0)
        if self._wm_ops:
            self._forward_emitted()
        return True

    def _step_input(self, aligner: BarrierAligner) -> bool:
        inputs = self.inputs
        n = len(inputs)
        blocked = aligner.blocked
        i = self._next_input
        for _ in range(n):
            channel = inputs[i]
            current = i
            i = i + 1 if i + 1 < n else 0
            if blocked[current] or not len(channel):
                continue
            self._next_input = i
            element = channel.poll()
            kind = type(element)
            self.steps += 1
            if kind is Batch:
                if self._input_idle[current]:
                    self._input_watermarks.on_records(current)
                if self._keyed_head:
                    self.ops[0].input_timestamps = element.timestamps
                self._push(element.records, element.keys, 0, self._heads[current])
                if self._wm_ops:
                    self._forward_emitted()
            elif kind is Watermark:
                self._on_watermark(current, element)
            elif kind is Barrier:
                if aligner.pending_id is None:
                    self._alignment_start = time.monotonic()
                if aligner.on_barrier(current, element.checkpoint_id) is AlignmentResult.ALIGNED:
                    self.alignments.append((element.checkpoint_id, time.monotonic() - self._alignment_start))
                    self._checkpoint(element)
            elif kind is EndOfData:
                self._on_watermark_update(self._input_watermarks.on_end(current))
            return True
        return False

    def _push(
        self, records: Any, keys: list | None, start: int, head: Callable[[list, list], list] | None = None
    ) -> None:
        ops = self.ops
        arrow_input = self._arrow_input
        counts = self.records_in
        i = start
        producer = start - 1
        try:
            if keys is not None and start == 0 and self._keyed_head:
                counts[0] += len(records)
                records = (head or ops[0].process_keyed_batch)(records, keys)
                producer = 0
                i = 1
            n = len(ops)
            while i < n and len(records):
                op = ops[i]
                if type(records) is not list and not arrow_input[i]:
                    records = records.to_pylist()
                counts[i] += len(records)
                records = op.process_batch(records)
                producer = i
                i += 1
        except OperatorError:
            raise
        except BatchFailure as failure:
            at_head = i == 0 and start == 0 and self._keyed_head
            from_source = self._in_source_batch(start)
            self._isolate(
                i,
                records,
                keys if at_head else None,
                failure,
                from_source=from_source,
                exact=i == start == 0,
                head=head if at_head else None,
            )
            return
        except Exception as exc:
            where = describe_position(self._position(None)) if self._in_source_batch(start) else ""
            raise self._error(self.specs[i], exc, "process", where) from exc
        if len(records) and self.gates:
            self.records_out += len(records)
            stamps = self._output_timestamps(records) if producer == self._stamping_tail else None
            for gate in self.gates:
                gate.emit(records, stamps)
        if self._side_ops:
            self._emit_side_outputs()

    def _output_timestamps(self, records: Any) -> list:
        """Return the event times the chain's stamping last operator gave ``records``, checked."""
        stamps = self.ops[-1].output_timestamps
        if stamps is None or len(stamps) != len(records):
            msg = (
                f"{type(self.ops[-1]).__name__} declares TIMESTAMPED_OUTPUT but gave "
                f"{'no' if stamps is None else len(stamps)} event times for {len(records)} records"
            )
            raise self._error(self.specs[-1], RuntimeError(msg), "process")
        return stamps

    def _emit_side_outputs(self) -> None:
        """Route ``ctx.output(tag, value)`` records of the chain to their side-output edges.

        Only the chain's last operator can have side-output edges (an edge with
        a tag ends a chain); tags nobody consumes are dropped here.
        """
        for i in self._side_ops:
            buffers = self.ops[i].side_outputs
            if not buffers:
                continue
            for tag, records in buffers.items():
                if records:
                    for gate in self.side_gates.get(tag, ()):
                        gate.emit(records)
            buffers.clear()

    # -- event time ------------------------------------------------------------

    def _on_watermark(self, channel: int, watermark: Watermark) -> None:
        """Combine input watermarks: the minimum over inputs that are neither idle nor ended."""
        if watermark.idle:
            update = self._input_watermarks.on_idle(channel)
        else:
            update = self._input_watermarks.on_watermark(channel, watermark.timestamp)
        self._on_watermark_update(update)

    def _on_watermark_update(self, update: WatermarkUpdate) -> None:
        """Act on what an input's watermark, idleness or end did to the combined watermark."""
        if update is WatermarkUpdate.ADVANCED:
            self._advance_watermark(self._input_watermarks.combined, 0)
        elif update is WatermarkUpdate.IDLE:
            self._broadcast_idle()
        elif update is WatermarkUpdate.ENDED:
            self._drain()

    def _broadcast_idle(self) -> None:
        """Tell downstream once that this subtask's output is idle (until a watermark ends it).

        Held records go out first: once idle, this output no longer holds the
        downstream watermark back, so records sent after it could be late there.
        """
        if not self._idle_out:
            self._release_held()
            self._idle_out = True
            for gate in self.all_gates:
                gate.broadcast(Watermark(self.watermark, idle=True))

    def _advance_watermark(self, watermark: float, start: int, *, through_assigners: bool = False) -> None:
        """Run ``on_watermark`` down the chain from ``start`` and forward the watermark.

        A timestamp assigner in the chain defines event time anew, so an upstream
        watermark stops there (except the end-of-time watermark at end of input).
        """
        for i in range(start, len(self.ops)):
            if i in self._emitted and not through_assigners:
                return
            out = self._time_hook(i, self.ops[i].on_watermark, watermark, "watermark")
            if out:
                self._push(out, None, i + 1)
            elif self._side_ops:
                self._emit_side_outputs()
        if watermark > self.watermark or self._idle_out:
            self.watermark = max(self.watermark, watermark)
            self._idle_out = False
            for gate in self.all_gates:
                gate.broadcast(Watermark(self.watermark))

    def _forward_emitted(self) -> None:
        """Propagate watermarks (and idleness) that a timestamp assigner in the chain emitted."""
        for i in self._wm_ops:
            op = self.ops[i]
            wm = op.emitted_watermark
            if wm > self._emitted[i]:
                self._emitted[i] = wm
                self._advance_watermark(wm, i + 1)
            elif op.emitted_idle:
                self._broadcast_idle()

    def _drain(self) -> None:
        """All input ended: event time jumps to the end, each operator emits what it owes.

        The end-of-time watermark fires every open window and pending event-time
        timer, so their output is covered by the final checkpoint.
        """
        if self.watermark < math.inf:
            self._advance_watermark(math.inf, 0, through_assigners=True)
        for i, op in enumerate(self.ops):
            try:
                out = op.finish()
            except Exception as exc:
                raise self._error(self.specs[i], exc, "finish") from exc
            if out:
                self._push(out, None, i + 1)
            elif self._side_ops:
                self._emit_side_outputs()
        for gate in self.all_gates:
            gate.broadcast(END_OF_DATA)
        self.status = SubtaskStatus.DRAINED

    # -- checkpoints ---------------------------------------------------------

    def stop_reading(self) -> None:
        """Source only: poll no more records (a graceful stop); nothing ends, checkpoints go on.

        The reader is not told its input finished, so the checkpoint taken next
        records where it stopped and a rerun reads on from there.
        """
        if self.reader is not None and self.status is SubtaskStatus.RUNNING:
            self.status = SubtaskStatus.STOPPED

    def trigger_checkpoint(self, checkpoint_id: int, final: bool) -> None:
        """Source only: snapshot offsets and emit the barrier, with nothing in between."""
        self._checkpoint(Barrier(checkpoint_id, final))

    def _checkpoint(self, barrier: Barrier) -> None:
        checkpoint_id = barrier.checkpoint_id
        self.current_checkpoint = checkpoint_id
        CRASH_POINTS.hit("before_snapshot")
        self._release_held()
        snapshots: list[tuple[str, OperatorSnapshot]] = []
        if self.reader is not None:
            spec = self.task.operators[0]
            try:
                state = self.reader.snapshot_state(checkpoint_id)
            except Exception as exc:
                raise self._error(spec, exc, "snapshot") from exc
            snapshots.append((spec.uid, OperatorSnapshot(operator_state=state)))
        for op, spec in zip(self.ops, self.specs):
            try:
                snap = op.snapshot_state(checkpoint_id)
            except Exception as exc:
                raise self._error(spec, exc, "snapshot") from exc
            if snap is not None:
                snapshots.append((spec.uid, snap))
        self.snapshot_sink(checkpoint_id, self.key, snapshots)
        for gate in self.all_gates:
            gate.broadcast(barrier)

    def _release_held(self) -> None:
        """Push what ``HOLDS_RECORDS`` operators hold down the chain (before any snapshot of it is taken)."""
        for i in self._holding_ops:
            try:
                out = self.ops[i].prepare_snapshot_pre_barrier()
            except Exception as exc:
                raise self._error(self.specs[i], exc, "snapshot") from exc
            if out:
                self._push(out, None, i + 1)

    def state_write_error(self, uid: str | None, exc: BaseException) -> OperatorError:
        """Name the operator whose snapshot the background writer could not write (e.g. unpicklable state)."""
        spec = next((s for s in self.task.operators if s.uid == uid), self.task.operators[-1])
        return self._error(spec, exc, "snapshot")

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Tell every operator that ``checkpoint_id`` completed (sinks commit now)."""
        for op, spec in zip(self._all_operators(), self.task.operators):
            try:
                op.notify_checkpoint_complete(checkpoint_id)
            except Exception as exc:
                raise self._error(spec, exc, "commit") from exc

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        """Tell every operator that ``checkpoint_id`` will never complete."""
        if self.aligner is not None:
            self.aligner.abort(checkpoint_id)
        for op, spec in zip(self.ops, self.specs):
            try:
                op.notify_checkpoint_aborted(checkpoint_id)
            except Exception as exc:
                raise self._error(spec, exc, "abort") from exc

    # -- bad records (the error path) --------------------------------------------

    def _isolate(
        self,
        i: int,
        records: list,
        keys: list | None,
        failure: BatchFailure,
        *,
        from_source: bool,
        exact: bool,
        head: Callable[[list, list], list] | None = None,
    ) -> None:
        """Operator ``i`` raised ``failure`` for ``records``: deal with each bad record, go on with the rest.

        Steps:
        1. With ``on_error="fail"`` raise an ``OperatorError`` naming the
           failed record (and its source position); else make it a dead letter.
        2. Push the outputs of the records applied so far down the chain.
        3. Pass the records after it (which the operator has not touched) to
           it again, on its fast path; on another ``BatchFailure`` go to step 1.
        4. Emit the dead letters on the dead-letter edge, in the same step as
           the batch, so the next barrier covers them (exactly once).

        ``from_source``: the records stem from the reader's last batch (this
        subtask reads a source and is pushing that batch). ``exact``: ``records``
        *is* that batch, so a record's index there is its source position;
        otherwise a dead letter names the whole source batch's position.
        ``keys``: the batch is the keyed head's input (a dead letter names the
        record's key); ``head``: the method that took it, when it is not
        ``process_keyed_batch`` (the second input of a two-input head: the dead
        letter says ``"input": 2``).
        """
        spec = self.specs[i]
        op = self.ops[i]
        again_keyed = head or op.process_keyed_batch
        carried = op.input_timestamps if keys is not None else None
        letters: list[str] = []
        offset = 0
        while True:
            # Step 1
            at = offset + failure.index
            record = records[at]
            position = self._position(at if exact else None) if from_source else None
            if spec.on_error is not OnError.DEAD_LETTER:
                raise self._record_error(spec, failure.error, record, position) from failure.error
            letters.append(
                dead_letter(
                    operator=spec.name,
                    subtask=self.index,
                    error=failure.error,
                    record=record,
                    source=position,
                    key=keys[at] if keys is not None else UNKEYED,
                    input=self._input_number(head) if keys is not None else None,
                )
            )
            # Step 2
            self._push_rest(failure.outputs, i + 1, from_source=from_source)
            # Step 3
            offset = at + 1
            if offset >= len(records):
                break
            try:
                rest = records[offset:]
                if carried is not None:
                    op.input_timestamps = carried[offset:]
                out = op.process_batch(rest) if keys is None else again_keyed(rest, keys[offset:])
            except BatchFailure as again:
                failure = again
                continue
            except Exception as exc:
                raise self._error(spec, exc, "process") from exc
            self._push_rest(out, i + 1, from_source=from_source)
            break
        # Step 4
        for gate in self.side_gates.get(DEAD_LETTER_TAG, ()):
            gate.emit(letters)

    def _time_hook(self, i: int, hook: Callable[[float], list], now: float, phase: str) -> list:
        """Call operator ``i``'s ``on_watermark`` or ``on_processing_time``; deal with failing timers.

        A timer whose user function raised (``TimerFailure``) fails the attempt
        naming it, or with ``on_error="dead_letter"`` becomes a dead letter:
        the outputs of the timers before it go down the chain, the letter goes
        out in the same step, and the hook is called again for the timers
        still due.
        """
        while True:
            try:
                return hook(now)
            except TimerFailure as failure:
                spec = self.specs[i]
                if spec.on_error is not OnError.DEAD_LETTER:
                    raise self._record_error(spec, failure.error, failure.record, None) from failure.error
                self._push(failure.outputs, None, i + 1)
                letter = dead_letter(
                    operator=spec.name,
                    subtask=self.index,
                    error=failure.error,
                    record=failure.record,
                    source=None,
                    key=failure.key,
                    timer=failure.timestamp,
                )
                for gate in self.side_gates.get(DEAD_LETTER_TAG, ()):
                    gate.emit([letter])
            except Exception as exc:
                raise self._error(self.specs[i], exc, phase) from exc

    def _input_number(self, head: Callable[[list, list], list] | None) -> int | None:
        """Which input of a two-input head a batch came in on (1 or 2); None for one-input heads."""
        if Capability.TWO_INPUTS not in self.ops[0].capabilities:
            return None
        return 1 if head is None else 2

    def _bad_input(self, bad: BadInput) -> Any:
        """Fail naming the first row the reader could not decode, or make every such row a dead letter.

        The dead letters go out before the batch's good records, in the same
        step, so the next barrier covers both (the reader's offsets are past them).
        """
        spec = self.task.operators[0]
        if spec.on_error is not OnError.DEAD_LETTER:
            raw, error, position = bad.bad[0]
            raise self._record_error(spec, error, raw, position) from error
        letters = [
            dead_letter(operator=spec.name, subtask=self.index, error=error, record=raw, source=position)
            for raw, error, position in bad.bad
        ]
        for gate in self.side_gates.get(DEAD_LETTER_TAG, ()):
            gate.emit(letters)
        return bad.records

    def _push_rest(self, records: list, start: int, *, from_source: bool) -> None:
        """Push part of a batch on from operator ``start``, keeping what is known of its source."""
        previous, self._isolating_source_batch = self._isolating_source_batch, from_source
        try:
            self._push(records, None, start)
        finally:
            self._isolating_source_batch = previous

    def _in_source_batch(self, start: int) -> bool:
        """Whether the records being pushed from operator ``start`` come from the reader's last batch."""
        return self.reader is not None and (start == 0 or self._isolating_source_batch)

    def _position(self, index: int | None) -> dict[str, Any] | None:
        """Ask the reader where record ``index`` of its last batch (or the whole batch) came from."""
        if self.reader is None:
            return None
        try:
            return self.reader.batch_position(index)
        except Exception:  # the position is a courtesy: never hide the record's own error
            log.debug("batch_position failed", exc_info=True)
            return None

    def _record_error(
        self, spec: OperatorSpec, exc: Exception, record: Any, position: dict[str, Any] | None
    ) -> OperatorError:
        """Build the fail-fast error of a bad record: operator, record, source position and the fix."""
        err = self._error(
            spec,
            exc,
            "process",
            f" on record {describe_record(record)}{describe_position(position)}",
        )
        err.args = (
            f"{err.args[0]}; to send such records to a dead-letter sink and go on, pass "
            "on_error='dead_letter' to this operator and set job.dead_letters(sink)",
        )
        return err

    # -- errors ----------------------------------------------------------------

    def _error(self, spec: Any, exc: BaseException, phase: str, detail: str = "") -> OperatorError:
        domain = exc.domain if isinstance(exc, OnceflowError) else ErrorDomain.USER
        where = f"operator {spec.name!r} (uid {spec.uid!r}), subtask {self.index}"
        msg = f"{where} failed in {phase}{detail}: {type(exc).__name__}: {exc}"
        err = OperatorError(
            msg,
            operator=spec.name,
            uid=spec.uid,
            subtask_index=self.index,
            checkpoint_id=self.current_checkpoint,
            domain=domain,
        )
        err.phase = phase
        return err
