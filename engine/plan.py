"""Physical planning: chain operators into tasks and resolve parallelism and edges.

A pure function of the job graph and the run settings. It neither creates
operators nor channels; executors build those from the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onceflow.engine.errors import JobDefinitionError
from onceflow.engine.graph import JobGraph, OperatorKind, OperatorSpec, Partitioning


@dataclass(frozen=True)
class TaskEdge:
    """An edge between two tasks (tail operator of one, head of the other)."""

    upstream_task: int
    downstream_task: int
    partitioning: Partitioning
    key_fn: Any = None
    tag: str | None = None
    side: int = 0
    """The input of a two-input head operator this edge feeds (0 or 1)."""


@dataclass
class TaskSpec:
    """A chain of operators that runs as one unit, ``parallelism`` subtasks wide."""

    task_id: int
    operators: list[OperatorSpec]
    parallelism: int
    inputs: list[TaskEdge] = field(default_factory=list)
    outputs: list[TaskEdge] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Show the chain as ``a -> b -> c``."""
        return " -> ".join(op.name for op in self.operators)

    @property
    def is_source(self) -> bool:
        """Whether the chain starts with a source."""
        return self.operators[0].kind is OperatorKind.SOURCE

    @property
    def keyed_input(self) -> bool:
        """Whether the head operator receives keys (reads a hash-partitioned edge)."""
        return any(e.partitioning is Partitioning.HASH for e in self.inputs)


@dataclass
class PhysicalPlan:
    """Tasks in topological order, with the settings they were planned for."""

    job_name: str
    tasks: list[TaskSpec]
    max_parallelism: int
    fingerprint: str

    def task(self, task_id: int) -> TaskSpec:
        """Return one task."""
        return self.tasks[task_id]

    def parallelism_by_uid(self) -> dict[str, int]:
        """Return each operator's parallelism."""
        return {op.uid: t.parallelism for t in self.tasks for op in t.operators}

    def describe(self) -> str:
        """Render the plan for ``onceflow graph``."""
        lines = [f"physical plan ({len(self.tasks)} tasks, max parallelism {self.max_parallelism}):"]
        for t in self.tasks:
            lines.append(f"  task {t.task_id} [x{t.parallelism}]: {t.name}")
            for e in t.inputs:
                tag = f", side output {e.tag!r}" if e.tag else ""
                side = f", input {e.side + 1}" if e.side else ""
                lines.append(f"      <- task {e.upstream_task} ({e.partitioning.value}{tag}{side})")
        return "\n".join(lines)


def build_plan(graph: JobGraph, *, default_parallelism: int = 1, max_parallelism: int = 128) -> PhysicalPlan:
    """Validate ``graph`` and chain it into tasks.

    Steps:
    1. Resolve each operator's parallelism (its own, else the default).
    2. Resolve default edges: forward when both sides have equal parallelism,
       else rebalance.
    3. Chain ``u -> v`` when the edge is forward, parallelism is equal, ``u``
       has one output and ``v`` one input. Dead-letter edges do not count as
       outputs: an ``on_error="dead_letter"`` operator stays chained, and any
       operator of a chain can send dead letters.
    4. Turn the edges between chains into task edges; the dead-letter edges of
       several operators of one chain become one task edge (one copy of each
       dead letter).
    """
    graph.validate()
    dag = graph.dag
    # Step 1
    par: dict[int, int] = {}
    for spec in graph.specs():
        p = spec.parallelism or default_parallelism
        if p > max_parallelism:
            msg = (
                f"operator {spec.name!r} has parallelism {p}, above max parallelism "
                f"{max_parallelism}; lower it or raise --max-parallelism"
            )
            raise JobDefinitionError(msg)
        par[spec.node_id] = p
    # Step 2
    parts: dict[tuple[int, int], Partitioning] = {}
    for u, v in dag.edges:
        partitioning = graph.edge(u, v).partitioning
        if partitioning is Partitioning.FORWARD and par[u] != par[v]:
            partitioning = Partitioning.REBALANCE
        parts[u, v] = partitioning
    # Step 3
    chain_of: dict[int, int] = {}
    tasks: list[TaskSpec] = []
    for spec in graph.specs():
        n = spec.node_id
        preds = list(dag.predecessors(n))
        if len(preds) == 1:
            u = preds[0]
            if (
                parts[u, n] is Partitioning.FORWARD
                and graph.edge(u, n).tag is None
                and par[u] == par[n]
                and _main_out_degree(graph, u) == 1
                and graph.spec(u).kind is not OperatorKind.SINK
            ):
                task = tasks[chain_of[u]]
                task.operators.append(spec)
                chain_of[n] = task.task_id
                continue
        task = TaskSpec(task_id=len(tasks), operators=[spec], parallelism=par[n])
        tasks.append(task)
        chain_of[n] = task.task_id
    # Step 4
    dead_letter_edges: set[tuple[int, int]] = set()
    for u, v in dag.edges:
        tu, tv = chain_of[u], chain_of[v]
        if tu == tv:
            continue
        if graph.is_dead_letter_edge(u, v):
            if (tu, tv) in dead_letter_edges:
                continue
            dead_letter_edges.add((tu, tv))
        edge_spec = graph.edge(u, v)
        edge = TaskEdge(tu, tv, parts[u, v], edge_spec.key_fn, edge_spec.tag, edge_spec.side)
        tasks[tu].outputs.append(edge)
        tasks[tv].inputs.append(edge)
    return PhysicalPlan(
        job_name=graph.name,
        tasks=tasks,
        max_parallelism=max_parallelism,
        fingerprint=graph.fingerprint(),
    )


def _main_out_degree(graph: JobGraph, node: int) -> int:
    """Count the edges out of ``node`` other than dead-letter edges."""
    return sum(1 for v in graph.dag.successors(node) if not graph.is_dead_letter_edge(node, v))


def describe_graph(graph: JobGraph) -> str:
    """Render the logical graph for ``onceflow graph``."""
    lines = [f"job {graph.name!r} (fingerprint {graph.fingerprint()}):"]
    for spec in graph.specs():
        par = spec.parallelism if spec.parallelism is not None else "default"
        desc = f" {spec.description}" if spec.description else ""
        lines.append(
            f"  [{spec.node_id}] {spec.kind.value:9} {spec.name} (uid={spec.uid}, parallelism={par}){desc}"
        )
        for u in sorted(graph.dag.predecessors(spec.node_id)):
            e = graph.edge(u, spec.node_id)
            tag = f", side output {e.tag!r}" if e.tag else ""
            lines.append(f"        <- {graph.spec(u).name} ({e.partitioning.value}{tag})")
    return "\n".join(lines)
