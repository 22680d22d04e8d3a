"""The use path's caches (`core.changes`): the key versions an API process caches follow the
audit chain, and are never trusted while the feed is late."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.changes import RowCache
from core.keys import KeyStateError
from core.lifecycle import new_key, revoke
from core.objects import KeySpec, KeyTransitionCommit
from core.services import Services
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import make_services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = make_services(tmp_path)
    yield s
    s.close()


def revoke_key(services: Services, key_id: str) -> None:
    """Commit a revocation as the key's workflow would, through the store only."""
    policy = services.policies.key_type("encryption")
    key, _ = services.keys.get(key_id)
    now = datetime.now(UTC)
    first = new_key(policy.lifecycle(), key.created_at)
    spec = KeySpec(key_id, "dev", policy.name, policy.algorithm, "local", policy.key_bits)
    services.keys.commit_transition(
        KeyTransitionCommit(
            transition_id=f"keyrotor/key/dev/{key_id}/2",
            spec=dataclasses.replace(spec),
            lifecycle=revoke(first, now),
            action="key.revoked",
            event="keyRevoked",
            at=now,
        )
    )


def test_key_versions_are_cached_until_the_feed_names_the_key(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.changes as module

    keys, feed = services.keys, services.changes
    key_id, other_id = commit_key(services), commit_key(services)
    feed.poll()  # the first read: from now on the caches are trusted
    ciphertext = keys.encrypt(key_id, b"x", b"").value
    assert keys.rows.get((key_id, None))[0] and keys.rows.get((key_id, 1))[0] is False
    keys.decrypt(key_id, ciphertext, b"")
    keys.encrypt(other_id, b"x", b"")

    revoke_key(services, key_id)
    # committed by another process (here: behind the cache's back), not read from the feed yet
    assert keys.decrypt(key_id, ciphertext, b"").value == b"x"
    assert feed.poll() == 1
    with pytest.raises(KeyStateError, match=r"revoked|compromised"):
        keys.decrypt(key_id, ciphertext, b"")
    with pytest.raises(KeyStateError):
        keys.encrypt(key_id, b"x", b"")
    # the feed named only the revoked key: the other one is still cached
    assert keys.rows.get((other_id, None))[0] is True

    # a feed read too long ago: the cache is not used at all
    monkeypatch.setattr(module, "CACHE_STALE_AFTER", 0.0)
    assert keys.rows.get((other_id, None)) == (False, None)


def test_a_process_that_never_reads_the_feed_reads_the_store_every_time(
    services: Services,
) -> None:
    key_id = commit_key(services)
    services.keys.encrypt(key_id, b"x", b"")
    assert services.keys.rows.get((key_id, None)) == (False, None)
    revoke_key(services, key_id)
    with pytest.raises(KeyStateError):
        services.keys.encrypt(key_id, b"x", b"")


def test_forget_drops_one_key_at_once(services: Services) -> None:
    key_id = commit_key(services)
    services.changes.poll()
    services.keys.encrypt(key_id, b"x", b"")
    revoke_key(services, key_id)
    services.keys.forget(key_id)  # as the API does after a change it made itself
    with pytest.raises(KeyStateError):
        services.keys.encrypt(key_id, b"x", b"")


def test_row_cache_evicts_the_least_recently_used_and_keeps_its_index() -> None:
    cache = RowCache(max_entries=2)
    cache.polled_at = float("inf")  # always fresh
    cache.put("a1", "a", "row a1", cache.generation)
    cache.put("b1", "b", "row b1", cache.generation)
    assert cache.get("a1") == (True, "row a1")  # a1 is now the most recent
    cache.put("c1", "c", "row c1", cache.generation)
    assert cache.get("b1") == (False, None)
    assert cache._by_object == {"a": {"a1"}, "c": {"c1"}}
    cache.put("nothing", None, None, cache.generation)  # a lookup that found nothing
    assert cache.get("nothing") == (True, None)
    assert cache.get("a1") == (False, None)  # the least recent of a1 and c1
    assert cache._by_object == {"c": {"c1"}}
    cache.drop(["c"])
    assert cache.get("c1") == (False, None)
    assert cache.get("nothing") == (True, None)
    assert cache._by_object == {}


def test_a_row_read_before_a_drop_is_not_cached() -> None:
    cache = RowCache(max_entries=10)
    cache.polled_at = float("inf")
    generation = cache.generation  # a read starts
    cache.drop(["a"])  # the feed names the object meanwhile
    cache.put("a1", "a", "stale row", generation)
    assert cache.get("a1") == (False, None)
