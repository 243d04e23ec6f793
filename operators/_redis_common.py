"""What the Redis Streams source and sink share: the lazy redis-py import, connecting, entry ids.

Connection errors are told apart from configuration errors here once, so the
source and the sink report them alike.
"""

from __future__ import annotations

import logging
from typing import Any

from onceflow.operators.errors import (
    SinkError,
    SourceError,
)
from onceflow.state_backends.errors import ErrorDomain

__all__ = ["RedisUnavailableError"]

log = logging.getLogger("onceflow")

NO_ID = "0-0"


class RedisUnavailableError(SourceError):
    """Redis cannot be reached or dropped the connection: a restart may succeed."""

    domain = ErrorDomain.EXTERNAL


class RedisSinkUnavailableError(SinkError):
    domain = ErrorDomain.EXTERNAL


def import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the installation
        msg = "Redis connectors need redis-py; install it with pip install 'onceflow[redis]'"
        raise SourceError(msg) from exc
    return redis


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def safe_url(url: str) -> str:
    """Return the URL without a password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def connect(url: str, where: str, timeout: float, error: type[Exception]) -> Any:
    """Connect and PING, so a bad URL or a dead server fails at open, not mid-run."""
    redis = import_redis()
    try:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        client.ping()
    except ValueError as exc:
        msg = f"{where}: invalid Redis URL {safe_url(url)!r}: {exc}"
        raise (SinkError if issubclass(error, SinkError) else SourceError)(msg) from exc
    except redis.AuthenticationError as exc:
        msg = f"{where}: Redis at {safe_url(url)} refused the credentials: {exc}"
        raise (SinkError if issubclass(error, SinkError) else SourceError)(msg) from exc
    except redis.RedisError as exc:
        msg = f"{where}: cannot connect to Redis at {safe_url(url)}: {exc}; is the server running?"
        raise error(msg) from exc
    return client


# --------------------------------------------------------------------------- source


def close_quietly(client: Any) -> None:
    """Close a Redis client, if any; never raises (close runs on every exit path)."""
    if client is None:
        return
    try:
        client.close()
    except Exception:  # noqa: BLE001 - close must not raise
        log.debug("closing a Redis connection failed", exc_info=True)
