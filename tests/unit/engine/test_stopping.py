"""Graceful stop: the coordinator's stop checkpoint, the signal handlers, and a runner stopped mid-way.

The end-to-end runs with real signals are in ``tests/integration/test_graceful_stop.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from onceflow import (
    CoordinatorSettings,
    ExecutionSettings,
    FileSink,
    FileSource,
    Job,
    JobRunner,
    RunStatus,
    read_committed_lines,
)
from onceflow.engine.checkpoint.metadata import JobDescription, StateHandle
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.coordinator import CheckpointCoordinator
from onceflow.engine.executors.base import Executor
from onceflow.engine.stopping import StopRequest

JOB = JobDescription(job="wc", fingerprint="abc123", max_parallelism=128, operators={}, params={})
SUBTASKS = [(0, 0), (1, 0)]
REPO = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def triggered() -> list[tuple[int, bool]]:
    return []


@pytest.fixture
def coordinator(memory_dir: str, triggered: list[tuple[int, bool]]) -> CheckpointCoordinator:
    return CheckpointCoordinator(
        store=CheckpointStore(memory_dir, "wc"),
        job=JOB,
        subtasks=list(SUBTASKS),
        settings=CoordinatorSettings(interval=10.0, timeout=30.0),
        first_checkpoint_id=1,
        completed={},
        trigger_sources=lambda n, final: triggered.append((n, final)),
        notify_complete=lambda n: None,
        notify_abort=lambda n: None,
        clock=Clock(),
    )


def ack_all(coordinator: CheckpointCoordinator, checkpoint_id: int) -> None:
    for uid, subtask in SUBTASKS:
        handle = StateHandle(
            uid=f"op{uid}",
            subtask=subtask,
            path=f"chk-{checkpoint_id}/op{uid}-{subtask}.arrow",
            rows=1,
            bytes=10,
            sha256="0" * 64,
        )
        coordinator.acknowledge(checkpoint_id, (uid, subtask), [handle])


# --------------------------------------------------------------------------- coordinator


def test_stop_checkpoint_is_triggered_at_once_and_completes_not_final(
    coordinator: CheckpointCoordinator, triggered: list[tuple[int, bool]]
) -> None:
    coordinator.request_stop()
    coordinator.tick(0.0)
    assert triggered == [(1, False)], "the stop checkpoint waits for no interval and is not final"
    assert not coordinator.finished

    ack_all(coordinator, 1)

    assert coordinator.finished and coordinator.stopped
    meta = coordinator.store.read_metadata(1)
    assert meta is not None and meta.final is False


def test_a_pending_checkpoint_completes_before_the_stop_checkpoint(
    coordinator: CheckpointCoordinator, triggered: list[tuple[int, bool]]
) -> None:
    coordinator.tick(10.0)
    coordinator.request_stop()
    coordinator.tick(10.1)
    assert triggered == [(1, False)]

    ack_all(coordinator, 1)
    assert not coordinator.finished, "checkpoint 1 was triggered before the sources stopped"
    coordinator.tick(10.2)
    ack_all(coordinator, 2)

    assert triggered == [(1, False), (2, False)]
    assert coordinator.stopped and coordinator.last_completed.checkpoint_id == 2


def test_drained_input_finishes_with_the_final_checkpoint_even_when_stopping(
    coordinator: CheckpointCoordinator, triggered: list[tuple[int, bool]]
) -> None:
    coordinator.request_stop()
    coordinator.tick(0.0, drained=True)
    ack_all(coordinator, 1)

    assert triggered == [(1, True)]
    assert coordinator.finished and not coordinator.stopped


# --------------------------------------------------------------------------- signal handlers

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from onceflow.engine.stopping import StopRequest, handle_stop_signals

    with handle_stop_signals(StopRequest()) as stop:
        os.kill(os.getpid(), signal.{sig})
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.001)
        print("first", stop.signal_name, stop.exit_code, flush=True)
        if {twice}:
            os.kill(os.getpid(), signal.{sig})
            time.sleep(5)
            print("still alive", flush=True)
    """
)


def run_script(sig: str, *, twice: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(sig=sig, twice=twice)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_first_signal_only_sets_the_flag(sig: str, code: int) -> None:
    done = run_script(sig, twice=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["first", sig, str(code)]


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_second_signal_exits_at_once_saying_it_is_as_safe_as_kill_9(sig: str, code: int) -> None:
    done = run_script(sig, twice=True)

    assert done.returncode == code
    assert "still alive" not in done.stdout
    assert f"second {sig}: exiting at once" in done.stderr
    assert "as safe as kill -9" in done.stderr


# --------------------------------------------------------------------------- runner


def stop_after_first_checkpoint(stop: StopRequest) -> Callable[[Executor, float], None]:
    def on_tick(executor: Executor, now: float) -> None:
        if executor.coordinator.last_completed is not None:
            stop.request(signal.SIGTERM)

    return on_tick


def slowly(line: str) -> str:
    """Pass ``line`` on after 50 us, so 20,000 lines take a second: a stop lands mid-way."""
    end = time.perf_counter() + 50e-6
    while time.perf_counter() < end:
        pass
    return line


def test_runner_stops_at_a_committed_checkpoint_and_a_rerun_resumes_from_it(
    input_factory: Callable[..., Path], tmp_path: Path, executor: str
) -> None:
    numbers = [str(i) for i in range(20_000)]
    source_dir = input_factory({"n.txt": "\n".join(numbers) + "\n"})
    out, chk = tmp_path / "out", str(tmp_path / "chk")

    def job() -> Job:
        the_job = Job("stop")
        the_job.source(FileSource(str(source_dir)), name="read", uid="read").map(
            slowly, name="slow", uid="slow"
        ).sink(FileSink(str(out)), name="write", uid="write")
        return the_job

    settings = ExecutionSettings(batch_size=10, checkpoint=CoordinatorSettings(interval=0.0))
    stop = StopRequest()
    stopped = JobRunner(
        job(),
        checkpoint_dir=chk,
        settings=settings,
        executor=executor,
        stop=stop,
        on_tick=stop_after_first_checkpoint(stop),
    ).run()

    assert stopped.status is RunStatus.STOPPED
    store = CheckpointStore(chk, "stop")
    meta = store.read_metadata(stopped.checkpoint_id)
    assert meta is not None and meta.final is False
    lines = read_committed_lines(str(out))
    assert lines == numbers[: len(lines)] and 0 < len(lines) < len(numbers)
    assert not [p for p in out.iterdir() if p.name.endswith((".pending", ".inprogress"))]

    resumed = JobRunner(job(), checkpoint_dir=chk, settings=settings, executor=executor).run()

    assert resumed.status is RunStatus.FINISHED
    assert resumed.restored_from == stopped.checkpoint_id
    assert read_committed_lines(str(out)) == numbers
