"""Redis Streams in and out (redis-py): a replayable source and an exactly-once sink.

:class:`RedisStreamSource` reads streams with ``XREAD`` from a stored entry id;
the last entry id returned per stream is the offset in the checkpoint, so a
restore replays exactly what followed it. Bounded mode stops at each stream's
last entry id as it was at the first start (stored in the checkpoint too, so a
resume stops at the same place); unbounded mode follows new entries.

:class:`RedisStreamSink` appends entries to a stream exactly once. Records are
staged per subtask in a Redis list while the checkpoint is open; on commit a
Lua script, atomic in Redis, moves the staged entries into the target stream,
deletes the staging list and records the checkpoint id as the last one
committed by that subtask. A repeated commit finds that id and does nothing;
a commit whose staging list is gone and whose id was never recorded raises
:class:`~onceflow.operators.errors.SinkCommitError` (lost output is never skipped).
Keys of the sink (``<h>`` hashes the job name and sink uid)::

    onceflow:sink:<h>:stage:<subtask>:<attempt>:<seq>     staged entries (a list of JSON arrays)
    onceflow:sink:<h>:committed                           hash: subtask -> last committed checkpoint

Single Redis server only (not Redis Cluster: the script touches three keys).
Redis keeps data in memory: exactly-once holds across onceflow crashes, and
across Redis restarts only as far as Redis's own persistence (AOF) goes.

redis-py is imported lazily; install it with ``pip install 'onceflow[redis]'``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from onceflow.operators._redis_common import (
    NO_ID,
    RedisUnavailableError,
    close_quietly,
    connect,
    import_redis,
    parse_id,
    safe_url,
)
from onceflow.operators.base import (
    Backlog,
    RestoredState,
    RuntimeContext,
    Source,
    SourceReader,
)
from onceflow.operators.errors import (
    SourceChangedError,
    SourceError,
)

__all__ = [
    "RedisStreamSink",
    "RedisStreamSinkWriter",
    "RedisStreamSource",
    "RedisStreamSourceReader",
    "RedisUnavailableError",
]


class RedisStreamSource(Source):
    """Read entries of one or more Redis streams as ``(stream, entry_id, fields)`` tuples.

    ``fields`` is a dict of str to str. Stream ``i`` (in the order given) is
    read by subtask ``i % parallelism``; a subtask without a stream ends at
    once. Entries of one stream arrive in id order.

    Args:
        url: a redis-py URL, e.g. ``"redis://127.0.0.1:6379/0"``.
        streams: one stream name or a list of them.
        bounded: stop at each stream's last entry id as of the first start; with
            False, follow new entries forever.
        batch_size: at most this many entries per ``XREAD`` and stream.
        idle_poll: unbounded mode, seconds between reads while no entry comes.
        timeout: socket timeout in seconds.

    Raises:
        SourceError: no stream given, or a stream name is not a non-empty str.
    """

    def __init__(
        self,
        url: str,
        streams: str | Sequence[str],
        *,
        bounded: bool = True,
        batch_size: int = 1000,
        idle_poll: float = 0.02,
        timeout: float = 10.0,
    ) -> None:
        names = [streams] if isinstance(streams, str) else list(streams)
        if not names or not all(isinstance(s, str) and s for s in names):
            msg = f"RedisStreamSource({url!r}): streams must be non-empty names, got {streams!r}"
            raise SourceError(msg)
        if len(set(names)) != len(names):
            msg = f"RedisStreamSource({url!r}): a stream is listed twice in {names}"
            raise SourceError(msg)
        if batch_size < 1:
            msg = f"RedisStreamSource({url!r}): batch_size must be >= 1, got {batch_size!r}"
            raise SourceError(msg)
        self.url = url
        self.streams = names
        self.bounded = bounded
        self.batch_size = batch_size
        self.idle_poll = idle_poll
        self.timeout = timeout

    def create_reader(self, subtask_index: int, parallelism: int) -> RedisStreamSourceReader:
        """Return the reader of the streams dealt to ``subtask_index``."""
        return RedisStreamSourceReader(self, self.streams[subtask_index::parallelism])

    def __repr__(self) -> str:
        return f"RedisStreamSource({safe_url(self.url)!r}, {self.streams!r}, bounded={self.bounded})"


class RedisStreamSourceReader(SourceReader):
    """One subtask's reader: ``XREAD`` from the last returned id of each owned stream.

    Cost: one ``XREAD`` round trip per batch for all owned streams; per entry
    one tuple.
    """

    def __init__(self, source: RedisStreamSource, streams: list[str]) -> None:
        self._source = source
        self._streams = streams
        self._client: Any = None
        self._last: dict[str, str] = {}
        self._batch: list[tuple[str, str, dict[str, str]]] = []
        """The last batch returned, for :meth:`batch_position` on the error path."""
        self._end: dict[str, str | None] = {}
        """Bounded mode: the last entry id to read per stream, fixed at the first start."""
        self._first: dict[str, str | None] = {}
        """Bounded mode: the stream's first entry id at the first start (None: empty or unknown)."""
        self._done: set[str] = set()
        self._idle_until = 0.0
        self._where = f"RedisStreamSource({safe_url(source.url)!r})"
        self._read: dict[str, int | None] = {}
        """Entries returned per stream since its beginning (None: restored from a checkpoint without it)."""
        self._backlog: tuple[float, Backlog | None] = (-1.0, None)
        """``backlog`` cached for a second: (when, value)."""

    def open(self, ctx: RuntimeContext) -> None:
        """Connect and, on a fresh start, fix the end of every owned stream (bounded mode).

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            SourceError: a bad URL or credentials; in bounded mode a stream that
                does not exist or a key that is not a stream.
        """
        super().open(ctx)
        self._where = (
            f"RedisStreamSource({safe_url(self._source.url)!r}, uid {ctx.uid!r}, subtask {ctx.subtask_index})"
        )
        if not self._streams:
            return
        self._client = connect(self._source.url, self._where, self._source.timeout, RedisUnavailableError)
        self._last = dict.fromkeys(self._streams, NO_ID)
        self._read = dict.fromkeys(self._streams, 0)
        self._end, self._first = {}, {}
        if ctx.restored_checkpoint_id is None:
            # A restore takes the ends from the checkpoint; streams it has no state
            # for get theirs in restore_state or at the first poll.
            self._fix_ends()

    def _fix_ends(self) -> None:
        """Bounded mode: record the end and first entry of every owned stream that has none yet."""
        for stream in self._streams:
            if stream not in self._end:
                self._end[stream] = self._current_end(stream)
                self._first[stream] = self._first_entry(stream)

    def _first_entry(self, stream: str) -> str | None:
        if not self._source.bounded:
            return None
        redis = import_redis()
        try:
            oldest = self._client.xrange(stream, count=1)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return oldest[0][0] if oldest else None

    def _current_end(self, stream: str) -> str | None:
        """Return the stream's last entry id now (bounded), or None (unbounded: no end)."""
        if not self._source.bounded:
            return None
        redis = import_redis()
        try:
            kind = self._client.type(stream)
            if kind == "none":
                msg = (
                    f"{self._where}: stream {stream!r} does not exist; check the name (a bounded "
                    f"source reads a stream as it is at the start)"
                )
                raise SourceError(msg)
            if kind != "stream":
                msg = f"{self._where}: key {stream!r} is a Redis {kind}, not a stream"
                raise SourceError(msg)
            newest = self._client.xrevrange(stream, count=1)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return newest[0][0] if newest else NO_ID

    def restore_state(self, restored: RestoredState) -> None:
        """Seek every owned stream to its restored id and keep its restored end.

        States of all old subtasks are merged by stream name, so the restore
        works at any parallelism; a stream without restored state starts at
        its beginning, with its end taken now.
        """
        merged: dict[str, dict[str, Any]] = {}
        for _, state in restored.operator_states:
            merged.update(state or {})
        for stream in self._streams:
            if stream in merged:
                self._last[stream] = merged[stream]["last"]
                self._end[stream] = merged[stream]["end"] if self._source.bounded else None
                self._first[stream] = merged[stream].get("first")
                self._read[stream] = merged[stream].get("read")
        self._fix_ends()
        self._done = {s for s in self._streams if self._finished(s)}
        if self._source.bounded:
            for stream in self._streams:
                if stream in merged and stream not in self._done:
                    self._check_position(stream, restored.checkpoint_id)

    def _check_position(self, stream: str, checkpoint_id: int | None) -> None:
        """Raise if the restored position is no longer in ``stream``; bounded mode only.

        The entry read last (or, before any was read, the first entry at the
        first start) must still be there: XTRIM removes the oldest entries, so
        if it is present nothing after it is gone. In unbounded mode trimming
        already read entries (MAXLEN) is normal, so nothing is checked there.
        """
        last = self._last[stream]
        expected = last if last != NO_ID else self._first.get(stream)
        redis = import_redis()
        try:
            kind = self._client.type(stream)
            present = kind == "stream" and (
                expected is None or bool(self._client.xrange(stream, expected, expected, count=1))
            )
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        if not present:
            raise self._gone(stream, kind, checkpoint_id)

    def _gone(self, stream: str, kind: str, checkpoint_id: int | None = None) -> SourceChangedError:
        last, end = self._last[stream], self._end.get(stream)
        where = f"checkpoint {checkpoint_id} had" if checkpoint_id is not None else "this run has"
        if kind == "none":
            what = "no longer exists (deleted, or Redis restarted without persistence)"
        elif kind != "stream":
            what = f"is now a Redis {kind}, not a stream"
        else:
            what = "lost entries this source has not read (trimmed, deleted, or the stream was recreated)"
        msg = (
            f"{self._where}: stream {stream!r} {what}; {where} read it up to entry id {last!r} of "
            f"{end!r}, so the rest cannot be read exactly once. Restore the stream (e.g. from an AOF "
            f"or RDB backup), or rerun with --fresh to read it as it is now"
        )
        return SourceChangedError(msg)

    def _finished(self, stream: str) -> bool:
        end = self._end.get(stream)
        return end is not None and parse_id(self._last[stream]) >= parse_id(end)

    def poll_batch(self, max_records: int) -> list[tuple[str, str, dict[str, str]]] | None:
        """Return the next entries of the owned streams; None when every bounded stream is read.

        Raises:
            RedisUnavailableError: the connection broke (the attempt restarts).
            SourceChangedError: bounded mode, a stream vanished or lost unread entries.
        """
        if self._source.bounded and len(self._end) < len(self._streams):
            self._fix_ends()
        active = [s for s in self._streams if s not in self._done]
        if not active:
            return None
        if self._idle_until and time.monotonic() < self._idle_until:
            return []
        redis = import_redis()
        count = max(1, min(max_records, self._source.batch_size))
        try:
            replies = self._client.xread({s: self._last[s] for s in active}, count=count)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        records: list[tuple[str, str, dict[str, str]]] = []
        got = set()
        for stream, entries in replies or []:
            got.add(stream)
            end = self._end.get(stream)
            if end is not None:
                limit = parse_id(end)
                kept = [e for e in entries if parse_id(e[0]) <= limit]
                if len(kept) < len(entries):
                    self._done.add(stream)
                entries = kept
            if entries:
                self._last[stream] = entries[-1][0]
                read = self._read.get(stream)
                if read is not None:
                    self._read[stream] = read + len(entries)
                records.extend((stream, entry_id, fields) for entry_id, fields in entries)
            if self._finished(stream):
                self._done.add(stream)
        if self._source.bounded:
            # A bounded stream not yet read to its end always has an entry after
            # the last id read: none means the stream vanished or lost entries.
            for stream in active:
                if stream not in got and not self._finished(stream):
                    self._check_position(stream, None)
                    raise self._gone(stream, "stream")
            self._done.update(s for s in active if s not in got)
            if not records and len(self._done) == len(self._streams):
                return None
        elif not records:
            self._idle_until = time.monotonic() + self._source.idle_poll
        else:
            self._idle_until = 0.0
        self._batch = records
        return records

    def batch_position(self, index: int | None) -> dict[str, Any] | None:
        """Return ``{"stream", "id"}`` of entry ``index`` of the last batch; None for the whole batch."""
        batch = self._batch
        if index is None or not 0 <= index < len(batch):
            return None
        stream, entry_id, _ = batch[index]
        return {"stream": stream, "id": entry_id}

    def snapshot_state(self, checkpoint_id: int) -> dict[str, dict[str, Any]]:
        """Return ``{stream: {"last", "end", "read"}}`` per owned stream (bounded: and ``first``).

        ``end`` is None in unbounded mode; ``read`` counts the entries returned (for ``backlog``).
        """
        states: dict[str, dict[str, Any]] = {}
        for s in self._streams:
            states[s] = {"last": self._last[s], "end": self._end.get(s), "read": self._read.get(s)}
            if self._source.bounded:
                states[s]["first"] = self._first.get(s)
        return states

    def backlog(self) -> Backlog | None:
        """Return the entries added to the owned streams that this reader has not returned yet.

        ``entries-added`` of ``XINFO STREAM`` (Redis 7) minus the entries read
        since each stream's beginning; a bounded stream read to its end counts
        0. None when Redis is older, unreachable, or the restored checkpoint did
        not count entries. At most one round trip per owned stream a second.
        """
        now = time.monotonic()
        when, value = self._backlog
        if now - when < 1.0 or self._client is None:
            return value
        behind = 0
        try:
            for stream in self._streams:
                read = self._read.get(stream)
                if stream in self._done:
                    continue
                added = self._client.xinfo_stream(stream).get("entries-added") if read is not None else None
                if added is None or read is None:
                    behind = -1
                    break
                behind += max(int(added) - read, 0)
        except Exception:  # noqa: BLE001 - a metric must never fail the run
            behind = -1
        value = Backlog(behind, "entries") if behind >= 0 else None
        self._backlog = (now, value)
        return value

    def _unavailable(self, exc: BaseException) -> RedisUnavailableError:
        return RedisUnavailableError(f"{self._where}: Redis failed: {exc}")

    def close(self) -> None:
        """Close the connection; never raises."""
        client, self._client = self._client, None
        close_quietly(client)


# The sink lives in its own module; its public home is this one.
from onceflow.operators._redis_sink import RedisStreamSink, RedisStreamSinkWriter  # noqa: E402
