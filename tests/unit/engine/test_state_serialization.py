"""A state value that cannot be pickled fails the run at once, naming the operator, the key and the type.

Issue 11 item 8: it used to decline checkpoint after checkpoint with a vague
``writing state of subtask (1, 0) failed: TypeError(...)`` and be restarted as
if the storage were at fault. It is the job's doing (user domain): the first
checkpoint that meets it fails the attempt, and no restart follows.
"""

from __future__ import annotations

import logging
import threading
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
    OnceflowError,
    RestartStrategy,
    StateBackendConfig,
)
from onceflow.engine.errors import ErrorDomain, classify


def keep_a_lock(state, word: str):
    """Keep, per word, a count and a lock: the lock cannot be pickled."""
    count = state[0] + 1 if state else 1
    return (count, threading.Lock()), f"{word},{count}"


@pytest.mark.parametrize("backend", ["heap", "disk"])
def test_unpicklable_state_fails_at_once_naming_operator_key_and_type(
    input_factory: Callable[..., Path],
    tmp_path: Path,
    executor: str,
    backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = input_factory({"a.txt": "the\nfox\nthe\n"})
    job = Job("locks")
    (
        job.source(FileSource(str(source)), name="read", uid="read")
        .key_by(lambda word: word)
        .stateful_map(keep_a_lock, name="count words", uid="count")
        .sink(FileSink(str(tmp_path / "out")), name="write", uid="write")
    )
    runner = JobRunner(
        job,
        checkpoint_dir=str(tmp_path / "chk"),
        settings=ExecutionSettings(
            checkpoint=CoordinatorSettings(interval=0.0),
            state_backend=StateBackendConfig(backend, directory=str(tmp_path / "state")),
        ),
        restart=RestartStrategy(attempts=3, initial_delay=0.01),
        executor=executor,
    )

    with caplog.at_level(logging.WARNING, logger="onceflow"), pytest.raises(OnceflowError) as info:
        runner.run()

    message = str(info.value)
    assert "'count words'" in message, message
    assert "key 'the'" in message or "key 'fox'" in message, message
    assert "lock" in message, message
    assert "pickle" in message, message
    failure = classify(info.value)
    assert failure.domain is ErrorDomain.USER and not failure.retryable
    assert not getattr(info.value, "__notes__", []), "it was restarted as if transient"
    assert not [r for r in caplog.records if "declined" in r.getMessage() or "restarting" in r.getMessage()]


def test_write_state_file_names_the_state_key_and_type_of_an_unpicklable_value(memory_dir: str) -> None:
    import fsspec

    from onceflow.state_backends.arrow_snapshot import write_state_file
    from onceflow.state_backends.errors import StateSerializationError

    fs, root = fsspec.core.url_to_fs(memory_dir)
    with pytest.raises(
        StateSerializationError, match=r"state 'counts', key 'b': a value of type 'generator'"
    ):
        write_state_file(
            fs,
            f"{root}/x.arrow",
            keyed_state={"counts": {"a": 1, "b": (i for i in range(3))}},
            operator_state=None,
            max_parallelism=128,
        )
    with pytest.raises(StateSerializationError, match=r"operator state, of type 'function'"):
        write_state_file(fs, f"{root}/y.arrow", keyed_state={}, operator_state=lambda: 1, max_parallelism=128)
