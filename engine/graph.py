"""The logical job graph: operator specs on a networkx DiGraph, and its validation.

This module records what the user asked for. It does not decide how operators
are chained or scheduled (``plan``) and runs nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import networkx as nx

from onceflow.engine.errors import JobDefinitionError


class Partitioning(str, Enum):
    """How records cross an edge between two operators."""

    FORWARD = "forward"
    """Subtask i to subtask i; requires equal parallelism. Allows chaining."""
    HASH = "hash"
    """By the stable hash of the key: every record of a key reaches one subtask."""
    REBALANCE = "rebalance"
    """Round-robin, batch by batch, over all downstream subtasks."""
    BROADCAST = "broadcast"
    """Every batch to every downstream subtask."""


class OnError(str, Enum):
    """What happens to a record whose user function raises (an operator's ``on_error=``)."""

    FAIL = "fail"
    """Fail the attempt; the error names the operator, the record and where it came from."""
    DEAD_LETTER = "dead_letter"
    """Send the record, with the error, to the job's dead-letter sink and go on."""


DEAD_LETTER_TAG = "onceflow.dead_letters"
"""The side-output tag of the edges from ``on_error="dead_letter"`` operators to the dead-letter sink."""


class OperatorKind(str, Enum):
    """The role of a node, which decides how a task drives it."""

    SOURCE = "source"
    TRANSFORM = "transform"
    KEYED = "keyed"
    SINK = "sink"


@dataclass(eq=False)
class OperatorSpec:
    """One node of the job graph.

    ``factory(subtask_index, parallelism)`` returns a fresh operator (or, for a
    source, a ``SourceReader``) for each subtask of each attempt, so no state
    leaks between attempts.
    """

    node_id: int
    name: str
    uid: str
    kind: OperatorKind
    factory: Callable[[int, int], Any]
    parallelism: int | None = None
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    """The call that made the operator (``reduce``, ``stateful_map``, ``source:FileSource``,
    ``sink:FileSink``...): its kind of state, as far as uids are concerned."""
    explicit_uid: bool = False
    """True if the job passed ``uid=``; else :meth:`JobGraph.assign_default_uids` derives ``uid``."""
    on_error: OnError = OnError.FAIL
    """What a record whose user function raises does: fail the attempt, or become a dead letter."""


@dataclass(frozen=True)
class EdgeSpec:
    """Partitioning of one edge; ``key_fn`` is set for ``HASH``.

    ``explicit`` is False for a default edge, which the planner turns into
    ``REBALANCE`` when the two sides end up with different parallelism.
    """

    partitioning: Partitioning
    key_fn: Callable[[Any], Any] | None = None
    explicit: bool = False
    tag: str | None = None
    """Side-output tag: the edge carries the upstream's ``ctx.output(tag, ...)`` records only."""
    side: int = 0
    """Which input of a two-input operator (``connect``, joins) the edge feeds: 0 the first, 1 the second."""


class JobGraph:
    """A ``networkx.DiGraph`` whose nodes carry ``OperatorSpec`` and edges ``EdgeSpec``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dag: nx.DiGraph = nx.DiGraph()
        self.dead_letter_sink: int | None = None
        """The node of ``job.dead_letters(sink)``, if the job set one."""

    def add_operator(self, spec: OperatorSpec) -> None:
        """Add a node."""
        self.dag.add_node(spec.node_id, spec=spec)

    def connect(self, upstream: int, downstream: int, edge: EdgeSpec) -> None:
        """Add an edge; connecting the same pair twice is a definition error."""
        if self.dag.has_edge(upstream, downstream):
            up, down = self.spec(upstream).name, self.spec(downstream).name
            msg = (
                f"operator {down!r} reads {up!r} twice (a stream unioned with itself); "
                "union distinct streams instead"
            )
            raise JobDefinitionError(msg)
        self.dag.add_edge(upstream, downstream, edge=edge)

    def connect_dead_letters(self) -> None:
        """Add the missing edges from every ``on_error="dead_letter"`` operator to the dead-letter sink.

        Called after every change of the graph, whichever of the operator and
        ``job.dead_letters`` came first; without a dead-letter sink it does
        nothing and :meth:`validate` reports the operators.
        """
        sink = self.dead_letter_sink
        if sink is None:
            return
        for spec in self.specs():
            if spec.on_error is OnError.DEAD_LETTER and not self.dag.has_edge(spec.node_id, sink):
                self.dag.add_edge(
                    spec.node_id, sink, edge=EdgeSpec(Partitioning.FORWARD, tag=DEAD_LETTER_TAG)
                )

    def is_dead_letter_edge(self, upstream: int, downstream: int) -> bool:
        """Whether the edge carries dead letters (it then never ends a chain nor counts as an output)."""
        return self.edge(upstream, downstream).tag == DEAD_LETTER_TAG

    def spec(self, node_id: int) -> OperatorSpec:
        """Return the spec of a node."""
        return self.dag.nodes[node_id]["spec"]

    def edge(self, upstream: int, downstream: int) -> EdgeSpec:
        """Return the spec of an edge."""
        return self.dag.edges[upstream, downstream]["edge"]

    def specs(self) -> list[OperatorSpec]:
        """Return all specs in a deterministic topological order."""
        order = nx.lexicographical_topological_sort(self.dag)
        return [self.spec(n) for n in order]

    def assign_default_uids(self) -> None:
        """Give every operator without ``uid=`` the uid its position in the whole graph derives.

        The default uid is ``<name>-<digest>``, the digest covering the
        operator's method and the structure upstream *and* downstream of it
        (methods, partitionings, side-output tags and positions among
        siblings, not functions or parallelism), as Flink hashes its stream
        graph. So identical runs agree, and any structural change, even an
        operator of the same kind and name inserted before this one, gives
        every affected operator a new uid: its old state is then unmatched
        instead of handed to another operator. Called after every change of
        the graph; cheap for graphs of hundreds of operators.
        """
        digests = self._structure_digests()
        for node, digest in digests.items():
            spec = self.spec(node)
            if not spec.explicit_uid:
                spec.uid = f"{spec.name}-{digest}"

    def _structure_digests(self) -> dict[int, str]:
        dag = self.dag
        order = list(nx.lexicographical_topological_sort(dag))
        roots = sorted(n for n in dag.nodes if dag.in_degree(n) == 0)

        def edge_label(u: int, v: int) -> list[str]:
            edge = self.edge(u, v)
            # the side joins the label only when set, so one-input graphs keep their uids
            return [edge.partitioning.value, edge.tag or ""] + ([str(edge.side)] if edge.side else [])

        upstream: dict[int, str] = {}
        for node in order:
            parents = sorted(
                [upstream[p], *edge_label(p, node), str(list(dag.successors(p)).index(node))]
                for p in dag.predecessors(node)
            )
            root = [str(roots.index(node))] if node in roots else []
            upstream[node] = _digest([self.spec(node).kind.value, self.spec(node).method, root, parents])
        downstream: dict[int, str] = {}
        for node in reversed(order):
            children = sorted([downstream[c], *edge_label(node, c)] for c in dag.successors(node))
            downstream[node] = _digest([self.spec(node).kind.value, self.spec(node).method, children])
        return {node: _digest([upstream[node], downstream[node]])[:12] for node in order}

    def stateful_without_uid(self) -> list[OperatorSpec]:
        """Return the sources, keyed operators and sinks that have no explicit ``uid=``."""
        stateful = (OperatorKind.SOURCE, OperatorKind.KEYED, OperatorKind.SINK)
        return [s for s in self.specs() if s.kind in stateful and not s.explicit_uid]

    def by_uid(self) -> dict[str, OperatorSpec]:
        """Return specs indexed by uid."""
        return {s.uid: s for s in self.specs()}

    def validate(self) -> None:
        """Check the graph before anything runs; raise one error listing every violation.

        Checks: the graph is acyclic, it has a source, uids are unique, every
        operator reaches a sink (dead-letter edges do not count), explicit
        forward edges join equal parallelism (when both sides set one), and
        operators with ``on_error="dead_letter"`` have a dead-letter sink and
        the other way round.
        """
        problems: list[str] = []
        if not nx.is_directed_acyclic_graph(self.dag):
            cycle = " -> ".join(self.spec(u).name for u, _ in nx.find_cycle(self.dag))
            problems.append(f"the job graph has a cycle: {cycle}")
        specs = [self.spec(n) for n in self.dag.nodes]
        if not any(s.kind is OperatorKind.SOURCE for s in specs):
            problems.append("the job has no source; add one with job.source(...)")
        seen: dict[str, str] = {}
        for s in specs:
            if s.uid in seen:
                problems.append(
                    f"uid {s.uid!r} is used by both {seen[s.uid]!r} and {s.name!r}; "
                    "uids identify state and must be unique"
                )
            seen.setdefault(s.uid, s.name)
            if s.parallelism is not None and s.parallelism < 1:
                problems.append(f"operator {s.name!r} has parallelism {s.parallelism!r}; use >= 1")
        sinks = {n for n in self.dag.nodes if self.spec(n).kind is OperatorKind.SINK}
        if specs and not sinks:
            problems.append("the job has no sink; end every stream with .sink(...)")
        elif sinks:
            main = nx.subgraph_view(self.dag, filter_edge=lambda u, v: not self.is_dead_letter_edge(u, v))
            reaching = set(sinks)
            for sink in sinks:
                reaching |= nx.ancestors(main, sink)
            for n in sorted(set(self.dag.nodes) - reaching):
                problems.append(
                    f"operator {self.spec(n).name!r} leads to no sink; "
                    "its output would be dropped (end it with .sink(...))"
                )
        for u, v in self.dag.edges:
            e = self.edge(u, v)
            pu, pv = self.spec(u).parallelism, self.spec(v).parallelism
            if e.partitioning is Partitioning.FORWARD and e.explicit and pu and pv and pu != pv:
                problems.append(
                    f"forward edge {self.spec(u).name!r} -> {self.spec(v).name!r} joins "
                    f"parallelism {pu} to {pv}; use .rebalance() or equal parallelism"
                )
        problems.extend(self._dead_letter_problems())
        if problems:
            msg = f"job {self.name!r} is invalid:\n  - " + "\n  - ".join(problems)
            raise JobDefinitionError(msg)

    def _dead_letter_problems(self) -> list[str]:
        asking = [s.name for s in self.specs() if s.on_error is OnError.DEAD_LETTER]
        if self.dead_letter_sink is None:
            if not asking:
                return []
            names = ", ".join(repr(n) for n in asking)
            return [
                f"operator(s) {names} send failing records to dead letters (on_error='dead_letter') "
                "but the job has no dead-letter sink; add one with job.dead_letters(FileSink(...)) "
                "or use on_error='fail'"
            ]
        if not asking:
            name = self.spec(self.dead_letter_sink).name
            return [
                f"dead-letter sink {name!r} would never receive a record: no operator has "
                "on_error='dead_letter'; remove job.dead_letters(...) or set on_error='dead_letter'"
            ]
        return []

    def fingerprint(self) -> str:
        """Return a digest of the topology (uids, kinds, edges), independent of parallelism."""
        nodes = sorted((s.uid, s.kind.value) for s in self.specs())
        edges = sorted(
            (
                self.spec(u).uid,
                self.spec(v).uid,
                self.edge(u, v).partitioning.value,
                self.edge(u, v).tag or "",
            )
            + ((self.edge(u, v).side,) if self.edge(u, v).side else ())
            for u, v in self.dag.edges
        )
        blob = json.dumps({"nodes": nodes, "edges": edges}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()
