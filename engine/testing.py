"""Run a job in-process for a test, with fast checkpoints and quick restarts.

Lives in ``engine`` (not ``onceflow.operators.testing``) because it drives the runner,
and operators never import the engine.
"""

from __future__ import annotations

import tempfile
import uuid

from onceflow.engine.api import Job
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.errors import OperatorError
from onceflow.engine.executors.local import ExecutionSettings
from onceflow.engine.runner import JobRunner, RestartStrategy, RunResult
from onceflow.operators.testing import RunInterrupted


def run_job_for_test(
    job: Job,
    *,
    checkpoint_dir: str | None = None,
    parallelism: int = 1,
    checkpoint_interval: float = 0.05,
    restart_attempts: int = 3,
    batch_size: int = 1024,
    channel_capacity: int = 8,
    max_parallelism: int = 128,
    fresh: bool = False,
    executor: str = "local",
) -> RunResult:
    """Run ``job`` to completion and return the result.

    Defaults suit tests: checkpoints in a fresh ``memory://`` directory every
    50 ms, restarts without delay (the process executor needs a shared
    folder, so it gets a fresh temporary one instead). Pass the same ``checkpoint_dir`` twice to
    resume a run. An ``EndOfRun`` sentinel surfaces as ``RunInterrupted``.
    """
    if checkpoint_dir is None:
        checkpoint_dir = (
            f"memory://onceflow-test-{uuid.uuid4().hex[:8]}"
            if executor == "local"
            else tempfile.mkdtemp(prefix="onceflow-test-")
        )
    runner = JobRunner(
        job,
        executor=executor,
        checkpoint_dir=checkpoint_dir,
        parallelism=parallelism,
        max_parallelism=max_parallelism,
        settings=ExecutionSettings(
            batch_size=batch_size,
            channel_capacity=channel_capacity,
            checkpoint=CoordinatorSettings(interval=checkpoint_interval, timeout=30.0),
        ),
        restart=RestartStrategy(attempts=restart_attempts, initial_delay=0.0),
        fresh=fresh,
    )
    try:
        return runner.run()
    except OperatorError as exc:
        if isinstance(exc.__cause__, RunInterrupted):
            raise exc.__cause__ from None
        if getattr(exc, "cause_type", "") == RunInterrupted.__name__:  # from a worker process
            raise RunInterrupted(str(exc)) from None
        raise
