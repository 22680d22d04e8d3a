"""Rate limiters: per process, and shared through the database or Redis (real SQLite,
PostgreSQL and Redis). Two limiter instances stand for two API processes: over a shared
store they share each client's count; a Redis that does not answer leaves each process
counting on its own."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import text

from core.ratelimit import (
    DatabaseRateLimiter,
    ProcessRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    client_key,
)
from core.store.db import Store
from tests.fixtures.redis_server import PrivateRedis, delete_keys


class Clock:
    """A clock the test moves (`fake`), or the real one, whose time passes by sleeping: Redis
    keeps time itself (the key's expiry), so its windows end only in real time."""

    def __init__(self, fake: bool) -> None:
        self.fake = fake
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t if self.fake else time.time()

    def pass_(self, seconds: float) -> None:
        if self.fake:
            self.t += seconds
        else:
            time.sleep(seconds)


def check_limit_holds_resets_and_is_shared(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
    client, window = f"credential/cred_{secrets.token_hex(8)}", 1.0
    # 3 a window, whichever instance counts them
    assert a.allow(client, 3, window, clock.now()) is None
    assert b.allow(client, 3, window, clock.now()) is None
    assert a.allow(client, 3, window, clock.now()) is None
    for limiter in (b, a):
        wait = limiter.allow(client, 3, window, clock.now())
        assert wait is not None and 0 < wait <= window
    # another client has a count of its own
    assert b.allow(f"{client}-other", 3, window, clock.now()) is None
    clock.pass_(window + 0.05)  # a new window
    assert [b.allow(client, 3, window, clock.now()) for _ in range(3)] == [None] * 3
    assert a.allow(client, 3, window, clock.now()) is not None


# --- in this process ------------------------------------------------------------------------


def test_the_process_limiter_holds_and_resets_but_counts_for_its_process_only() -> None:
    a, b = ProcessRateLimiter(), ProcessRateLimiter()
    assert [a.allow("c", 2, 60, 100.0) for _ in range(2)] == [None, None]
    assert a.allow("c", 2, 60, 130.0) == 30.0
    assert b.allow("c", 2, 60, 130.0) is None  # another process: a count of its own
    assert a.allow("c", 2, 60, 160.0) is None


# --- the database ---------------------------------------------------------------------------


@pytest.fixture
def second_store(store: Store) -> Iterator[Store]:
    """Another `Store` on the same database: what a second API process has."""
    other = Store(store.url)
    yield other
    other.dispose()


def test_database_windows_hold_reset_and_are_shared(store: Store, second_store: Store) -> None:
    check_limit_holds_resets_and_is_shared(
        DatabaseRateLimiter(store), DatabaseRateLimiter(second_store), Clock(fake=True)
    )


def test_database_windows_name_no_client_and_ended_ones_are_deleted(store: Store) -> None:
    limiter, t = DatabaseRateLimiter(store), 1_000_000.0
    handle = f"handle/{secrets.token_hex(8)}"
    assert limiter.allow(handle, 5, 10, t) is None
    assert limiter.allow("credential/cred_b", 5, 600, t + 5) is None

    def rows() -> dict[str, float]:
        with store.engine.connect() as db:
            found = db.execute(text("SELECT client, resets_at FROM rate_limit_windows"))
            return {client: resets_at for client, resets_at in found}

    assert rows() == {client_key(handle): t + 10, client_key("credential/cred_b"): t + 605}
    # a minute on, the next check also deletes the windows that have ended
    assert (
        limiter.allow("credential/cred_b", 5, 600, t + DatabaseRateLimiter.PRUNE_INTERVAL) is None
    )
    assert rows() == {client_key("credential/cred_b"): t + 605}


def test_database_windows_count_exactly_under_concurrent_requests(
    store: Store, second_store: Store
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    limiters = [DatabaseRateLimiter(store), DatabaseRateLimiter(second_store)]
    client = f"credential/cred_{secrets.token_hex(8)}"
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda n: limiters[n % 2].allow(client, 10, 60, time.time()), range(25))
        )
    assert answers.count(None) == 10


# --- Redis ----------------------------------------------------------------------------------


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own, under keyrotor:rl:; its keys are deleted afterwards."""
    prefix = f"keyrotor:rl:test-{secrets.token_hex(4)}:"
    yield prefix
    delete_keys(redis_client, prefix + "*")


@pytest.fixture
def redis_pair(redis_url: str, redis_prefix: str) -> Iterator[tuple[RedisRateLimiter, ...]]:
    pair = tuple(RedisRateLimiter(redis_url, prefix=redis_prefix) for _ in range(2))
    yield pair
    for limiter in pair:
        limiter.close()


def test_redis_windows_hold_reset_and_are_shared(redis_pair: tuple[RedisRateLimiter, ...]) -> None:
    a, b = redis_pair
    check_limit_holds_resets_and_is_shared(a, b, Clock(fake=False))


def test_redis_keys_name_no_client(
    redis_pair: tuple[RedisRateLimiter, ...], redis_client: redis.Redis, redis_prefix: str
) -> None:
    lookup_id = secrets.token_hex(8)
    a, _ = redis_pair
    assert a.allow(f"handle/{lookup_id}", 5, 60, time.time()) is None
    assert a.allow("credential/cred_secretive", 5, 60, time.time()) is None
    keys = {k.decode() for k in redis_client.scan_iter(match=redis_prefix + "*")}
    assert keys == {
        redis_prefix + client_key(f"handle/{lookup_id}"),
        redis_prefix + client_key("credential/cred_secretive"),
    }
    everything = b" ".join(redis_client.scan_iter(match="*"))
    assert lookup_id.encode() not in everything and b"secretive" not in everything
    # each window expires with itself
    assert 0 < redis_client.pttl(a.key(f"handle/{lookup_id}")) <= 60_000


def test_a_redis_that_does_not_answer_leaves_each_process_its_own_count(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail open, to per-process windows: verification keeps answering, each process still
    holds each client to the limit; one warning, without the URL or its password; once Redis
    answers again (asked every `retry_interval`), the count is shared again."""
    url = f"redis://:hunter2@127.0.0.1:{private_redis.port}/0"
    a = RedisRateLimiter(url, retry_interval=0.3)
    b = RedisRateLimiter(url, retry_interval=0.3)
    caplog.set_level(logging.INFO, logger="keyrotor.ratelimit")
    now = time.time()
    assert [a.allow("credential/c", 2, 60, now) for _ in range(2)] == [None, None]
    assert a.allow("credential/c", 2, 60, now) is not None  # a still holds c to its limit
    assert b.allow("credential/c", 2, 60, now) is None  # b counts its own
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per limiter (per process), not per request
    for record in warnings:
        assert "per API process" in record.getMessage()
        assert "hunter2" not in record.getMessage() and str(private_redis.port) not in (
            record.getMessage()
        )

    private_redis.start()
    time.sleep(0.35)
    try:
        assert a.allow("credential/d", 1, 60, time.time()) is None
        assert b.allow("credential/d", 1, 60, time.time()) is not None  # shared again
        back = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert back == ["Redis answers again: rate limits are shared by the API processes"] * 2
        server = redis.Redis.from_url(private_redis.url)
        assert server.get(a.key("credential/d")) == b"2"
        server.close()
    finally:
        a.close()
        b.close()
