"""Physical planning: which operators chain into one task, and how tasks connect."""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job, Partitioning
from onceflow.engine.plan import PhysicalPlan, build_plan, describe_graph


def source() -> FileSource:
    return FileSource("unused/input")


def sink(name: str = "out") -> FileSink:
    return FileSink(f"unused/{name}")


def chains(plan: PhysicalPlan) -> list[list[str]]:
    return [[op.name for op in task.operators] for task in plan.tasks]


def inputs(plan: PhysicalPlan) -> list[list[tuple[int, Partitioning]]]:
    return [[(e.upstream_task, e.partitioning) for e in task.inputs] for task in plan.tasks]


def test_forward_operators_of_equal_parallelism_chain_into_one_task() -> None:
    job = Job("chain")
    (
        job.source(source(), name="read")
        .flat_map(str.split, name="split")
        .map(str.lower, name="lower")
        .sink(sink(), name="write")
    )

    plan = build_plan(job.graph)

    assert chains(plan) == [["read", "split", "lower", "write"]]
    assert plan.tasks[0].inputs == [] and plan.tasks[0].outputs == []
    assert plan.tasks[0].is_source
    assert plan.tasks[0].name == "read -> split -> lower -> write"


def test_key_by_breaks_the_chain_with_a_hash_edge() -> None:
    def key(word: str) -> str:
        return word

    job = Job("keyed")
    (
        job.source(source(), name="read")
        .flat_map(str.split, name="split")
        .key_by(key)
        .reduce(lambda a, b: a + b, name="concat")
        .sink(sink(), name="write")
    )

    plan = build_plan(job.graph)

    assert chains(plan) == [["read", "split"], ["concat", "write"]]
    assert inputs(plan) == [[], [(0, Partitioning.HASH)]]
    assert plan.tasks[1].inputs[0].key_fn is key
    assert plan.tasks[0].outputs == plan.tasks[1].inputs
    assert plan.tasks[1].keyed_input and not plan.tasks[0].keyed_input


def test_operators_after_reduce_chain_onto_it() -> None:
    job = Job("after-reduce")
    (
        job.source(source(), name="read")
        .key_by(len)
        .reduce(lambda a, b: a + b, name="concat")
        .map(str.upper, name="upper")
        .filter(bool, name="nonempty")
        .sink(sink(), name="write")
    )

    plan = build_plan(job.graph)

    assert chains(plan) == [["read"], ["concat", "upper", "nonempty", "write"]]


def test_different_parallelism_gives_a_rebalance_edge_and_no_chaining() -> None:
    job = Job("rescale")
    (
        job.source(source(), name="read")
        .map(str.upper, name="upper", parallelism=3)
        .sink(sink(), name="write", parallelism=3)
    )

    plan = build_plan(job.graph, default_parallelism=1)

    assert chains(plan) == [["read"], ["upper", "write"]]
    assert inputs(plan) == [[], [(0, Partitioning.REBALANCE)]]
    assert [t.parallelism for t in plan.tasks] == [1, 3]
    by_name = {s.name: plan.parallelism_by_uid()[s.uid] for s in job.graph.specs()}
    assert by_name == {"read": 1, "upper": 3, "write": 3}


def test_explicit_rebalance_breaks_the_chain_even_at_equal_parallelism() -> None:
    job = Job("rebalanced")
    job.source(source(), name="read").rebalance().map(str.upper, name="upper").sink(sink())

    plan = build_plan(job.graph, default_parallelism=2)

    assert chains(plan) == [["read"], ["upper", "sink"]]
    assert inputs(plan)[1] == [(0, Partitioning.REBALANCE)]


def test_broadcast_breaks_the_chain() -> None:
    job = Job("broadcast")
    job.source(source(), name="read").broadcast().map(str.upper, name="upper").sink(sink())

    plan = build_plan(job.graph, default_parallelism=2)

    assert inputs(plan)[1] == [(0, Partitioning.BROADCAST)]


def test_fan_out_to_two_sinks_is_not_chained() -> None:
    job = Job("fanout")
    upper = job.source(source(), name="read").map(str.upper, name="upper")
    upper.sink(sink("a"), name="write-a")
    upper.sink(sink("b"), name="write-b")

    plan = build_plan(job.graph)

    assert chains(plan) == [["read", "upper"], ["write-a"], ["write-b"]]
    assert inputs(plan) == [[], [(0, Partitioning.FORWARD)], [(0, Partitioning.FORWARD)]]
    assert len(plan.tasks[0].outputs) == 2


def test_union_into_one_operator_gives_a_task_with_two_input_edges() -> None:
    job = Job("union")
    left = job.source(source(), name="left")
    right = job.source(FileSource("unused/other"), name="right")
    left.union(right).map(str.upper, name="upper").sink(sink(), name="write")

    plan = build_plan(job.graph)

    assert chains(plan) == [["left"], ["right"], ["upper", "write"]]
    assert sorted(inputs(plan)[2]) == [(0, Partitioning.FORWARD), (1, Partitioning.FORWARD)]


def test_plan_is_a_pure_function_of_graph_and_settings() -> None:
    def build() -> Job:
        job = Job("pure")
        job.source(source(), name="read").key_by(len).reduce(max, name="m").sink(sink())
        return job

    a = build_plan(build().graph, default_parallelism=2, max_parallelism=16)
    b = build_plan(build().graph, default_parallelism=2, max_parallelism=16)

    assert a.describe() == b.describe()
    assert a.fingerprint == b.fingerprint
    assert a.max_parallelism == 16


def test_describe_shows_each_task_as_a_chain_with_its_inputs() -> None:
    job = Job("shown")
    (
        job.source(source(), name="read")
        .flat_map(str.split, name="split")
        .key_by(str.lower)
        .reduce(lambda a, b: a, name="first")
        .sink(sink(), name="write")
    )
    plan = build_plan(job.graph, default_parallelism=2, max_parallelism=32)

    text = plan.describe()

    assert text.splitlines() == [
        "physical plan (2 tasks, max parallelism 32):",
        "  task 0 [x2]: read -> split",
        "  task 1 [x2]: first -> write",
        "      <- task 0 (hash)",
    ]
    graph_text = describe_graph(job.graph)
    assert graph_text.startswith(f"job 'shown' (fingerprint {job.graph.fingerprint()}):")
    assert "<- split (hash)" in graph_text
