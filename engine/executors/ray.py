"""The Ray executor: the same physical plan on a Ray cluster, one worker per Ray actor.

``ray.init()`` starts a Ray on this machine unless ``--ray-address`` (or
``RAY_ADDRESS``) names a cluster to join. Each worker is an actor with one
CPU, placed by a placement group that spreads the workers over the nodes;
there are as many workers as the largest parallelism in the plan, or as the
cluster has CPUs if fewer (subtask ``i`` of every task runs on worker
``i % workers``, as in the process executor).

An actor rebuilds the job itself: the job's folder is shipped as its working
directory, it imports the job file and calls ``build(**params)`` with the
run's parameters, and checks that the plan it gets is the driver's. User
functions are never pickled; only batches, control elements and restored
state cross. The actor then runs the very ``Worker`` the process executor
forks (:mod:`onceflow.engine.executors.worker`) over a
:class:`~onceflow.engine.transport.actors.RayTransport`. The coordinator stays
in the driver (:class:`~onceflow.engine.executors._pool.WorkerPoolExecutor`).

Failures: an actor that dies, a node that is lost or an object that cannot be
fetched fails the attempt, and the runner restores from the latest completed
checkpoint. Before every attempt the runner asks
:meth:`RayExecutor.available_parallelism` (the live nodes' CPUs): a cluster
that lost a node runs the next attempt at a lower parallelism, state restored
by key groups, and one that has room again goes back up. A node lost while
the workers are being placed fails that attempt at once, so the next asks for
fewer. The actors belong to this driver, so Ray ends them when the driver
dies, even by ``kill -9``; a local Ray this driver started goes with it
(:mod:`onceflow.engine.executors._reaper`).

Storage: on a cluster of more than one node, checkpoints and file output must
be on storage every node sees; a local path is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.errors import CheckpointDirectoryError, JobDefinitionError, JobLoadError
from onceflow.engine.executors._pool import WorkerPoolExecutor
from onceflow.engine.executors._reaper import start_reaper
from onceflow.engine.executors._wiring import Attempt, ExecutionSettings, SubtaskSettings
from onceflow.engine.executors.base import TickHook
from onceflow.engine.executors.process import refuse_unshared_sinks
from onceflow.engine.executors.worker import Worker, describe, worker_of
from onceflow.engine.plan import PhysicalPlan, build_plan
from onceflow.engine.transport.actors import DRIVER, RayTransport
from onceflow.operators.base import RestoredState

__all__ = ["RayExecutor", "RayWorkerSpec", "cluster_cpus", "connect_ray"]

log = logging.getLogger("onceflow")

PLACEMENT_TIMEOUT = 60.0
"""Seconds to wait for the cluster to grant one CPU per worker before giving up."""
_REPORT_WAIT = 0.1
_NOT_SHIPPED = (".git", "__pycache__", ".onceflow", ".venv", "*.pyc")
"""Left out of the job folder shipped to the actors."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        msg = "--executor ray needs Ray: pip install 'onceflow[ray]'"
        raise JobDefinitionError(msg) from exc
    return ray


def connect_ray(address: str | None = None, job_dir: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start one on this machine.

    ``job_dir`` (the job file's folder) becomes the working directory of every
    actor, uploaded by Ray to each node. Does nothing when this process is
    already connected (a restarted attempt, or a program that started Ray
    itself; actors then load the job file from its path on the driver, which
    a single machine or a shared filesystem provides). A local Ray and a
    cluster addressed on the loopback are bound to 127.0.0.1, so no Ray
    traffic leaves the machine.
    """
    ray = _ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
    if job_dir is not None:
        kwargs["runtime_env"] = {"working_dir": job_dir, "excludes": list(_NOT_SHIPPED)}
    if address is None or address.split(":")[0] in ("127.0.0.1", "localhost"):
        kwargs["_node_ip_address"] = "127.0.0.1"
    if address is None:
        log.info("starting a local Ray")
        start_reaper()
    else:
        log.info("joining the Ray cluster at %s", address)
    ray.init(address=address, **kwargs)


def plan_signature(plan: PhysicalPlan) -> tuple:
    """Return what a rebuilt plan must share with the driver's: fingerprint, tasks, parallelism, uids."""
    return (
        plan.fingerprint,
        plan.max_parallelism,
        tuple((t.task_id, t.parallelism, tuple(op.uid for op in t.operators)) for t in plan.tasks),
    )


@dataclass(frozen=True)
class RayWorkerSpec:
    """What an actor needs to rebuild the job and run its part of the attempt."""

    job_file: str
    """The job file's path on the driver; the actor loads the file of that name from its working
    directory (the shipped folder) if there, else from this path (one machine, a shared filesystem)."""
    params: dict[str, str]
    parallelism: int
    max_parallelism: int
    signature: tuple
    subtask_settings: SubtaskSettings
    store_url: str
    driver_cwd: str
    """Relative paths keep their meaning on a node where this folder exists (the driver's machine)."""


def _refuse_node_local_storage(plan: PhysicalPlan, store: CheckpointStore, nodes: int) -> None:
    """On a multi-node cluster, refuse checkpoints and sinks on storage only one node sees."""
    if store.is_local:
        msg = (
            f"checkpoint directory {store.url!r} is a local path, but the Ray cluster has {nodes} nodes "
            "and every node writes checkpoints: use storage every node sees (an s3:// URL, a shared "
            "filesystem mounted at the same path on every node)"
        )
        raise CheckpointDirectoryError(msg)
    for task in plan.tasks:
        for spec in task.operators:
            sink = spec.config.get("sink")
            if sink is not None and not sink.shared_across_nodes:
                msg = (
                    f"sink {spec.name!r} ({sink!r}) writes to a local path, but the Ray cluster has "
                    f"{nodes} nodes and each would keep its own part: give it an s3:// URL (or another "
                    "store every node sees)"
                )
                raise JobDefinitionError(msg)


def _job_file(job_file: str | None) -> str:
    if job_file is None:
        msg = "the ray executor rebuilds the job on every actor from its job file: run it from a job file"
        raise JobDefinitionError(msg)
    return os.path.abspath(job_file)


def cluster_cpus() -> int:
    """Return the CPUs of the connected Ray cluster's live nodes (one worker each)."""
    return int(_ray().cluster_resources().get("CPU", 0))


class RayExecutor(WorkerPoolExecutor):
    """Runs a plan on Ray actors; the coordinator stays in this process (the driver)."""

    @classmethod
    def available_parallelism(cls, settings: ExecutionSettings, job_file: str | None) -> int | None:
        """Return the cluster's CPUs now: after a node is lost, the next attempt restores lower."""
        connect_ray(settings.ray_address, os.path.dirname(_job_file(job_file)))
        return cluster_cpus()

    def __init__(self, attempt: Attempt, *, on_tick: TickHook | None = None) -> None:
        plan, store = attempt.plan, attempt.store
        job_file = _job_file(attempt.job_file)
        if "memory" in store.fs.protocol:
            msg = (
                "the ray executor needs checkpoint storage that actors share (a path or s3://), "
                f"not {store.url!r}"
            )
            raise CheckpointDirectoryError(msg)
        refuse_unshared_sinks(plan, "ray executor")
        connect_ray(attempt.settings.ray_address, os.path.dirname(job_file))
        ray = _ray()
        self._ray = ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1:
            _refuse_node_local_storage(plan, store, len(nodes))
        cpus = cluster_cpus()
        wanted = max(t.parallelism for t in plan.tasks)
        if cpus < 1:
            msg = "the Ray cluster has no CPU to place workers on"
            raise CheckpointDirectoryError(msg)
        super().__init__(attempt, min(wanted, cpus), on_tick=on_tick)
        self.actors: list[Any] = []
        self.nodes: dict[int, str] = {}
        """Worker index -> id of the Ray node it runs on."""
        self._group: Any = None
        self._next_seq = [0] * self.workers_count
        self._pending: dict[Any, int] = {}
        try:
            self._start_actors(attempt, len(nodes))
        except BaseException:
            self.close()
            raise

    def _start_actors(self, attempt: Attempt, node_count: int) -> None:
        ray = self._ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n = self.workers_count
        self._group = placement_group([{"CPU": 1}] * n, strategy="SPREAD")
        deadline = time.monotonic() + PLACEMENT_TIMEOUT
        while not self._group.wait(1):
            # a node lost since the attempt started: fail now, so the next attempt asks for fewer
            cpus = cluster_cpus()
            if cpus < n:
                raise self._lost(-1, f"the Ray cluster shrank to {cpus} CPUs while placing {n} workers")
            if time.monotonic() > deadline:
                msg = (
                    f"the Ray cluster did not grant {n} CPUs for {n} workers within "
                    f"{PLACEMENT_TIMEOUT:.0f} s ({node_count} nodes, {cpus} CPUs)"
                )
                raise self._lost(-1, msg)
        job_file = os.path.abspath(str(attempt.job_file))
        spec = RayWorkerSpec(
            job_file=job_file,
            params=dict(attempt.params),
            parallelism=attempt.parallelism,
            max_parallelism=self.plan.max_parallelism,
            signature=plan_signature(self.plan),
            subtask_settings=attempt.subtask_settings(),
            store_url=self.store.url,
            driver_cwd=os.getcwd(),
        )
        actor_class = ray.remote(RayWorkerActor)
        for w in range(n):
            self.actors.append(
                actor_class.options(
                    name=None,
                    num_cpus=1,
                    max_restarts=0,
                    max_concurrency=n + 4,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self._group, placement_group_bundle_index=w
                    ),
                ).remote(w, n, self.settings.channel_capacity)
            )
        starts = []
        for w, actor in enumerate(self.actors):
            mine = {k: v for k, v in attempt.restored.items() if worker_of(k[1], n) == w}
            starts.append(actor.start.remote(spec, mine, self.actors))
        try:
            for w, node in enumerate(ray.get(starts)):
                self.nodes[w] = node
        except ray.exceptions.RayError as exc:
            raise self._lost(-1, f"a Ray worker failed to start: {type(exc).__name__}: {exc}") from exc
        log.info(
            "%d Ray workers on %d node(s): %s",
            n,
            len(set(self.nodes.values())),
            ", ".join(f"worker {w} on {node[:8]}" for w, node in sorted(self.nodes.items())),
        )

    # -- control messages ------------------------------------------------------

    def _send(self, worker: int, message: tuple) -> None:
        seq = self._next_seq[worker]
        self._next_seq[worker] = seq + 1
        # a lost actor makes this call fail; its failure is picked up by _receive
        self.actors[worker].deliver.remote(DRIVER, seq, [message])

    def _receive(self) -> None:
        """Handle the reports the actors returned within ~20 ms; raise the first failure, if any."""
        ray = self._ray
        waiting = set(self._pending.values())
        for w, actor in enumerate(self.actors):
            if w not in self._stopped and w not in waiting:
                self._pending[actor.reports.remote(_REPORT_WAIT)] = w
        if not self._pending:
            return
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0.02)
        errors: list[Exception] = []
        for ref in ready:
            w = self._pending.pop(ref)
            try:
                messages = ray.get(ref)
            except ray.exceptions.RayError as exc:
                node = self.nodes.get(w, "?")[:8]
                errors.append(self._lost(w, f"Ray worker {w} (node {node}) was lost: {type(exc).__name__}"))
                continue
            for message in messages:
                try:
                    self._handle(w, message)
                except Exception as exc:
                    errors.append(exc)
                    break
        if errors:
            # a failure reported by a worker names its cause; a lost peer is the symptom
            errors.sort(key=lambda e: getattr(e, "symptom", False))
            raise errors[0]

    def close(self) -> None:
        """Kill every actor and release the placement group; never raises. Ray itself stays up."""
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if self._group is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self._group)
        self._pending.clear()


class RayWorkerActor:
    """One worker as a Ray actor (made remote with ``ray.remote`` by the executor).

    Methods (each a Ray call from the driver or a peer): ``start`` rebuilds
    the job and starts the scheduler loop on a thread; ``deliver`` takes a
    peer's or the driver's messages in order; ``reports`` returns what the
    worker reported to the driver, waiting briefly for something.
    """

    def __init__(self, index: int, workers: int, capacity: int) -> None:
        self.index = index
        self.workers = workers
        self._peers: list[Any] = []
        self.transport = RayTransport(
            worker=index,
            worker_of=lambda i: worker_of(i, workers),
            capacity=capacity,
            call=self._call,
        )
        self._worker: Worker | None = None
        self._thread: threading.Thread | None = None

    def _call(self, peer: int, seq: int, messages: list) -> None:
        self._peers[peer].deliver.remote(self.index, seq, messages)

    def start(
        self, spec: RayWorkerSpec, restored: dict[tuple[str, int], RestoredState], peers: list[Any]
    ) -> str:
        """Rebuild the job, open this worker's subtasks and start stepping them; return the node id."""
        import ray

        self._peers = peers
        node = str(ray.get_runtime_context().get_node_id())
        try:
            plan = self._rebuild(spec)
            store = CheckpointStore(spec.store_url, plan.job_name)
            self._worker = Worker(
                self.index,
                self.workers,
                plan,
                restored,
                spec.subtask_settings,
                store,
                self.transport,
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the driver like a failure while running
            self.transport.send(("error", describe(exc)))
            return node
        self._thread = threading.Thread(target=self._run, name="onceflow-worker", daemon=True)
        self._thread.start()
        return node

    def _rebuild(self, spec: RayWorkerSpec) -> PhysicalPlan:
        from onceflow.engine.loader import load_job_file

        shipped = os.path.abspath(os.path.basename(spec.job_file))
        if not os.path.isfile(shipped):
            shipped = spec.job_file
        if os.path.isdir(spec.driver_cwd):
            os.chdir(spec.driver_cwd)
        job = load_job_file(shipped, spec.params).job
        plan = build_plan(
            job.graph, default_parallelism=spec.parallelism, max_parallelism=spec.max_parallelism
        )
        if plan_signature(plan) != spec.signature:
            msg = (
                f"job file {spec.job_file!r} built a different job on Ray worker {self.index} than on the "
                "driver (its operators, uids or parallelism differ); build() must give the same job for "
                "the same parameters on every node"
            )
            raise JobLoadError(msg)
        return plan

    def _run(self) -> None:
        worker = self._worker
        assert worker is not None
        try:
            worker.run()
            worker.close()
            self.transport.flush()
            self.transport.send(("stopped",))
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which ends the attempt
            self.transport.send(("error", describe(exc)))
            worker.close()

    def deliver(self, sender: int, seq: int, messages: list) -> None:
        """Take a peer's elements and credits, or the driver's commands, in the order sent."""
        self.transport.receive(sender, seq, messages)

    def reports(self, timeout: float) -> list:
        """Return the reports queued for the driver, waiting up to ``timeout`` s for one."""
        return self.transport.take_reports(timeout)

    def pid(self) -> int:
        """Return this actor's process id (tests kill it)."""
        return os.getpid()
