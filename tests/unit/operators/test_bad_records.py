"""Operators whose user function raises: which record failed, and nothing applied twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from onceflow.operators.bad_records import BatchFailure
from onceflow.operators.base import RestoredState
from onceflow.operators.files import FileSource
from onceflow.operators.keyed import ReduceOperator, StatefulMapOperator
from onceflow.operators.transforms import FilterOperator, FlatMapOperator, MapOperator


def strict_int(text: str) -> int:
    return int(text)


def run_isolated(op, records: list, keys: list | None = None) -> tuple[list, list[int]]:
    """Drive ``op`` as the runtime's dead-letter path does: resume after each failure."""
    outputs: list = []
    failed: list[int] = []
    offset = 0
    while offset < len(records):
        rest = records[offset:]
        try:
            out = op.process_batch(rest) if keys is None else op.process_keyed_batch(rest, keys[offset:])
        except BatchFailure as failure:
            outputs += failure.outputs
            failed.append(offset + failure.index)
            offset += failure.index + 1
            continue
        outputs += out
        break
    return outputs, failed


@pytest.mark.parametrize(
    ("op", "want"),
    [
        (MapOperator(strict_int), [1, 2, 4, 4]),
        (FilterOperator(lambda s: int(s) % 2 == 0), ["2", "4", "4"]),
        (FlatMapOperator(lambda s: [int(s)] * int(s)), [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4]),
    ],
    ids=["map", "filter", "flat_map"],
)
def test_stateless_operator_names_each_failing_record_and_keeps_the_others(op, want) -> None:
    records = ["1", "2", "x", "4", "x", "4"]
    outputs, failed = run_isolated(op, records)
    assert failed == [2, 4]
    assert outputs == want


def test_failing_map_does_not_call_the_function_again_until_the_runtime_goes_on() -> None:
    calls: list[str] = []

    def fn(s: str) -> int:
        calls.append(s)
        return int(s)

    with pytest.raises(BatchFailure) as info:
        MapOperator(fn).process_batch(["1", "x", "3"])
    assert (info.value.index, calls) == (1, ["1", "x"])
    assert isinstance(info.value.error, ValueError)
    assert info.value.outputs == [1]
    assert calls == ["1", "x", "1"]  # the outputs before the failure, recomputed on demand


def test_flat_map_failing_in_the_middle_of_its_iterable_emits_nothing_for_that_record() -> None:
    def explode(n: int):
        yield n
        if n == 2:
            raise ValueError("half way")
        yield n

    outputs, failed = run_isolated(FlatMapOperator(explode), [1, 2, 3])
    assert (outputs, failed) == ([1, 1, 3, 3], [1])


def test_reduce_never_applies_a_record_twice_and_a_failed_one_leaves_the_state() -> None:
    op = ReduceOperator(lambda a, b: a + 1 / b)  # b == 0 raises
    records = [1, 1, 0, 1, 0, 0, 1]
    keys = ["k", "k", "k", "j", "k", "j", "k"]
    outputs, failed = run_isolated(op, records, keys)
    # "j" 1 is the key's first record, stored as is; "j" 0 then fails like "k" 0
    assert failed == [2, 4, 5]
    assert outputs == [1, 2.0, 1, 3.0]
    assert op.state.table("value") == {"k": 3.0, "j": 1}


def test_stateful_map_with_equal_records_in_one_batch_locates_the_failing_one() -> None:
    seen: list[int] = []

    def fn(state, record):
        if state == 2:
            raise ValueError("third and later")
        seen.append(record)
        return (state or 0) + 1, (state or 0) + 1

    records = ["bad", "bad", "bad", "bad"]  # one interned str object four times
    outputs, failed = run_isolated(StatefulMapOperator(fn), records, ["k"] * 4)
    assert failed == [2, 3]
    assert outputs == [1, 2]
    assert len(seen) == 2


def test_stateful_map_returning_no_pair_is_a_failed_record_not_a_state_change() -> None:
    op = StatefulMapOperator(lambda state, record: None if record == "bad" else ((state or 0) + 1, record))
    outputs, failed = run_isolated(op, ["a", "bad", "b"], ["k", "k", "k"])
    assert (outputs, failed, op.state.table("value")) == (["a", "b"], [1], {"k": 2})


def test_file_reader_names_the_line_of_a_record_and_the_lines_of_a_batch(
    tmp_path: Path, context_factory
) -> None:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1, 11)))
    reader = FileSource(str(path), read_size=1024).create_reader(0, 1)
    reader.open(context_factory())
    assert reader.batch_position(0) is None  # nothing polled yet
    first = reader.poll_batch(3)
    assert first == ["line 1", "line 2", "line 3"]
    assert reader.batch_position(2) == {"file": str(path), "line": 3}
    second = reader.poll_batch(3)
    assert second == ["line 4", "line 5", "line 6"]
    assert reader.batch_position(1) == {"file": str(path), "line": 5}
    assert reader.batch_position(None) == {"file": str(path), "lines": [4, 6]}
    snapshot = reader.snapshot_state(1)

    restored = FileSource(str(path), read_size=1024).create_reader(0, 1)
    restored.open(context_factory())
    restored.restore_state(RestoredState(1, 1, [(0, snapshot)], {}))
    assert restored.poll_batch(2) == ["line 7", "line 8"]
    assert restored.batch_position(1) == {"file": str(path), "line": 8}  # counted from the restored offset
