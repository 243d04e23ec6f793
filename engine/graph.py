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


class JobGraph:
    """A ``networkx.DiGraph`` whose nodes carry ``OperatorSpec`` and edges ``EdgeSpec``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dag: nx.DiGraph = nx.DiGraph()

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

    def by_uid(self) -> dict[str, OperatorSpec]:
        """Return specs indexed by uid."""
        return {s.uid: s for s in self.specs()}

    def validate(self) -> None:
        """Check the graph before anything runs; raise one error listing every violation.

        Checks: the graph is acyclic, it has a source, uids are unique, every
        operator reaches a sink, and explicit forward edges join equal
        parallelism (when both sides set one).
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
            reaching = set(sinks)
            for sink in sinks:
                reaching |= nx.ancestors(self.dag, sink)
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
        if problems:
            msg = f"job {self.name!r} is invalid:\n  - " + "\n  - ".join(problems)
            raise JobDefinitionError(msg)

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
            for u, v in self.dag.edges
        )
        blob = json.dumps({"nodes": nodes, "edges": edges}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
