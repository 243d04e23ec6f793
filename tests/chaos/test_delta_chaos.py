"""DeltaSink under kill -9: the keyed chaos job writes dict rows to a Delta table (two sink subtasks).

The runner's process group is killed at random moments and at the sink's
named crash points (between the table commit and the manifest cleanup, mid
commit, after the coordinator wrote ``_metadata`` but before the sinks heard
of it), then the job runs to the end. After every kill the table must hold no
record twice and nothing outside the oracle, and every table version must
carry, as its Delta transaction version, the id of a completed checkpoint
(distinct, increasing), so versions <= completed checkpoints. At the end the
rows must equal the plain-Python reference exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, CliRuns, Workload
from tests.support.oracles import expected

deltalake = pytest.importorskip("deltalake")

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]

LABELS = [
    "after_commit_before_bookkeeping",
    "mid_commit",
    "after_metadata_before_notify",
    "after_pending_rename_before_commit_rename",
]
RUNNER_LABELS = ["after_metadata_before_notify"]
"""Under the process executor the sink's crash points are in a worker (whose death the runner
survives by a restart); only the coordinator's kills the run."""
RANDOM_KILLS = 5
APP_ID = "onceflow:chaos-keyed:write"


def completed_checkpoints(checkpoints: Path) -> set[int]:
    """Ids of every checkpoint whose ``_metadata`` was written (``--retain`` keeps them all)."""
    return {int(p.parent.name.removeprefix("chk-")) for p in checkpoints.rglob("chk-*/_metadata")}


def table_versions(table: Path) -> list[int | None]:
    """The Delta transaction version of this sink each table version recorded, in version order."""
    found = []
    for log in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        txn = [a["txn"]["version"] for a in actions if "txn" in a and a["txn"]["appId"] == APP_ID]
        found.append(txn[0] if txn else None)
    return found


@pytest.mark.parametrize("executor", ["local", "process"])
def test_delta_sink_is_exactly_once_under_kills(
    executor: str, workload: Workload, chaos_dir: Path, chaos_seed: int
) -> None:
    # about 10 s of work per full run (the process executor's two workers share it), so kills land mid-run
    delay = "100" if executor == "local" else "250"
    table = chaos_dir / "table"
    checkpoints = chaos_dir / "chk"
    runs = CliRuns(
        JOBS / "chaos_job.py",
        params={"input": str(workload.input_dir), "output": str(table), "sink": "delta", "delay_us": delay},
        args=[
            "--checkpoint-dir",
            str(checkpoints),
            "--checkpoint-interval",
            "0.1",
            "--retain",
            "100000",
            "--parallelism",
            "2",
            "--restart-delay",
            "0.1",
            "--executor",
            executor,
        ],
        logs=chaos_dir / "logs",
        seed=chaos_seed,
        run_timeout=120.0,
    )
    oracle = {int(rid): line for rid, line in expected(workload.n, workload.k, "keyed").items()}

    def check(when: str) -> tuple[int, int]:
        if not (table / "_delta_log").exists():
            return 0, 0
        rows = deltalake.DeltaTable(str(table)).to_pyarrow_table().to_pylist()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), f"{when}: {len(ids) - len(set(ids))} duplicate rows; {runs.where()}"
        for r in rows:
            line = f"{r['id']},{r['key']},{r['count']},{r['total']}"
            assert oracle.get(r["id"]) == line, f"{when}: unexpected row {r}; {runs.where()}"
        txns = table_versions(table)
        done = completed_checkpoints(checkpoints)
        assert all(t is not None for t in txns), f"{when}: a version without a transaction id; {runs.where()}"
        assert txns == sorted(set(txns)), f"{when}: transaction versions {txns} repeat; {runs.where()}"
        assert set(txns) <= done, f"{when}: versions {sorted(set(txns) - done)} are no completed checkpoint"
        return len(txns), len(done)

    labels = LABELS if executor == "local" else RUNNER_LABELS
    for kind, arg in runs.fault_plan(RANDOM_KILLS, labels, max_n=3):
        if kind == "random":
            outcome = runs.run(kill_after=runs.rng.uniform(0.8, 3.0), runner_only=executor == "process")
        else:
            outcome = runs.run(crash_at=str(arg))
        if outcome.returncode == 0:
            break
        runs.expect_killed(outcome)
        check(f"after run {outcome.index} ({outcome.label})")
    kills = sum(runs.kills.values())
    assert kills >= 5, f"the job finished after only {kills} kills; {runs.where()}"
    runs.run_to_completion()
    versions, completed = check("at the end")
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table().num_rows
    assert rows == len(oracle), f"{rows} rows, expected {len(oracle)}; {runs.where()}"
    assert versions <= completed
    staging = list((table / "_onceflow").rglob("*"))
    assert not [p for p in staging if p.is_file()], f"staged files left: {staging[:5]}; {runs.where()}"
    runs.summary(
        f"test_delta_sink_is_exactly_once_under_kills[{executor}]",
        rows=rows,
        expected=len(oracle),
        duplicates=0,
        table_versions=versions,
        completed_checkpoints=completed,
    )
