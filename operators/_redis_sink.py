"""The exactly-once Redis Streams sink: staged lists committed by one atomic Lua script.

The design (keys, commit script, what a restore does) is described in
:mod:`onceflow.operators.redis_streams`, the public home of these classes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from onceflow.operators._redis_common import (
    RedisSinkUnavailableError,
    close_quietly,
    connect,
    import_redis,
    log,
    safe_url,
)
from onceflow.operators.base import (
    Capability,
    RuntimeContext,
    Sink,
    TwoPhaseCommitWriter,
)
from onceflow.operators.errors import (
    SinkCommitError,
    SinkError,
    SinkOutputExistsError,
)

__all__ = ["RedisStreamSink", "RedisStreamSinkWriter"]

_COMMIT_SCRIPT = """
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '-1')
if last >= tonumber(ARGV[2]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('target key ' .. KEYS[2] .. ' is a ' .. kind .. ', not a stream')
end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #items do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(items[i])))
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[1])
return #items
"""
"""Atomic commit: move a staging list into the stream once per (subtask, checkpoint)."""


class RedisStreamSink(Sink):
    """Append records to a Redis stream, exactly once, when their checkpoint completes.

    A record is a dict of field -> value (str, int, float or bool; values are
    stored as strings), or a tuple whose last item is such a dict (so the
    records of a :class:`RedisStreamSource` can be copied as they are).
    Entries get new ids (``*``) when they are committed; the entries of one
    subtask keep their order.

    Args:
        url: a redis-py URL.
        stream: the target stream.
        timeout: socket timeout in seconds.
    """

    def __init__(self, url: str, stream: str, *, timeout: float = 10.0) -> None:
        if not isinstance(stream, str) or not stream:
            msg = f"RedisStreamSink({url!r}): stream must be a non-empty name, got {stream!r}"
            raise SinkError(msg)
        self.url = url
        self.stream = stream
        self.timeout = timeout

    def create_writer(self, subtask_index: int, parallelism: int) -> RedisStreamSinkWriter:
        """Return the writer of one subtask."""
        return RedisStreamSinkWriter(self)

    def __repr__(self) -> str:
        return f"RedisStreamSink({safe_url(self.url)!r}, {self.stream!r})"


class RedisStreamSinkWriter(TwoPhaseCommitWriter):
    """One subtask's transactional writer of a :class:`RedisStreamSink`.

    Cost: per batch one JSON encode per record and one ``RPUSH``; per
    checkpoint one script call that moves the staged entries.
    """

    capabilities = Capability.TWO_PHASE_COMMIT

    def __init__(self, sink: RedisStreamSink) -> None:
        super().__init__()
        self._sink = sink
        self._client: Any = None
        self._script: Any = None
        self._prefix = ""
        self._seq = 0
        self._staged = 0
        self._where = f"RedisStreamSink({sink.stream!r})"

    def open(self, ctx: RuntimeContext) -> None:
        """Connect; on a fresh start refuse or (``--fresh``) forget an earlier run's commits.

        Raises:
            SinkError: a bad URL or credentials, or the target key is not a stream.
            SinkOutputExistsError: a fresh start found commits of an earlier run.
        """
        super().open(ctx)
        sink = self._sink
        self._where = f"RedisStreamSink({sink.stream!r}, uid {ctx.uid!r}, subtask {ctx.subtask_index})"
        digest = hashlib.sha256(f"{ctx.job_name}\x00{ctx.uid}".encode()).hexdigest()[:16]
        self._prefix = f"onceflow:sink:{digest}:"
        self._client = connect(sink.url, self._where, sink.timeout, RedisSinkUnavailableError)
        self._script = self._client.register_script(_COMMIT_SCRIPT)
        redis = import_redis()
        try:
            kind = self._client.type(sink.stream)
            if kind not in ("none", "stream"):
                msg = f"{self._where}: key {sink.stream!r} is a Redis {kind}, not a stream"
                raise SinkError(msg)
            if ctx.restored_checkpoint_id is None:
                self._start_fresh()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def _start_fresh(self) -> None:
        committed = self._client.hgetall(self._committed_key)
        if committed and not self.ctx.overwrite_output:
            msg = (
                f"{self._where}: an earlier run of job {self.ctx.job_name!r} committed into "
                f"stream {self._sink.stream!r} (last checkpoints {committed}) and there is no "
                f"checkpoint to resume from; rerun with --fresh to start over (its entries stay "
                f"in the stream)"
            )
            raise SinkOutputExistsError(msg)
        if self.ctx.subtask_index == 0:
            self._client.delete(self._committed_key)
            self.abort_leftovers([])

    @property
    def _committed_key(self) -> str:
        return f"{self._prefix}committed"

    def _stage_key(self) -> str:
        return f"{self._prefix}stage:{self.ctx.subtask_index}:{self.ctx.attempt_id}:{self._seq}"

    def write(self, records: list) -> None:
        """Stage the records in this subtask's staging list.

        Raises:
            SinkError: a record is not a dict of str/int/float/bool values.
        """
        items = []
        for record in records:
            fields = record[-1] if isinstance(record, tuple) and record else record
            if not isinstance(fields, dict) or not fields:
                msg = (
                    f"{self._where}: record {record!r:.300} cannot be written; a record is a "
                    f"non-empty dict of fields, or a tuple ending with one"
                )
                raise SinkError(msg)
            flat: list[str] = []
            for key, value in fields.items():
                if not isinstance(value, str | int | float | bool) or not isinstance(key, str):
                    msg = (
                        f"{self._where}: record {record!r:.300} has field {key!r} = {value!r:.80}; "
                        f"field names must be str and values str, int, float or bool"
                    )
                    raise SinkError(msg)
                flat.append(key)
                flat.append(value if isinstance(value, str) else str(value))
            items.append(json.dumps(flat))
        if not items:
            return
        redis = import_redis()
        try:
            self._client.rpush(self._stage_key(), *items)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        self._staged += len(items)

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any] | None:
        """Close the staging list of this checkpoint (it is already in Redis); None if empty."""
        if not self._staged:
            return None
        committable = {
            "stage": self._stage_key(),
            "checkpoint_id": checkpoint_id,
            "subtask": self.ctx.subtask_index,
            "entries": self._staged,
        }
        self._seq += 1
        self._staged = 0
        self.ctx.crash_point("after_prepare_before_ack")
        return committable

    def commit(self, committable: dict[str, Any]) -> None:
        """Move the staged entries into the stream, unless this checkpoint was committed already.

        Raises:
            SinkCommitError: the staging list is gone and the checkpoint was never
                recorded as committed: output of a completed checkpoint was lost.
        """
        redis = import_redis()
        self.ctx.crash_point("mid_commit")
        try:
            moved = self._script(
                keys=[committable["stage"], self._sink.stream, self._committed_key],
                args=[str(committable["subtask"]), str(committable["checkpoint_id"])],
            )
        except redis.ResponseError as exc:
            msg = f"{self._where}: commit failed: {exc}"
            raise SinkError(msg) from exc
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        if moved == -2:
            msg = (
                f"{self._where}: checkpoint {committable['checkpoint_id']} completed, but its "
                f"staged entries ({committable['stage']!r}) are gone and it was never recorded as "
                f"committed: {committable.get('entries', '?')} entries are lost (was Redis "
                f"restarted without persistence, or the key deleted?)"
            )
            raise SinkCommitError(msg)

    def last_committed_checkpoint(self) -> int | None:
        """Return the newest checkpoint committed by any subtask (old ones of a rescale too), or None.

        The commit script records it per subtask in the same atomic call that
        appends the entries.
        """
        redis = import_redis()
        try:
            committed = self._client.hvals(self._committed_key)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return max((int(value) for value in committed), default=None)

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        """Delete staging lists that no restored committable owns, except the current attempt's."""
        kept = {c["stage"] for c in keep if isinstance(c, dict) and "stage" in c}
        current = f":{self.ctx.attempt_id}:"
        redis = import_redis()
        try:
            doomed = [
                key
                for key in self._client.scan_iter(match=f"{self._prefix}stage:*", count=1000)
                if key not in kept and current not in key
            ]
            if doomed:
                self._client.delete(*doomed)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        if doomed:
            log.info(
                "%s: deleted %d staging lists of attempts that did not complete", self._where, len(doomed)
            )

    def _unavailable(self, exc: BaseException) -> SinkError:
        return RedisSinkUnavailableError(f"{self._where}: Redis failed: {exc}")

    def close(self) -> None:
        """Close the connection; staged entries stay for a restore to commit or delete."""
        client, self._client = self._client, None
        close_quietly(client)
