"""Sessionization: user sessions of a click log, in event time, with late clicks kept apart.

Run it with ``onceflow run jobs/sessionize.py`` (input: the shipped
``data/clicks``; regenerate or enlarge it with ``python jobs/make_clicks.py``).
Input lines are ``ts,user,page`` with ``ts`` an ISO-8601 time (a header line
``ts,user,page`` is skipped); the log is out of order.

Pipeline: parse → timestamps from ``ts`` with watermarks ``max_delay`` seconds
behind the latest click (a quiet file is marked idle after ``idle_timeout``
seconds so it does not hold the others back) → key by user → session windows
with a ``gap`` (default 30 minutes) → one line per session in ``out/sessions``::

    user,start,end,clicks,pages

``start``/``end`` are the first and last click, ``clicks`` the number of
clicks, ``pages`` the number of distinct pages. A click up to ``lateness``
seconds behind the watermark still joins its session, which is then emitted
again with the new figures (the line with the most clicks for a session is the
final one; a session merged into a longer one was superseded by it). Clicks
later than that go unchanged to ``out/sessions-late``. Kill the run at any
moment and rerun the same command: the committed output is what an
uninterrupted run commits.
"""

from __future__ import annotations

from datetime import UTC, datetime

from onceflow import EventTimeSessionWindows, FileSink, FileSource, Job, Window


def parse(line: str) -> tuple[float, str, str]:
    """``2026-03-02T08:15:03.250Z,u00017,cart`` -> ``(epoch seconds, user, page)``."""
    ts, user, page = line.split(",")
    return datetime.fromisoformat(ts).timestamp(), user, page


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summarize(gap: float):
    def session(user: str, window: Window, clicks: list) -> list[str]:
        last = max(c[0] for c in clicks)  # == window.end - gap, without rounding
        pages = len({c[2] for c in clicks})
        return [f"{user},{iso(window.start)},{iso(last)},{len(clicks)},{pages}"]

    return session


def build(
    input: str = "data/clicks",
    output: str = "out/sessions",
    late_output: str = "out/sessions-late",
    gap: str = "1800",
    max_delay: str = "300",
    lateness: str = "3600",
    idle_timeout: str = "30",
) -> Job:
    job = Job("sessionize")
    clicks = (
        # One reader: the hourly files form one ordered log, so event time (and which
        # clicks are too late) does not depend on how parallel readers interleave.
        # Small reads keep the watermark close behind each click.
        job.source(FileSource(input, read_size=4096), name="read", uid="read", parallelism=1)
        .filter(lambda line: bool(line) and not line.startswith("ts,"), name="skip-header", parallelism=1)
        .map(parse, name="parse", parallelism=1)
        .assign_timestamps(
            lambda click: click[0],
            max_delay=float(max_delay),
            idle_timeout=float(idle_timeout),
            name="timestamps",
            uid="timestamps",
            parallelism=1,
        )
    )
    sessions = (
        clicks.key_by(lambda click: click[1])
        .window(EventTimeSessionWindows(gap=float(gap)))
        .allowed_lateness(float(lateness))
        .late_records("late")
        .process(summarize(float(gap)), name="sessions", uid="sessions")
    )
    sessions.sink(FileSink(output), name="write", uid="write")
    (
        sessions.side_output("late")
        .map(lambda click: f"{iso(click[0])},{click[1]},{click[2]}", name="format-late")
        .sink(FileSink(late_output), name="write-late", uid="write-late")
    )
    return job
