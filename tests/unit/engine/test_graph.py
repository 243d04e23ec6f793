"""The job API and the logical graph: definition errors, default uids, the fingerprint."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from onceflow import FileSink, FileSource, Job, JobDefinitionError, Partitioning
from onceflow.engine.graph import OperatorKind, OperatorSpec
from onceflow.engine.plan import build_plan


def by_name(job: Job) -> dict[str, OperatorSpec]:
    return {s.name: s for s in job.graph.specs()}


def source() -> FileSource:
    return FileSource("unused/input")


def sink(name: str = "out") -> FileSink:
    return FileSink(f"unused/{name}")


def problems_of(job: Job) -> list[str]:
    """Validate ``job`` and return the listed violations (one per ``  - `` line)."""
    with pytest.raises(JobDefinitionError) as info:
        job.graph.validate()
    text = str(info.value)
    assert text.startswith(f"job {job.name!r} is invalid:")
    return [line.removeprefix("  - ") for line in text.splitlines()[1:]]


def wordcount(*, count_uid: str = "count", map_parallelism: int | None = None) -> Job:
    job = Job("wc")
    (
        job.source(source(), name="read")
        .flat_map(str.split, name="split")
        .map(lambda w: (w, 1), name="pair", parallelism=map_parallelism)
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid=count_uid)
        .sink(sink(), name="write")
    )
    return job


# --------------------------------------------------------------------------- single violations


def test_job_without_sink_is_one_violation_naming_sink() -> None:
    job = Job("nosink")
    job.source(source(), name="read").map(str.upper, name="upper")

    problems = problems_of(job)

    assert len(problems) == 1
    assert "has no sink" in problems[0]
    assert ".sink(" in problems[0]


def test_operator_leading_to_no_sink_is_named() -> None:
    job = Job("dangling")
    lines = job.source(source(), name="read")
    lines.map(str.upper, name="upper").sink(sink(), name="write")
    lines.filter(bool, name="nonempty")

    problems = problems_of(job)

    assert problems == [
        "operator 'nonempty' leads to no sink; its output would be dropped (end it with .sink(...))"
    ]


def test_duplicate_uid_names_both_operators() -> None:
    job = Job("dupuid")
    (
        job.source(source(), name="read")
        .map(str.upper, name="upper", uid="same")
        .map(str.lower, name="lower", uid="same")
        .sink(sink(), name="write")
    )

    problems = problems_of(job)

    assert len(problems) == 1
    assert "'same'" in problems[0]
    assert "'upper'" in problems[0] and "'lower'" in problems[0]
    assert "unique" in problems[0]


def test_duplicate_name_without_uid_is_refused_at_definition() -> None:
    job = Job("dupname")
    stream = job.source(source(), name="read").map(str.upper, name="clean")

    with pytest.raises(JobDefinitionError, match="two operators are named 'clean'"):
        stream.map(str.strip, name="clean")


def test_duplicate_name_with_explicit_uid_is_accepted() -> None:
    job = Job("dupname-uid")
    (
        job.source(source(), name="read")
        .map(str.upper, name="clean")
        .map(str.strip, name="clean", uid="clean-2")
        .sink(sink(), name="write")
    )

    job.graph.validate()

    uids = [s.uid for s in job.graph.specs()]
    assert len(uids) == len(set(uids))
    assert "clean-2" in uids
    assert [u for u in uids if u.startswith("clean-") and u != "clean-2"]


def test_stream_unioned_with_itself_is_refused() -> None:
    job = Job("selfunion")
    lines = job.source(source(), name="read")

    with pytest.raises(JobDefinitionError, match="reads 'read' twice") as info:
        lines.union(lines).map(str.upper, name="upper")
    assert "union distinct streams" in str(info.value)


@pytest.mark.parametrize("parallelism", [0, -1, 1.5, "2"])
def test_parallelism_below_one_or_not_an_int_is_refused(parallelism: object) -> None:
    job = Job("badpar")
    lines = job.source(source(), name="read")

    with pytest.raises(JobDefinitionError, match="parallelism must be an int >= 1") as info:
        lines.map(str.upper, name="upper", parallelism=parallelism)  # type: ignore[arg-type]
    assert "'upper'" in str(info.value)


def test_validate_reports_parallelism_below_one_set_on_a_spec() -> None:
    job = Job("specpar")
    job.source(source(), name="read").map(str.upper, name="upper").sink(sink(), name="write")
    by_name(job)["upper"].parallelism = 0

    assert problems_of(job) == ["operator 'upper' has parallelism 0; use >= 1"]


def test_parallelism_above_max_parallelism_is_refused_by_the_plan() -> None:
    job = Job("toowide")
    job.source(source(), name="read").map(str.upper, name="upper", parallelism=9).sink(sink())

    with pytest.raises(JobDefinitionError, match="'upper' has parallelism 9, above max parallelism 8"):
        build_plan(job.graph, max_parallelism=8)


def test_default_parallelism_above_max_parallelism_is_refused() -> None:
    job = Job("toowide-default")
    job.source(source(), name="read").sink(sink())

    with pytest.raises(JobDefinitionError, match="above max parallelism 4"):
        build_plan(job.graph, default_parallelism=5, max_parallelism=4)


@pytest.mark.parametrize("not_a_source", ["data/in", ["a", "b"], FileSink("unused/out")])
def test_source_rejects_what_is_not_a_source(not_a_source: object) -> None:
    job = Job("badsource")

    with pytest.raises(JobDefinitionError, match=r"job\.source\(\) needs an operators\.Source"):
        job.source(not_a_source)  # type: ignore[arg-type]
    assert job.graph.dag.number_of_nodes() == 0


@pytest.mark.parametrize("not_a_sink", ["out/dir", print, FileSource("unused/in")])
def test_sink_rejects_what_is_not_a_sink(not_a_sink: object) -> None:
    job = Job("badsink")
    lines = job.source(source(), name="read")

    with pytest.raises(JobDefinitionError, match=r"sink\(\) needs an operators\.Sink"):
        lines.sink(not_a_sink)  # type: ignore[arg-type]
    assert job.graph.dag.number_of_nodes() == 1


@pytest.mark.parametrize("method", ["map", "filter", "flat_map", "map_batches", "key_by"])
def test_transforms_reject_a_non_callable(method: str) -> None:
    job = Job("badfn")
    lines = job.source(source(), name="read")

    with pytest.raises(JobDefinitionError, match=rf"{method}\(\) needs a callable, got 'upper'"):
        getattr(lines, method)("upper")
    assert job.graph.dag.number_of_nodes() == 1


def test_keyed_operators_reject_a_non_callable() -> None:
    job = Job("badreduce")
    keyed = job.source(source(), name="read").key_by(len)

    with pytest.raises(JobDefinitionError, match=r"reduce\(\) needs a callable, got 42"):
        keyed.reduce(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "_private", None])
def test_job_name_must_be_usable_as_a_directory(name: object) -> None:
    with pytest.raises(JobDefinitionError, match="job name"):
        Job(name)  # type: ignore[arg-type]


def test_uid_with_a_slash_is_refused() -> None:
    job = Job("baduid")

    with pytest.raises(JobDefinitionError, match="without '/'"):
        job.source(source(), name="read", uid="a/b")


# --------------------------------------------------------------------------- several at once


def test_several_violations_are_reported_together_in_one_error() -> None:
    job = Job("many")
    lines = job.source(source(), name="read", uid="x")
    lines.map(str.upper, name="upper", uid="x").sink(sink(), name="write")
    lines.filter(bool, name="dangling")

    problems = problems_of(job)

    assert len(problems) == 2
    assert any("uid 'x' is used by both 'read' and 'upper'" in p for p in problems)
    assert any("operator 'dangling' leads to no sink" in p for p in problems)


def test_build_plan_validates_and_reports_every_violation() -> None:
    job = Job("many-plan")
    lines = job.source(source(), name="read")
    lines.map(str.upper, name="a", uid="dup").sink(sink("a"), name="wa")
    lines.map(str.lower, name="b", uid="dup").sink(sink("b"), name="wb")
    lines.filter(bool, name="c")
    lines.filter(None.__ne__, name="d")

    with pytest.raises(JobDefinitionError) as info:
        build_plan(job.graph)

    message = str(info.value)
    assert "uid 'dup'" in message
    assert "'c' leads to no sink" in message
    assert "'d' leads to no sink" in message
    assert len(message.splitlines()) == 4


def test_valid_job_passes_validation() -> None:
    job = wordcount()

    job.graph.validate()

    kinds = [s.kind for s in job.graph.specs()]
    assert kinds[0] is OperatorKind.SOURCE
    assert kinds[-1] is OperatorKind.SINK


# --------------------------------------------------------------------------- uids and edges


def test_default_uids_are_the_name_and_a_digest_explicit_uids_are_kept() -> None:
    job = wordcount()

    uids = [(s.name, s.uid) for s in job.graph.specs()]

    assert [name for name, _ in uids] == ["read", "split", "pair", "count", "write"]
    assert uids[3] == ("count", "count")
    for name, uid in uids[:3] + uids[4:]:
        assert re.fullmatch(rf"{name}-[0-9a-f]{{12}}", uid), uid
    assert [s.explicit_uid for s in job.graph.specs()] == [False, False, False, True, False]


def test_unnamed_operators_get_distinct_stable_default_uids() -> None:
    def build() -> Job:
        job = Job("unnamed")
        job.source(source()).map(str.upper).map(str.lower).filter(bool).sink(sink())
        return job

    first = [s.uid for s in build().graph.specs()]
    second = [s.uid for s in build().graph.specs()]

    assert first == second
    assert len(set(first)) == len(first)
    assert [u.rsplit("-", 1)[0] for u in first[:3]] == ["source", "map", "map-2"]


def counting_job(*, inserted: str | None = None, parallelism: int | None = None, step: int = 1) -> Job:
    """Words counted by an unnamed keyed operator; ``inserted`` puts one of that kind before it."""
    job = Job("counting")
    words = job.source(source(), name="read", uid="read").map(lambda w: (w, step), parallelism=parallelism)
    if inserted == "reduce":
        words = words.key_by(lambda kv: kv[0]).reduce(lambda a, b: b)
    elif inserted == "stateful_map":
        words = words.key_by(lambda kv: kv[0]).stateful_map(lambda s, kv: (s, kv))
    words.key_by(lambda kv: kv[0]).reduce(lambda a, b: (a[0], a[1] + b[1])).sink(sink(), uid="write")
    return job


def keyed_uids(job: Job) -> list[str]:
    return [s.uid for s in job.graph.specs() if s.kind is OperatorKind.KEYED]


@pytest.mark.parametrize("inserted", ["reduce", "stateful_map"])
def test_an_operator_inserted_before_a_count_gives_the_count_and_its_neighbours_new_default_uids(
    inserted: str,
) -> None:
    before = {s.name: s.uid for s in counting_job().graph.specs()}
    after = counting_job(inserted=inserted)

    [old_count] = keyed_uids(counting_job())

    assert old_count not in {s.uid for s in after.graph.specs()}
    assert before["map"] not in {s.uid for s in after.graph.specs()}  # its downstream changed
    assert {s.uid for s in after.graph.specs() if s.explicit_uid} == {"read", "write"}


def test_default_uids_ignore_functions_and_parallelism() -> None:
    uids = [s.uid for s in counting_job().graph.specs()]

    assert [s.uid for s in counting_job(step=2).graph.specs()] == uids
    assert [s.uid for s in counting_job(parallelism=4).graph.specs()] == uids


def test_default_uids_of_identical_branches_differ_and_follow_their_downstream() -> None:
    def build(tail: bool) -> Job:
        job = Job("branches")
        lines = job.source(source(), name="read")
        lines.key_by(len).reduce(max).sink(sink("a"), uid="a")
        second = lines.key_by(len).reduce(max)
        (second.map(str) if tail else second).sink(sink("b"), uid="b")
        return job

    plain, tailed = keyed_uids(build(False)), keyed_uids(build(True))

    assert len(set(plain)) == 2
    assert plain[0] == tailed[0]  # the first branch did not change
    assert plain[1] != tailed[1]


def test_default_uids_are_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests/unit/engine'); import test_graph; "
        "print([s.uid for s in test_graph.counting_job(inserted='reduce').graph.specs()])"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")

    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)

    assert out.stdout.strip() == str([s.uid for s in counting_job(inserted="reduce").graph.specs()])


def test_stateful_operators_without_uid_are_sources_keyed_operators_and_sinks() -> None:
    job = Job("unnamed-state")
    job.source(source(), name="read").map(str.upper).key_by(len).reduce(max, uid="count").sink(sink())

    assert [s.name for s in job.graph.stateful_without_uid()] == ["read", "sink"]


def test_key_by_marks_the_edge_as_hash_partitioned_with_the_key_function() -> None:
    def key(kv: tuple[str, int]) -> str:
        return kv[0]

    job = Job("edges")
    pairs = job.source(source(), name="read").map(lambda w: (w, 1), name="pair")
    pairs.key_by(key).reduce(lambda a, b: a, name="count").sink(sink())

    specs = by_name(job)
    edge = job.graph.edge(specs["pair"].node_id, specs["count"].node_id)
    assert edge.partitioning is Partitioning.HASH
    assert edge.key_fn is key


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_across_two_builds() -> None:
    assert wordcount().graph.fingerprint() == wordcount().graph.fingerprint()


def test_fingerprint_does_not_depend_on_parallelism() -> None:
    narrow = wordcount()
    wide = wordcount(map_parallelism=4)

    assert narrow.graph.fingerprint() == wide.graph.fingerprint()
    assert (
        build_plan(narrow.graph, default_parallelism=1).fingerprint
        == build_plan(narrow.graph, default_parallelism=3).fingerprint
    )


def test_fingerprint_changes_when_a_uid_changes() -> None:
    assert wordcount().graph.fingerprint() != wordcount(count_uid="count-v2").graph.fingerprint()


def test_fingerprint_changes_when_the_topology_changes() -> None:
    with_filter = Job("wc")
    (
        with_filter.source(source(), name="read")
        .flat_map(str.split, name="split")
        .filter(bool, name="nonempty")
        .map(lambda w: (w, 1), name="pair")
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
        .sink(sink(), name="write")
    )

    assert with_filter.graph.fingerprint() != wordcount().graph.fingerprint()
