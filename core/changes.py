"""Rows the use path reads on every request, cached per process and kept fresh by the audit
chain.

Every lifecycle change commits with its audit record (`core.audit`), so the chain is a change
feed: the API reads the records committed since its last read every `CACHE_POLL_INTERVAL`
(`ChangeFeed.poll`) and drops the cached rows of every object they name. A cache is used only
while its feed was read less than `CACHE_STALE_AFTER` ago; otherwise every lookup reads the
store. A change made through any process (a worker's commit, another API process) therefore
reaches every API process's answers within `CACHE_STALE_AFTER`, and a process that made a
change itself forgets the object at once (`RowCache.drop`).

A process that never polls (a worker, a test without the API's lifespan) never trusts its
caches: it reads the store every time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

from sqlalchemy import func, select

from core.store.db import Store
from core.store.models import AuditRecordRow

CACHE_POLL_INTERVAL = 0.25
CACHE_STALE_AFTER = 0.75


class RowCache:
    """Rows by lookup key, each belonging to an object (a key, a credential); least recently
    used out. A lookup that found nothing may be cached too (row None, object None)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._rows: OrderedDict[Hashable, tuple[str | None, Any]] = OrderedDict()
        self._by_object: dict[str, set[Hashable]] = {}
        self._lock = threading.Lock()
        self.polled_at = float("-inf")  # monotonic start of the feed's last successful read
        # bumped by every drop: a row read from the store before a drop is not cached after it
        self.generation = 0

    def fresh(self) -> bool:
        return time.monotonic() - self.polled_at <= CACHE_STALE_AFTER

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """(found, row); never found while the feed is late."""
        if not self.fresh():
            return False, None
        with self._lock:
            if key not in self._rows:
                return False, None
            self._rows.move_to_end(key)
            return True, self._rows[key][1]

    def put(self, key: Hashable, object_id: str | None, row: Any, generation: int) -> None:
        """Cache `row`, read while `generation` was current (else it may be stale: dropped)."""
        with self._lock:
            if generation != self.generation:
                return
            self._rows[key] = (object_id, row)
            if object_id is not None:
                self._by_object.setdefault(object_id, set()).add(key)
            while len(self._rows) > self._max:
                old_key, (old_object, _) = self._rows.popitem(last=False)
                if old_object is not None and old_object in self._by_object:
                    keys = self._by_object[old_object]
                    keys.discard(old_key)
                    if not keys:
                        del self._by_object[old_object]

    def drop(self, object_ids: Iterable[str] | None) -> None:
        """Forget these objects' rows (None: everything)."""
        with self._lock:
            self.generation += 1
            if object_ids is None:
                self._rows.clear()
                self._by_object.clear()
                return
            for object_id in object_ids:
                for key in self._by_object.pop(object_id, ()):
                    self._rows.pop(key, None)


class ChangeFeed:
    """Reads the audit chain for changes and drops them from the caches of their object kind."""

    def __init__(self, store: Store, caches: dict[str, RowCache]) -> None:
        self._store = store
        self._caches = caches
        self.seq: int | None = None  # the last audit record read

    def poll(self) -> int:
        """Drop the objects changed since the last call; returns how many changes it read."""
        started = time.monotonic()
        with self._store.engine.connect() as db:
            if self.seq is None:  # first read: nothing cached before it can be trusted
                self.seq = db.scalar(select(func.max(AuditRecordRow.seq))) or 0
                rows = None
            else:
                rows = db.execute(
                    select(
                        AuditRecordRow.seq, AuditRecordRow.object_kind, AuditRecordRow.object_id
                    ).where(
                        AuditRecordRow.seq > self.seq,
                        AuditRecordRow.object_kind.in_(list(self._caches)),
                    )
                ).all()
                if rows:
                    self.seq = max(r.seq for r in rows)
        caches = {id(c): c for c in self._caches.values()}.values()
        for cache in caches:
            if rows is None:
                cache.drop(None)
            elif changed := [r.object_id for r in rows if self._caches[r.object_kind] is cache]:
                cache.drop(changed)
            cache.polled_at = started
        return len(rows or ())
