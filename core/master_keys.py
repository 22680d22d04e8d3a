"""Master-key rotation: re-seal every envelope-encrypted blob under the current master key,
then retire the older keys.

The store holds three kinds of blob sealed under the master key (`core.envelope`): local key
material (`key_versions.wrapped_material`), secrets not yet revealed
(`credential_versions.pending_secret`) and webhook secrets (`webhooks.sealed_secret`). To
rotate, an operator lists the new key first (`KEYROTOR_MASTER_KEY=new,old`) on every process,
then runs `MasterKeyRotationWorkflow`: it re-seals the blobs table by table, a batch at a
time, and once none is left under an older key it records those keys as retired. Every
process then refuses to open a blob sealed under a retired key (`MasterKeyring.retire`), so
the old key can be dropped from the setting, and a copy of the store from before the rotation
does not open with the new key alone.

Re-sealing is idempotent (a blob already under the current key is left alone, and a row is
only rewritten if its blob is still the one that was read), so a batch may run twice and the
job may stop anywhere and go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Row, Table, select, tuple_, update

from core import audit
from core.api_credentials import secret_context, store_secret_context
from core.envelope import EnvelopeError, MasterKeyring, envelope_key_id, open_envelope, seal
from core.providers.local import material_context
from core.store.db import Store
from core.store.models import (
    CredentialVersionRow,
    KeyVersionRow,
    MasterKeyRetirementRow,
    StoreSecretRow,
    WebhookRow,
)


class MasterKeyError(Exception):
    """The rotation cannot go on: a blob does not open, or blobs remain under an old key."""


@dataclass(frozen=True)
class SealedColumn:
    """A column of envelope-encrypted blobs, with the columns ordering its rows (batch by
    batch) and the envelope context each row's blob was sealed for."""

    name: str
    table: Table
    order: tuple[str, ...]
    column: str
    context: Callable[[Any], bytes]
    context_columns: tuple[str, ...] = ()  # what `context` reads besides `order`


def _table(row: type) -> Table:
    return cast(Table, row.__table__)  # type: ignore[attr-defined]


SEALED = (
    SealedColumn(
        "key_versions",
        _table(KeyVersionRow),
        ("key_id", "number"),
        "wrapped_material",
        lambda r: material_context(r.key_id, r.number),
    ),
    SealedColumn(
        "credential_versions",
        _table(CredentialVersionRow),
        ("lookup_id",),
        "pending_secret",
        lambda r: secret_context(r.credential_id, r.number),
        ("credential_id", "number"),
    ),
    SealedColumn("webhooks", _table(WebhookRow), ("id",), "sealed_secret", lambda r: r.id.encode()),
    SealedColumn(
        "store_secrets",
        _table(StoreSecretRow),
        ("name",),
        "sealed",
        lambda r: store_secret_context(r.name),
    ),
)
_BY_NAME = {s.name: s for s in SEALED}
_RETIREMENTS = _table(MasterKeyRetirementRow)


@dataclass(frozen=True)
class ResealBatch:
    """One batch of a table: the cursor to go on from ("" once the table is done), the rows
    it looked at and the blobs it re-sealed."""

    cursor: str
    scanned: int
    resealed: int


class MasterKeyService:
    def __init__(self, store: Store, keyring: MasterKeyring) -> None:
        self._store = store
        self._keyring = keyring

    def census(self) -> dict[str, int]:
        """How many blobs each master key sealed, over every sealed column."""
        counts: dict[str, int] = {}
        for sealed in SEALED:
            blob = sealed.table.c[sealed.column]
            with self._store.engine.connect() as db:
                for (value,) in db.execute(select(blob).where(blob.is_not(None))):
                    kid = _key_id(value)
                    counts[kid] = counts.get(kid, 0) + 1
        return counts

    def status(self) -> dict[str, Any]:
        """The keyring as the store sees it: each key's state and how many blobs it sealed."""
        census = self.census()
        retired = self.retired()
        ids = list(dict.fromkeys([*self._keyring.ids(), *census, *retired]))
        current = self._keyring.current_id

        def state(kid: str) -> str:
            if kid == current:
                return "current"
            if kid in retired:
                return "retired"
            return "previous" if kid in self._keyring.ids() else "unknown"

        return {
            "current": current,
            "keys": [
                {
                    "id": kid,
                    "state": state(kid),
                    "sealed": census.get(kid, 0),
                    "retiredAt": retired[kid].isoformat() if kid in retired else None,
                }
                for kid in ids
            ],
        }

    def reseal_batch(self, name: str, cursor: str, limit: int) -> ResealBatch:
        """Re-seal the blobs of up to `limit` rows of column `name` after `cursor` ("": from
        the start) under the current master key."""
        sealed = _BY_NAME[name]
        t = sealed.table
        order = [t.c[c] for c in sealed.order]
        blob = t.c[sealed.column]
        columns = [*order, *(t.c[c] for c in sealed.context_columns), blob]
        query = select(*columns).order_by(*order).limit(limit)
        if cursor:
            query = query.where(tuple_(*order) > tuple_(*json.loads(cursor)))
        with self._store.engine.connect() as db:
            rows = db.execute(query).all()
        current = self._keyring.current_id
        stale = [
            (row, old)
            for row in rows
            if (old := getattr(row, sealed.column)) is not None and _key_id(old) != current
        ]
        resealed = 0
        if stale:
            fresh = [(row, old, self._reseal(sealed, row, old)) for row, old in stale]
            with self._store.write() as s:  # the batch's rows in one transaction
                for row, old, new in fresh:
                    where = [c == getattr(row, c.name) for c in order]
                    # only if nobody changed it meanwhile (a secret revealed, a blob re-sealed)
                    done = s.connection().execute(
                        update(t).where(*where, blob == old).values({sealed.column: new})
                    )
                    resealed += done.rowcount
        last = [getattr(rows[-1], c) for c in sealed.order] if len(rows) == limit else None
        return ResealBatch(json.dumps(last) if last else "", len(rows), resealed)

    def _reseal(self, sealed: SealedColumn, row: Row[Any], blob: bytes) -> bytes:
        context = sealed.context(row)
        try:
            return seal(self._keyring, open_envelope(self._keyring, blob, context), context)
        except EnvelopeError as e:
            where = ", ".join(f"{c} {getattr(row, c)}" for c in sealed.order)
            raise MasterKeyError(f"{sealed.name} ({where}): {e}") from None

    def retire_old(self, actor: str, reason: str, event_id: str) -> list[str]:
        """Record every key of the keyring but the current one as retired, once no blob is
        sealed under any of them; audited. Returns the keys it retired (none the second time)."""
        current = self._keyring.current_id
        left = {kid: n for kid, n in self.census().items() if kid != current}
        if left:
            counts = ", ".join(f"{n} under {kid}" for kid, n in sorted(left.items()))
            raise MasterKeyError(f"blobs are still sealed under older master keys: {counts}")
        already = self.retired()
        now = datetime.now(UTC)
        newly = [kid for kid in self._keyring.ids() if kid != current and kid not in already]
        with self._store.write() as s:
            for kid in newly:
                s.connection().execute(
                    _RETIREMENTS.insert().values(
                        key_id=kid, successor_id=current, retired_at=now, retired_by=actor
                    )
                )
                audit.append(
                    s,
                    audit.AuditEntry(
                        event_id=f"{event_id}:{kid}",
                        at=now,
                        actor=actor,
                        action="master_key.retired",
                        object_kind="master_key",
                        object_id=kid,
                        reason=reason,
                        details={"successor": current},
                    ),
                )
        self.load_retired()
        return newly

    def retired(self) -> dict[str, datetime]:
        with self._store.engine.connect() as db:
            return {
                r.key_id: r.retired_at
                for r in db.execute(select(_RETIREMENTS.c.key_id, _RETIREMENTS.c.retired_at))
            }

    def load_retired(self) -> None:
        """Refuse blobs of every retired master key from now on (processes call this at start
        and every few seconds)."""
        self._keyring.retire(self.retired())


def _key_id(blob: bytes) -> str:
    try:
        return envelope_key_id(blob)
    except EnvelopeError:
        return "unreadable"
