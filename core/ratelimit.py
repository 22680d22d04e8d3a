"""Fixed-window rate limits: in this process, or shared by every API process (in Redis when
`KEYROTOR_REDIS_URL` is set, else in the database). With Redis, usage limits are counted there
too (`RedisLimits.use`); without it `core.api_credentials` counts them in the database.

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
from collections.abc import Callable
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


# A request against a fixed window: INCR, and the window's expiry on its first request (hits,
# the window's ms left). Redis keeps the time (the key's TTL), so the API processes' clocks do
# not matter.
_WINDOW = """
local function window(key, ms)
  local hits = redis.call('INCR', key)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    redis.call('PEXPIRE', key, ms)
    ttl = tonumber(ms)
  end
  return hits, ttl
end
"""
# A rate limit alone, atomic in one round trip: {hits, the window's ms left}.
_WINDOW_SCRIPT = _WINDOW + "return {window(KEYS[1], ARGV[1])}"
# One request against a rate limit (KEYS[2], when given: its window ARGV[3] ms, limit ARGV[4])
# and, when that allows it, one use of a usage limit (KEYS[1], the uses left), in one round
# trip: {uses left after this one or -1 when none were left, the window's ms left}, or when
# rate limited {-3, the window's ms left, the uses left}. {-2, 0} when Redis does not hold the
# uses left and ARGV[1] is empty, before counting anything: the caller reads them from the
# database and asks again with them as ARGV[1], which seeds the count unless another process
# seeded it first.
_USE = """
local left = redis.call('GET', KEYS[1])
if not left then
  if ARGV[1] == '' then return {-2, 0} end
  left = ARGV[1]
end
local ttl = 0
if #KEYS == 2 then
  local hits
  hits, ttl = window(KEYS[2], ARGV[3])
  if hits > tonumber(ARGV[4]) then return {-3, ttl, tonumber(left)} end
end
left = tonumber(left)
if left <= 0 then
  redis.call('SET', KEYS[1], 0, 'PX', ARGV[2])
  return {-1, ttl}
end
redis.call('SET', KEYS[1], left - 1, 'PX', ARGV[2])
return {left - 1, ttl}
"""
_USE_SCRIPT = _WINDOW + _USE


class RedisLimits:
    """Rate limits and usage limits in Redis, shared by every process on that Redis; no key
    names a client (`<prefix>rl:` or `<prefix>use:`, then the SHA-256 of the client).

    - Rate limits: fixed windows, each key expiring with its window.
    - Usage limits (`use`): the uses left, seeded from the database the first time and then
      counted here; the caller adds the uses it counted to the database in its periodic flush.

    When Redis does not answer, verification goes on without it (an outage of the limiter must
    not become an outage of every application that verifies keys): rate limits fail open to
    per-process windows (each API process still holds each client to the limit, so a client
    gets at most the limit times the number of processes), usage limits are counted in the
    database (`use` answers None). It logs that once, tries Redis again every `retry_interval`
    seconds, and logs once when Redis is back. The usage counts this process sent to the
    database meanwhile are dropped from Redis then, to be seeded afresh."""

    USE_TTL_MS = 86_400_000  # a usage count idle for a day is read from the database again

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keyrotor:",
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
        self._window_script = self._redis.register_script(_WINDOW_SCRIPT)
        self._use_script = self._redis.register_script(_USE_SCRIPT)
        self._prefix = prefix
        self._retry_interval = retry_interval
        self._fallback = ProcessRateLimiter()
        self._lock = threading.Lock()
        self._down = False
        self._down_until = 0.0  # time.monotonic() until which Redis is not asked
        self._stale: set[str] = set()  # usage counts taken from the database while down

    def key(self, client: str) -> str:
        """The Redis key of `client`'s rate-limit window."""
        return f"{self._prefix}rl:{client_key(client)}"

    def use_key(self, client: str) -> str:
        """The Redis key of `client`'s usage count."""
        return f"{self._prefix}use:{client_key(client)}"

    def allow(self, client: str, limit: int, window: float, now: float) -> float | None:
        if self._asking():
            try:
                answer = self._window_script(
                    keys=[self.key(client)], args=[max(1, round(window * 1000))]
                )
            except RedisError as e:
                self._went_down(e)
            else:
                self._answered()
                hits, ttl_ms = cast(list[int], answer)
                return None if hits <= limit else ttl_ms / 1000
        return self._fallback.allow(client, limit, window, now)

    def use(
        self,
        client: str,
        seed: Callable[[], int],
        rate: tuple[int, float] | None = None,
    ) -> tuple[float | None, int | None] | None:
        """Count one use of `client`'s usage limit, after one request against its rate limit
        (`rate`: limit and window, as `allow`) when it has one, in one round trip: (the seconds
        to wait, the uses left) when rate limited, else (None, the uses left after this one: -1
        when none were left). `seed()` reads the uses left from the database; it is called only when
        Redis does not hold them. None: Redis does not answer, and nothing was counted: count
        in the database (and with `allow`, which counts in this process meanwhile)."""
        keys = [self.use_key(client)] + ([self.key(client)] if rate else [])
        window = [max(1, round(rate[1] * 1000)), rate[0]] if rate else []
        if self._asking():
            try:
                answer = self._use_script(keys=keys, args=["", self.USE_TTL_MS, *window])
                if answer[0] == -2:
                    answer = self._use_script(keys=keys, args=[seed(), self.USE_TTL_MS, *window])
            except RedisError as e:
                self._went_down(e)
            else:
                self._answered()
                left, ttl_ms, *still = (int(n) for n in cast(list[int], answer))
                return (ttl_ms / 1000, still[0]) if left == -3 else (None, left)
        with self._lock:
            self._stale.add(keys[0])
        return None

    def _asking(self) -> bool:
        """Whether to ask Redis now; when it answers again after being down, this first drops
        the usage counts that went to the database meanwhile."""
        if self._down and time.monotonic() < self._down_until:
            return False
        if not self._stale:
            return True
        with self._lock:
            stale, self._stale = self._stale, set()
        if stale:
            try:
                self._redis.delete(*stale)
            except RedisError as e:
                with self._lock:
                    self._stale |= stale
                self._went_down(e)
                return False
        return True

    def _answered(self) -> None:
        if self._down:
            self._came_back()

    def _went_down(self, error: RedisError) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._retry_interval
            if not self._down:
                self._down = True
                # the error's type only: its text may carry the address
                log.warning(
                    "Redis does not answer (%s): rate limits are counted per API process and"
                    " usage limits in the database until it does (asking again every %g s)",
                    type(error).__name__,
                    self._retry_interval,
                )

    def _came_back(self) -> None:
        with self._lock:
            if self._down:
                self._down = False
                log.info("Redis answers again: it counts rate limits and usage limits")

    def close(self) -> None:
        self._redis.close()
