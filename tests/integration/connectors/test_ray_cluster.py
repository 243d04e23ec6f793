"""The Ray executor on a two-node Ray cluster (``ray.cluster_utils.Cluster``, both nodes on 127.0.0.1).

Checkpoints and output go to a moto S3 bucket, as every node must see them;
a local path is refused before anything runs. The workers are placed one per
node by the placement group.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path

import pytest

from onceflow.engine.errors import CheckpointDirectoryError, JobDefinitionError
from onceflow.operators.files import read_committed_lines
from tests.support.chaos import JOBS
from tests.support.oracles import compare, expected, write_input
from tests.support.ray_support import (
    check_postgres,
    check_union,
    check_windows,
    ray_temp_dir,
    remove_temp_dir,
    run_on_ray,
    wait_for_no_ray_processes,
)

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.slow

N, K, FILES = 20_000, 50, 4


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint):
    """A head and one more node, one CPU each; this process is the driver."""
    temp_dir = ray_temp_dir()
    # both nodes' sessions and sockets, and the cluster's address file, under temp_dir; and Ray's
    # address resolution stays on the loopback (it otherwise swaps 127.0.0.1 for the host's address)
    env = {"RAY_TMPDIR": temp_dir, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read when ray was imported
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            # a lost node is declared dead after ~2 s (Ray's default: ~15 s of missed health checks)
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
        },
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = True
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        left = wait_for_no_ray_processes(temp_dir, timeout=30)
        remove_temp_dir(temp_dir)
        assert not left, f"Ray processes left after the cluster shut down: {left}"


@pytest.fixture(scope="module")
def keyed_input(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ray-cluster-input")
    write_input(directory, N, K, FILES)
    return directory


def test_keyed_count_on_two_nodes_with_s3_checkpoints_is_exact(two_nodes, keyed_input, s3_bucket) -> None:
    seen: list = []
    out = f"{s3_bucket}/out"
    result = run_on_ray(
        JOBS / "chaos_job.py",
        {"input": str(keyed_input), "output": out, "mode": "keyed"},
        f"{s3_bucket}/chk",
        on_tick=lambda executor, now: seen.append(executor),
    )
    nodes = seen[-1].nodes
    print(f"two-node run: workers on nodes {nodes}, {result.checkpoints_completed} checkpoints")
    assert len(set(nodes.values())) == 2, f"both workers on one node: {nodes}"
    figures = compare(read_committed_lines(out), expected(N, K, "keyed"), "keyed")
    assert figures["committed"] == figures["expected"] > 0, figures
    assert figures["duplicates"] == figures["lost"] == figures["unexpected"] == figures["wrong_value"] == 0


def on_both_nodes(executor, what: str) -> None:
    """Assert (and print) that the run's two workers ran on the cluster's two nodes."""
    nodes = executor.nodes
    print(f"{what}: workers on nodes {nodes}")
    assert len(set(nodes.values())) == 2, f"{what}: both workers on one node: {nodes}"


def test_union_on_two_nodes_is_exact(two_nodes, s3_bucket, tmp_path) -> None:
    on_both_nodes(check_union(tmp_path, f"{s3_bucket}/out", f"{s3_bucket}/chk"), "union")


def test_event_time_windows_on_two_nodes_are_exact(two_nodes, s3_bucket, tmp_path) -> None:
    on_both_nodes(check_windows(tmp_path, f"{s3_bucket}/out", f"{s3_bucket}/chk"), "windows")


def test_postgres_sink_job_on_two_nodes_is_exact(two_nodes, pg, s3_bucket, tmp_path) -> None:
    on_both_nodes(check_postgres(tmp_path, pg, f"{s3_bucket}/chk"), "postgres")


def test_local_checkpoints_are_refused_on_two_nodes(two_nodes, keyed_input, s3_bucket, tmp_path) -> None:
    with pytest.raises(CheckpointDirectoryError, match="the Ray cluster has 2 nodes"):
        run_on_ray(
            JOBS / "chaos_job.py",
            {"input": str(keyed_input), "output": f"{s3_bucket}/out", "mode": "keyed"},
            str(tmp_path / "chk"),
            restarts=0,
        )


def test_local_file_output_is_refused_on_two_nodes(two_nodes, keyed_input, s3_bucket, tmp_path) -> None:
    with pytest.raises(JobDefinitionError, match="sink 'write'.*writes to a local path"):
        run_on_ray(
            JOBS / "chaos_job.py",
            {"input": str(keyed_input), "output": str(tmp_path / "out"), "mode": "keyed"},
            f"{s3_bucket}/chk",
            restarts=0,
        )


@pytest.mark.chaos
def test_a_lost_node_shrinks_the_next_attempt_and_room_brings_it_back(
    two_nodes, keyed_input, s3_bucket, chaos_seed, caplog
) -> None:
    """Kill -9 of a node mid-run: the next attempt restores at parallelism 1 by key groups and goes
    on; a node added back mid-run and that attempt's worker killed: the next goes back to 2. Exact.

    Runs last in this module and leaves the cluster with two nodes again.
    """
    rng = random.Random(chaos_seed)
    lose_at, regain_at = rng.uniform(0.1, 0.3) * N, rng.uniform(0.1, 0.3) * N
    out = f"{s3_bucket}/out"
    widths: list[int] = []
    seen: set[int] = set()
    killed: list[int] = []

    def chaos(executor, now) -> None:
        if id(executor) not in seen:
            seen.add(id(executor))
            widths.append(executor.workers_count)
        if executor.coordinator.completed_count < 1:
            return
        records = sum(m.source_records for m in executor.metrics())
        if len(widths) == 1 and records >= lose_at and len(two_nodes.worker_nodes) == 1:
            # every process of the node that is not the driver's (as if the machine died)
            two_nodes.remove_node(next(iter(two_nodes.worker_nodes)), allow_graceful=False)
        elif executor.workers_count == 1 and not killed and records >= regain_at:
            # while this runs the attempt cannot complete its final checkpoint: the kill lands mid-run
            two_nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            two_nodes.wait_for_nodes()
            pid = ray.get(executor.actors[0].pid.remote())
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    with caplog.at_level(logging.INFO, logger="onceflow"):
        result = run_on_ray(
            JOBS / "chaos_job.py",
            {"input": str(keyed_input), "output": out, "mode": "keyed", "delay_us": "200"},
            f"{s3_bucket}/chk",
            on_tick=chaos,
            restarts=5,
        )
    logged = [r.getMessage() for r in caplog.records]
    shrank = [line for line in logged if "fewer than the run's parallelism 2" in line]
    grew = [line for line in logged if "(taken at parallelism 1) at parallelism 2" in line]
    print(f"attempts at parallelism {widths}, restarts {result.restarts}; {shrank[:1]} {grew[:1]}")
    assert widths[0] == 2 and 1 in widths and widths[-1] == 2, widths
    assert killed, f"the attempt at parallelism 1 was never interrupted: {widths}"
    assert any("restoring checkpoint" in line and "at parallelism 1 by key groups" in line for line in shrank)
    assert grew, "no attempt went back to parallelism 2 from a checkpoint taken at 1"
    figures = compare(read_committed_lines(out), expected(N, K, "keyed"), "keyed")
    assert figures["committed"] == figures["expected"] > 0, figures
    assert figures["duplicates"] == figures["lost"] == figures["unexpected"] == figures["wrong_value"] == 0
