"""Graceful stop: the flag a first SIGINT/SIGTERM sets, and the handlers that set it.

The first signal only records itself in a :class:`StopRequest`; the executor's
loop sees the flag, stops the sources, lets the coordinator take a final
*stop* checkpoint (complete, committed, not ``final``: a rerun resumes from it
and reads on) and ends the attempt; the runner reports where it stopped. A
second signal exits at once, which is as safe as ``kill -9``: the run resumes
from its latest completed checkpoint. Nothing here acts on the job; handlers
run between two bytecodes of the main thread and must not take locks.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STOP_SIGNALS", "StopRequest", "handle_stop_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether a graceful stop was asked for, and by which signal.

    Written by a signal handler (or a test), read by the executor once per
    scheduler round and by the runner between attempts: one attribute, no lock.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop gracefully, as signal ``signum`` does."""
        if self.signum is None:
            self.signum = signum

    @property
    def signal_name(self) -> str:
        """The requesting signal's name (``SIGTERM``), or ``"a stop request"``."""
        return signal.Signals(self.signum).name if self.signum is not None else "a stop request"

    @property
    def exit_code(self) -> int:
        """The exit code of a run stopped by this request: 128 + the signal (130 SIGINT, 143 SIGTERM)."""
        return 128 + (self.signum if self.signum is not None else signal.SIGTERM)

    def announcement(self) -> str:
        """Return the line the run logs when it starts acting on the request."""
        return (
            f"{self.signal_name}: stopping the sources and taking a final checkpoint, then committing "
            "the output; send the signal again to exit at once (as safe as kill -9)"
        )


@contextmanager
def handle_stop_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into ``stop.request``, a second one into an immediate exit.

    Only in the main thread (where Python runs signal handlers); elsewhere this
    does nothing. The previous handlers are restored on exit, unless a stop was
    requested.
    """

    def on_signal(signum: int, frame: object) -> None:
        if not stop.requested:
            stop.request(signum)
            return
        name = signal.Signals(signum).name
        line = (
            f"onceflow: second {name}: exiting at once, without a final checkpoint (as safe as "
            "kill -9); rerun the same command to resume from the latest completed checkpoint\n"
        )
        os.write(2, line.encode())
        os._exit(128 + signum)

    try:
        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        # After a first signal the process is on its way out: a second one, even now,
        # must still exit at once rather than meet the default handler (a traceback).
        if not stop.requested:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
