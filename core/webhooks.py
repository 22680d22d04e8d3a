"""Webhooks: subscriptions, the fan-out of lifecycle events to them, and signed deliveries.

A delivery is an HTTP POST of the event (as `GET /events` shows it) with the headers
`Keyrotor-Signature: t=<unix seconds>,v1=<hex>`, where v1 = HMAC-SHA256(secret, "<t>." + body),
`Keyrotor-Event-Id`, `Keyrotor-Event-Type` and `Keyrotor-Delivery-Id`. A receiver recomputes v1
over the raw body, compares in constant time and refuses a `t` older than five minutes
(`verify_signature` does exactly that). Any 2xx answer is a delivery; anything else (or no
answer within 10 s) is retried by the delivery workflow's activity with backoff, then marked
failed, visible and replayable.

The secret is shown once, at creation; it is stored only envelope-encrypted under the master
key and never travels through Temporal: activities take delivery ids.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Table, func, insert, select, update

from core import audit
from core.envelope import MasterKeyring, open_envelope, seal
from core.lifecycle import SEVERITIES, iso
from core.store.db import Store
from core.store.models import EventRow, WebhookDeliveryRow, WebhookRow

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, like secret scanners look for)
SIGNATURE_HEADER = "Keyrotor-Signature"
SIGNATURE_TOLERANCE = 300  # seconds
DELIVERY_TIMEOUT = 10.0  # seconds an endpoint has to answer
MAX_EVENT_TYPES = 50
FAN_OUT_POLL = 0.5  # seconds between looks at the events table while waiting
FAN_OUT_BATCH = 200


class WebhookError(ValueError):
    """A webhook request that cannot be accepted (bad URL, unknown filter)."""


class WebhookNotFoundError(LookupError):
    """No such webhook or delivery."""


class WebhookStateError(Exception):
    """The request does not apply in the webhook's or delivery's state."""


class DeliveryFailed(Exception):
    """The endpoint did not accept the event; the message names why (never its answer)."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    now: float | None = None,
    tolerance: int = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver does: the header's v1 is the HMAC of its t and the raw body, and t is
    recent (replays of an old delivery are refused)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def event_view(row: Any) -> dict[str, Any]:
    """An event as `GET /events`, the event stream and webhook deliveries show it."""
    return {
        "id": row.id,
        "eventId": row.event_id,
        "type": row.type,
        "objectKind": row.object_kind,
        "objectId": row.object_id,
        "at": iso(row.at),
        "data": dict(row.data),
    }


def url_origin(url: str) -> str:
    """`scheme://host[:port]` of a webhook URL: what is shown where the path (for Slack, Teams
    and the like, the credential) must not be, in the audit trail and to readers."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def webhook_view(row: WebhookRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "description": row.description,
        "eventTypes": list(row.event_types),
        "minSeverity": row.min_severity,
        "status": row.status,
        "createdBy": row.created_by,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
    }


def delivery_view(row: WebhookDeliveryRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "webhookId": row.webhook_id,
        "eventId": row.event_id,
        "eventType": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "lastStatus": row.last_status,
        "lastError": row.last_error or None,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
        "deliveredAt": iso(row.delivered_at),
    }


def matches(webhook: WebhookRow, event: EventRow) -> bool:
    """Whether `webhook` wants `event`: its type is subscribed to, and a warning's severity is
    at least the webhook's minimum (events that carry no warning pass that filter)."""
    if webhook.event_types and event.type not in webhook.event_types:
        return False
    severity = (event.data or {}).get("warning", {}).get("severity")
    if webhook.min_severity and severity is not None:
        return bool(SEVERITIES.index(severity) >= SEVERITIES.index(webhook.min_severity))
    return True


@dataclass(frozen=True)
class DeliveryBatch:
    """What one fan-out made: the deliveries to send, and the last event id it looked at."""

    after: int
    deliveries: tuple[int, ...]


class WebhookService:
    def __init__(self, store: Store, keyring: MasterKeyring) -> None:
        self._store = store
        self._keyring = keyring
        self._http = httpx.Client(
            timeout=DELIVERY_TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": f"keyrotor-webhooks/{version('keyrotor')}"},
        )

    # --- subscriptions (the API) ------------------------------------------------------------

    def create(
        self,
        url: str,
        description: str,
        event_types: list[str],
        min_severity: str | None,
        actor: str,
    ) -> tuple[dict[str, Any], str]:
        """A new active webhook, and its signing secret (shown this once)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError("url must be an absolute http or https URL")
        if parts.username or parts.password:
            raise WebhookError("url must not carry credentials; sign with the webhook secret")
        if len(event_types) > MAX_EVENT_TYPES or not all(
            t.isascii() and t.isalpha() and 0 < len(t) <= 64 for t in event_types
        ):
            raise WebhookError(f"eventTypes must be up to {MAX_EVENT_TYPES} event type names")
        if min_severity is not None and min_severity not in SEVERITIES:
            raise WebhookError(f"minSeverity must be one of {', '.join(SEVERITIES)}")
        secret = new_secret()
        webhook_id = "whk_" + secrets.token_hex(10)
        now = datetime.now(UTC)
        row = WebhookRow(
            id=webhook_id,
            url=url,
            description=description,
            event_types=sorted(set(event_types)),
            min_severity=min_severity,
            sealed_secret=seal(self._keyring, secret.encode(), webhook_id.encode()),
            status="active",
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        with self._store.write() as s:
            s.add(row)
            s.flush()
            # the origin only: the trail is kept for years and read by auditors
            self._audit(s, "created", webhook_id, actor, now, "", {"url": url_origin(url)})
            view = webhook_view(row)
        return view, secret

    def all(self) -> list[dict[str, Any]]:
        with self._store.session() as s:
            rows = s.scalars(select(WebhookRow).order_by(WebhookRow.created_at)).all()
            return [webhook_view(r) for r in rows]

    def get(self, webhook_id: str) -> dict[str, Any]:
        with self._store.session() as s:
            return webhook_view(self._webhook(s, webhook_id))

    def delete(self, webhook_id: str, actor: str) -> dict[str, Any]:
        """Stop sending to it (deliveries still being retried give up at their next attempt);
        its deliveries stay listed."""
        now = datetime.now(UTC)
        with self._store.write() as s:
            row = self._webhook(s, webhook_id)
            if row.status != "deleted":
                row.status, row.updated_at = "deleted", now
                self._audit(s, "deleted", webhook_id, actor, now, "", {})
            return webhook_view(row)

    def deliveries(self, webhook_id: str, status: str | None, limit: int) -> list[dict[str, Any]]:
        query = select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
        if status:
            query = query.where(WebhookDeliveryRow.status == status)
        with self._store.session() as s:
            self._webhook(s, webhook_id)
            rows = s.scalars(query.order_by(WebhookDeliveryRow.id.desc()).limit(limit))
            return [delivery_view(r) for r in rows]

    def prepare_replay(self, webhook_id: str, delivery_id: int, actor: str) -> dict[str, Any]:
        """Make a failed (or delivered) delivery pending again, audited; the caller starts its
        delivery workflow."""
        now = datetime.now(UTC)
        with self._store.write() as s:
            webhook = self._webhook(s, webhook_id)
            row = s.get(WebhookDeliveryRow, delivery_id)
            if row is None or row.webhook_id != webhook_id:
                raise WebhookNotFoundError(f"delivery {delivery_id} not found")
            if webhook.status != "active":
                raise WebhookStateError("the webhook is deleted")
            if row.status == "pending":
                raise WebhookStateError("the delivery is still being sent")
            row.status, row.updated_at = "pending", now
            self._audit(
                s, "delivery_replayed", webhook_id, actor, now, "", {"delivery": delivery_id}
            )
            return delivery_view(row)

    def _webhook(self, s: Any, webhook_id: str) -> WebhookRow:
        row = s.get(WebhookRow, webhook_id)
        if row is None:
            raise WebhookNotFoundError(f"webhook {webhook_id} not found")
        found: WebhookRow = row
        return found

    @staticmethod
    def _audit(
        s: Any,
        action: str,
        webhook_id: str,
        actor: str,
        at: datetime,
        reason: str,
        details: dict[str, Any],
    ) -> None:
        audit.append(
            s,
            audit.AuditEntry(
                event_id=f"webhook/{webhook_id}/{action}/{uuid.uuid4()}",
                at=at,
                actor=actor,
                action=f"webhook.{action}",
                object_kind="webhook",
                object_id=webhook_id,
                reason=reason,
                details=details,
            ),
        )

    # --- the fan-out and deliveries (activities) --------------------------------------------

    def last_event_id(self) -> int:
        with self._store.session() as s:
            return int(s.scalar(select(func.max(EventRow.id))) or 0)

    def fan_out(self, after: int, wait: float, alive: Callable[[], None]) -> DeliveryBatch:
        """Make the deliveries of the events after `after` to the webhooks that want them.
        Waits up to `wait` seconds for events to come (calling `alive` meanwhile), so an idle
        dispatcher costs one activity per wait. Idempotent: a retried fan-out finds the
        deliveries it made (one per webhook and event)."""
        deadline = time.monotonic() + wait
        while True:
            with self._store.session() as s:
                hooks = s.scalars(select(WebhookRow).where(WebhookRow.status == "active")).all()
                if hooks:
                    events = s.scalars(
                        select(EventRow)
                        .where(EventRow.id > after)
                        .order_by(EventRow.id)
                        .limit(FAN_OUT_BATCH)
                    ).all()
                    wanted = [(h.id, e) for e in events for h in hooks if matches(h, e)]
                    if wanted:
                        return DeliveryBatch(events[-1].id, self._make_deliveries(wanted))
                    if events:
                        after = events[-1].id  # nobody wants them: move on
                else:
                    # no subscriber: skip what is there without reading it
                    after = max(after, int(s.scalar(select(func.max(EventRow.id))) or 0))
            if time.monotonic() >= deadline:
                return DeliveryBatch(after, ())
            alive()
            time.sleep(FAN_OUT_POLL)

    def _make_deliveries(self, wanted: list[tuple[str, EventRow]]) -> tuple[int, ...]:
        now = datetime.now(UTC)
        table = cast(Table, WebhookDeliveryRow.__table__)
        with self._store.write() as s:
            ids = []
            for webhook_id, event in wanted:
                found = s.scalar(
                    select(WebhookDeliveryRow.id).where(
                        WebhookDeliveryRow.webhook_id == webhook_id,
                        WebhookDeliveryRow.event_id == event.id,
                    )
                )
                if found is None:
                    found = s.execute(
                        insert(table)
                        .values(
                            webhook_id=webhook_id,
                            event_id=event.id,
                            event_type=event.type,
                            status="pending",
                            attempts=0,
                            last_error="",
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(table.c.id)
                    ).scalar_one()
                ids.append(int(found))
        return tuple(ids)

    def deliver(self, delivery_id: int) -> bool:
        """One attempt: POST the signed event. True when delivered (now or before); False when
        the webhook was deleted meanwhile (the delivery is marked failed); DeliveryFailed when
        the endpoint did not take it (the attempt is recorded)."""
        with self._store.session() as s:
            row = s.get(WebhookDeliveryRow, delivery_id)
            if row is None:
                raise WebhookNotFoundError(f"delivery {delivery_id} not found")
            if row.status == "delivered":
                return True
            webhook = self._webhook(s, row.webhook_id)
            if webhook.status != "active":
                self.mark_failed(delivery_id, "the webhook was deleted")
                return False
            event = s.get(EventRow, row.event_id)
            if event is None:
                raise WebhookNotFoundError(f"event {row.event_id} not found")
            secret = open_envelope(self._keyring, webhook.sealed_secret, webhook.id.encode())
            body = json.dumps(event_view(event), separators=(",", ":")).encode()
            url, event_id, event_type = webhook.url, event.event_id, event.type
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret.decode(), body, int(time.time())),
            "Keyrotor-Event-Id": event_id,
            "Keyrotor-Event-Type": event_type,
            "Keyrotor-Delivery-Id": str(delivery_id),
        }
        status: int | None = None
        try:
            status = self._http.post(url, content=body, headers=headers).status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as e:
            error = f"no answer: {type(e).__name__}"  # the class only: no URL or answer text
        now = datetime.now(UTC)
        with self._store.write() as s:
            s.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id == delivery_id)
                .values(
                    attempts=WebhookDeliveryRow.attempts + 1,
                    last_status=status,
                    last_error=error,
                    updated_at=now,
                    **({"status": "delivered", "delivered_at": now} if not error else {}),
                )
            )
        if error:
            raise DeliveryFailed(error)
        return True

    def mark_failed(self, delivery_id: int, why: str = "") -> None:
        """Give up on a delivery: it stays listed as failed until replayed."""
        with self._store.write() as s:
            values: dict[str, Any] = {"status": "failed", "updated_at": datetime.now(UTC)}
            if why:
                values["last_error"] = why
            s.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id == delivery_id, WebhookDeliveryRow.status == "pending")
                .values(values)
            )

    def close(self) -> None:
        self._http.close()
