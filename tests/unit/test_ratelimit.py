"""Rate limiters: per process, and shared through the database or Redis (real SQLite,
PostgreSQL and Redis). Two limiter instances stand for two API processes: over a shared
store they share each client's count; a Redis that does not answer leaves each process
counting on its own. Usage limits counted in Redis (`RedisLimits.use`): here the counting;
`test_api_credentials` holds the store's side."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from sqlalchemy import text

from core.ratelimit import (
    DatabaseRateLimiter,
    ProcessRateLimiter,
    RateLimiter,
    RedisLimits,
    client_key,
)
from core.store.db import Store
from tests.fixtures.redis_server import PrivateRedis


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
def redis_pair(redis_url: str, redis_prefix: str) -> Iterator[tuple[RedisLimits, ...]]:
    pair = tuple(RedisLimits(redis_url, prefix=redis_prefix) for _ in range(2))
    yield pair
    for limiter in pair:
        limiter.close()


def test_redis_windows_hold_reset_and_are_shared(redis_pair: tuple[RedisLimits, ...]) -> None:
    a, b = redis_pair
    check_limit_holds_resets_and_is_shared(a, b, Clock(fake=False))


def test_redis_keys_name_no_client(
    redis_pair: tuple[RedisLimits, ...], redis_client: redis.Redis, redis_prefix: str
) -> None:
    lookup_id = secrets.token_hex(8)
    a, _ = redis_pair
    assert a.allow(f"handle/{lookup_id}", 5, 60, time.time()) is None
    assert a.allow("credential/cred_secretive", 5, 60, time.time()) is None
    keys = {k.decode() for k in redis_client.scan_iter(match=redis_prefix + "*")}
    assert keys == {
        redis_prefix + "rl:" + client_key(f"handle/{lookup_id}"),
        redis_prefix + "rl:" + client_key("credential/cred_secretive"),
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
    a = RedisLimits(url, retry_interval=0.3)
    b = RedisLimits(url, retry_interval=0.3)
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
        assert back == ["Redis answers again: it counts rate limits and usage limits"] * 2
        server = redis.Redis.from_url(private_redis.url)
        assert server.get(a.key("credential/d")) == b"2"
        server.close()
    finally:
        a.close()
        b.close()


# --- usage limits in Redis -----------------------------------------------------------------


def test_redis_usage_counts_are_seeded_once_shared_and_exact(
    redis_pair: tuple[RedisLimits, ...], redis_client: redis.Redis, redis_prefix: str
) -> None:
    a, b = redis_pair
    seeds: list[str] = []

    def seed() -> int:
        seeds.append("read")
        return 10

    client = f"credential/cred_{secrets.token_hex(4)}"
    with ThreadPoolExecutor(max_workers=8) as pool:
        lefts = list(pool.map(lambda n: (a, b)[n % 2].use(client, seed), range(14)))
    assert sorted(left for _, left in lefts) == [-1] * 4 + list(range(10))  # each seen once
    assert 1 <= len(seeds) <= 14  # read while Redis had no count; one seed took
    assert b.use(client, seed) == (None, -1)  # and it stays spent
    key = a.use_key(client)
    assert redis_client.get(key) == b"0"
    assert key == f"{redis_prefix}use:{client_key(client)}"
    assert 0 < redis_client.pttl(key) <= RedisLimits.USE_TTL_MS
    assert client.encode() not in b" ".join(redis_client.scan_iter(match="*"))
    # a count Redis holds is not read from the store again
    seeds.clear()
    other = f"handle/{secrets.token_hex(8)}"
    assert [a.use(other, lambda: 3)[1] for _ in range(4)] == [2, 1, 0, -1]
    assert [b.use(other, seed) for _ in range(2)] == [(None, -1)] * 2 and seeds == []


def test_a_redis_that_does_not_answer_sends_usage_limits_to_the_store_and_reseeds_after(
    private_redis: PrivateRedis,
) -> None:
    """`use` answers None while Redis is down (the caller counts in the store); once Redis
    answers, the counts this process sent to the store meanwhile are dropped from Redis and
    seeded again from the store, and the others are left as they are."""
    private_redis.start()
    server = redis.Redis.from_url(private_redis.url)
    limits = RedisLimits(private_redis.url, retry_interval=0.3)
    try:
        assert limits.use("credential/a", lambda: 5) == (None, 4)
        assert limits.use("credential/b", lambda: 5) == (None, 4)
        private_redis.stop()
        assert limits.use("credential/a", lambda: 5) is None
        assert limits.use("credential/a", lambda: 5) is None  # not asked again for a while
        private_redis.start()  # an empty Redis (no persistence): both counts are gone
        server.set(limits.use_key("credential/a"), 4)
        server.set(limits.use_key("credential/b"), 4)
        time.sleep(0.35)
        # a was counted in the store while Redis was down: read from the store again (2 left
        # there, after the two uses the store counted); b was not, and keeps Redis's count
        assert limits.use("credential/a", lambda: 2) == (None, 1)
        assert limits.use("credential/b", lambda: 99) == (None, 3)
    finally:
        limits.close()
        server.close()


def test_a_redis_rate_limit_and_usage_limit_take_one_round_trip_and_a_limited_request_no_use(
    redis_pair: tuple[RedisLimits, ...], redis_client: redis.Redis
) -> None:
    a, b = redis_pair
    client = f"handle/{secrets.token_hex(8)}"
    answers = [(a, b)[n % 2].use(client, lambda: 3, (4, 60)) for n in range(6)]
    assert [left for _, left in answers] == [2, 1, 0, -1, 0, 0]
    assert [wait is not None and 0 < wait <= 60 for wait, _ in answers] == [False] * 4 + [True] * 2
    assert redis_client.get(a.use_key(client)) == b"0"  # limited requests spent nothing more
    assert redis_client.get(a.key(client)) == b"6"  # every request counted against the rate
    assert 0 < redis_client.pttl(a.key(client)) <= 60_000
    # the rate window is the one `allow` counts in
    assert a.allow(client, 4, 60, time.time()) is not None
