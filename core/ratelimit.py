"""Fixed-window rate limits: in this process, or shared by every API process (in Redis when
`KEYROTOR_REDIS_URL` is set, else in the database).

Credentials' and handle values' limits are shared: a credential allowed N requests a minute
gets N from all API processes together. The admin API's limit is counted per process
(`ProcessRateLimiter`): it guards against a runaway script, not a quota anyone pays for, and a
shared count would cost a round trip (without Redis, a database write) on every admin read.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Protocol, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sqlalchemy import Connection, text

from core.store.db import Store

log = logging.getLogger("keyrotor.ratelimit")


class RateLimiter(Protocol):
    """Counts each client's requests in fixed windows: a window starts with the client's first
    request and lasts `window` seconds."""

    def allow(self, client: str, limit: int, window: float, now: float) -> float | None:
        """Count one request of `client`: None when it is within `limit`, else the seconds
        until the window resets. `now` is the wall clock (`time.time()`): limiters shared by
        processes compare it across them."""
        ...

    def close(self) -> None:
        """Let go of connections."""
        ...


def client_key(client: str) -> str:
    """What a shared limiter stores for `client`: its SHA-256, so that no credential id,
    handle lookup id or any part of a secret is ever a Redis key or a database row."""
    return hashlib.sha256(client.encode()).hexdigest()


class ProcessRateLimiter:
    """Fixed windows per client, in this process only."""

    PRUNE_AT = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, client: str, limit: int, window: float, now: float) -> float | None:
        with self._lock:
            if len(self._windows) >= self.PRUNE_AT:  # handles add a key per value
                self._windows = {
                    k: (start, n) for k, (start, n) in self._windows.items() if now - start < 86400
                }
            start, count = self._windows.get(client, (now, 0))
            if now - start >= window:
                start, count = now, 0
            if count >= limit:
                return start + window - now
            self._windows[client] = (start, count + 1)
            return None

    def close(self) -> None:
        pass


# One statement, the same on SQLite (3.35+) and PostgreSQL: a client's first request, or the
# next in its window, or the first of a new window. SET reads the row as it was before.
_COUNT = text(
    "INSERT INTO rate_limit_windows (client, resets_at, hits) VALUES (:client, :resets_at, 1)"
    " ON CONFLICT (client) DO UPDATE SET"
    " hits = CASE WHEN rate_limit_windows.resets_at > :now"
    " THEN rate_limit_windows.hits + 1 ELSE 1 END,"
    " resets_at = CASE WHEN rate_limit_windows.resets_at > :now"
    " THEN rate_limit_windows.resets_at ELSE :resets_at END"
    " RETURNING hits, resets_at"
)
_PRUNE = text("DELETE FROM rate_limit_windows WHERE resets_at <= :now")


class DatabaseRateLimiter:
    """Fixed windows in the store's `rate_limit_windows` table, shared by every process on the
    database: one upsert per request, group-committed with the other writes in flight
    (`Store.write_batched`)."""

    PRUNE_INTERVAL = 60.0  # seconds between deletions of ended windows (handle values add rows)

    def __init__(self, store: Store) -> None:
        self._store = store
        self._next_prune = 0.0

    def allow(self, client: str, limit: int, window: float, now: float) -> float | None:
        params = {"client": client_key(client), "now": now, "resets_at": now + window}
        prune = now >= self._next_prune
        if prune:
            self._next_prune = now + self.PRUNE_INTERVAL

        if prune:  # a bulk delete: in a transaction of its own, not in a shared batch
            with self._store.write() as s:
                s.execute(_PRUNE, {"now": now})

        def count(db: Connection) -> tuple[int, float]:
            hits, resets_at = db.execute(_COUNT, params).one()
            return int(hits), float(resets_at)

        hits, resets_at = self._store.write_batched(count)
        return None if hits <= limit else resets_at - now

    def close(self) -> None:
        pass


# INCR, and the window's expiry on its first request: one round trip, atomic. Redis keeps the
# time (the key's TTL), so the API processes' clocks do not matter.
_WINDOW_SCRIPT = """
local hits = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {hits, ttl}
"""


class RedisRateLimiter:
    """Fixed windows in Redis (`<prefix><SHA-256 of the client>`, expiring with the window),
    shared by every process on that Redis.

    When Redis does not answer, the limiter fails open to per-process windows: the verify and
    validate paths keep answering (an outage of the limiter must not become an outage of every
    application that verifies keys), and each API process still holds each client to the
    limit, so a client gets at most the limit times the number of processes. It logs that once,
    tries Redis again every `retry_interval` seconds, and logs once when Redis is back."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keyrotor:rl:",
        timeout: float = 0.5,
        retry_interval: float = 5.0,
    ) -> None:
        # short timeouts and one retry (a pooled connection may have gone stale): a request
        # waits at most about 2 x `timeout` for a Redis that is down, and then only once per
        # `retry_interval`
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._redis.register_script(_WINDOW_SCRIPT)
        self._prefix = prefix
        self._retry_interval = retry_interval
        self._fallback = ProcessRateLimiter()
        self._lock = threading.Lock()
        self._down = False
        self._down_until = 0.0  # time.monotonic() until which Redis is not asked

    def key(self, client: str) -> str:
        """The Redis key of `client`'s window."""
        return self._prefix + client_key(client)

    def allow(self, client: str, limit: int, window: float, now: float) -> float | None:
        if not self._down or time.monotonic() >= self._down_until:
            try:
                answer = self._script(keys=[self.key(client)], args=[max(1, round(window * 1000))])
            except RedisError as e:
                self._went_down(e)
            else:
                if self._down:
                    self._came_back()
                hits, ttl_ms = cast(list[int], answer)
                return None if hits <= limit else ttl_ms / 1000
        return self._fallback.allow(client, limit, window, now)

    def _went_down(self, error: RedisError) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._retry_interval
            if not self._down:
                self._down = True
                # the error's type only: its text may carry the address
                log.warning(
                    "Redis does not answer (%s): rate limits are counted per API process until"
                    " it does (asking again every %g s)",
                    type(error).__name__,
                    self._retry_interval,
                )

    def _came_back(self) -> None:
        with self._lock:
            if self._down:
                self._down = False
                log.info("Redis answers again: rate limits are shared by the API processes")

    def close(self) -> None:
        self._redis.close()
