"""Dead letters in the job API, the graph and the plan, and the form of a dead letter."""

from __future__ import annotations

import json

import pytest

from onceflow import FileSink, FileSource, Job, JobDefinitionError
from onceflow.engine.dead_letters import RECORD_REPR_LIMIT, dead_letter, describe_position
from onceflow.engine.graph import DEAD_LETTER_TAG, OnError
from onceflow.engine.plan import build_plan


def parse(line: str) -> tuple[str, int]:
    key, value = line.split()
    return key, int(value)


def job_with(*, dead_letters: bool, on_error: str = "dead_letter") -> Job:
    job = Job("dl")
    (
        job.source(FileSource("unused/in"), name="read")
        .map(parse, name="parse", on_error=on_error)
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count", on_error=on_error)
        .sink(FileSink("unused/out"), name="write")
    )
    if dead_letters:
        job.dead_letters(FileSink("unused/dead"), name="dead")
    return job


def test_dead_letters_without_a_dead_letter_sink_is_a_graph_error_naming_the_operators() -> None:
    job = job_with(dead_letters=False)
    with pytest.raises(JobDefinitionError) as info:
        job.graph.validate()
    text = str(info.value)
    assert "'parse', 'count'" in text
    assert "no dead-letter sink" in text
    assert "job.dead_letters(" in text


def test_a_dead_letter_sink_nobody_feeds_is_a_graph_error() -> None:
    job = job_with(dead_letters=True, on_error="fail")
    with pytest.raises(JobDefinitionError, match="dead-letter sink 'dead' would never receive a record"):
        job.graph.validate()


@pytest.mark.parametrize("value", ["ignore", "Dead_Letter", None, True])
def test_on_error_takes_only_fail_or_dead_letter(value) -> None:
    stream = Job("j").source(FileSource("unused/in"))
    with pytest.raises(JobDefinitionError, match=r"map\(\): on_error must be 'fail' or 'dead_letter', got"):
        stream.map(parse, on_error=value)


def test_operators_that_cannot_isolate_a_record_refuse_dead_letters_clearly() -> None:
    stream = Job("j").source(FileSource("unused/in"))
    with pytest.raises(JobDefinitionError, match=r"map_batches\(\) does not support on_error='dead_letter'"):
        stream.map_batches(lambda rows: rows, on_error="dead_letter")
    stream.map_batches(lambda rows: rows, on_error="fail")  # the default is accepted everywhere


def test_dead_letters_may_be_set_before_the_operators_and_only_once() -> None:
    job = Job("j")
    job.dead_letters(FileSink("unused/dead"))
    job.source(FileSource("unused/in")).map(parse, on_error="dead_letter").sink(FileSink("unused/out"))
    job.graph.validate()
    assert job.graph.dead_letter_sink is not None
    with pytest.raises(JobDefinitionError, match="call dead_letters\\(\\) once"):
        job.dead_letters(FileSink("unused/dead2"))


def test_the_dead_letter_tag_is_reserved() -> None:
    stream = Job("j").source(FileSource("unused/in"))
    with pytest.raises(JobDefinitionError, match="reserved for dead letters"):
        stream.side_output(DEAD_LETTER_TAG)


def test_a_dead_letter_operator_stays_chained_and_each_chain_has_one_dead_letter_edge() -> None:
    job = Job("j")
    (
        job.source(FileSource("unused/in"), name="read")
        .map(str.strip, name="strip", on_error="dead_letter")
        .map(parse, name="parse", on_error="dead_letter")
        .sink(FileSink("unused/out"), name="write")
    )
    job.dead_letters(FileSink("unused/dead"), name="dead")
    plan = build_plan(job.graph, default_parallelism=2)
    names = [t.name for t in plan.tasks]
    assert names == ["read -> strip -> parse -> write", "dead"]
    (edge,) = plan.tasks[1].inputs
    assert (edge.upstream_task, edge.tag) == (0, DEAD_LETTER_TAG)
    assert job.graph.spec(2).on_error is OnError.DEAD_LETTER


def test_an_operator_whose_only_outlet_is_the_dead_letter_sink_leads_to_no_sink() -> None:
    job = Job("j")
    job.source(FileSource("unused/in"), name="read").map(parse, name="parse", on_error="dead_letter")
    job.dead_letters(FileSink("unused/dead"))
    with pytest.raises(JobDefinitionError, match="operator 'parse' leads to no sink"):
        job.graph.validate()


def test_a_dead_letter_is_one_json_line_with_the_record_cut_to_the_limit() -> None:
    error = ValueError("bad\nvalue")
    line = dead_letter(
        operator="parse", subtask=1, error=error, record="x" * 5000, source={"file": "a.csv", "line": 7}
    )
    assert "\n" not in line
    letter = json.loads(line)
    assert letter["operator"] == "parse"
    assert letter["subtask"] == 1
    assert letter["error"] == {"type": "ValueError", "message": "bad\nvalue"}
    assert letter["record"].startswith("'xxx")
    assert letter["record"].endswith("... (5002 characters)")
    assert len(letter["record"]) < RECORD_REPR_LIMIT + 40
    assert letter["source"] == {"file": "a.csv", "line": 7}
    assert "source" not in json.loads(
        dead_letter(operator="p", subtask=0, error=error, record=1, source=None)
    )


def test_positions_read_as_file_and_line() -> None:
    assert describe_position({"file": "a.csv", "line": 7}) == " (file a.csv, line 7)"
    assert describe_position({"file": "a.csv", "lines": [3, 9]}) == " (file a.csv, one of lines 3-9)"
    assert describe_position({"stream": "s", "id": "1-0"}) == " (stream s, entry 1-0)"
    assert describe_position(None) == ""
