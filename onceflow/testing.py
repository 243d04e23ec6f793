"""Public testing helpers in one place: run a job in-process, replayable sources, failing doubles.

::

    from onceflow.testing import Crash, TestingSink, TestingSource, run_job_for_test

The helpers live with the layer they belong to (``onceflow.operators.testing``
holds sources, sinks and clocks; ``onceflow.engine.testing`` drives the
runner); this module only gathers them for users.
"""

from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import (
    Crash,
    EndOfRun,
    FailingSink,
    FakeClock,
    InjectedFailure,
    Pause,
    RunInterrupted,
    TestingSink,
    TestingSource,
)

__all__ = [
    "Crash",
    "EndOfRun",
    "FailingSink",
    "FakeClock",
    "InjectedFailure",
    "Pause",
    "RunInterrupted",
    "TestingSink",
    "TestingSource",
    "run_job_for_test",
]
