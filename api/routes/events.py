"""`/api/key-management/events`: the lifecycle events (keyCreated, keyRotated, keyExpiring,
credentialRevoked, ...), listed or streamed to dashboards as server-sent events.

An event commits with its audit record, after the audit head is locked, so event ids grow in
commit order: a reader that asks for ids above the last one it saw misses nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, Svc
from api.errors import APIError
from core.store.db import Store
from core.store.models import EventRow
from core.webhooks import event_view

router = APIRouter(prefix="/api/key-management/events", tags=["events"])
STREAM_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
BATCH = 500


def _types(types: str | None) -> list[str] | None:
    return [t.strip() for t in types.split(",") if t.strip()] if types else None


def _after(store: Store, after: int, types: list[str] | None, limit: int) -> list[Any]:
    query = select(EventRow).where(EventRow.id > after).order_by(EventRow.id).limit(limit)
    if types:
        query = query.where(EventRow.type.in_(types))
    with store.session() as s:
        return list(s.scalars(query))


def _last_id(store: Store) -> int:
    with store.session() as s:
        return s.scalar(select(func.max(EventRow.id))) or 0


@router.get("")
def list_events(
    svc: Svc,
    who: Reader,
    after: int = Query(default=0, ge=0, description="only events with a greater id"),
    types: str | None = Query(default=None, description="comma-separated event types"),
    limit: int = Query(default=100, ge=1, le=BATCH),
) -> dict[str, Any]:
    """Events in the order they were committed, oldest first; pass the last `id` as `after`."""
    rows = _after(svc.store, after, _types(types), limit)
    return {"events": [event_view(r) for r in rows], "lastId": rows[-1].id if rows else after}


@router.get("/stream")
async def stream_events(
    request: Request,
    svc: Svc,
    who: Reader,
    after: int | None = Query(
        default=None, ge=0, description="start after this id (default: new events only)"
    ),
    types: str | None = Query(default=None, description="comma-separated event types"),
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: one `event: <type>` with `id: <id>` and the event as JSON `data` per
    lifecycle event, as they commit. A reconnecting client's `Last-Event-ID` resumes after it;
    a comment line every 15 s keeps proxies from closing an idle stream."""
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise APIError(400, "INVALID_REQUEST", "Last-Event-ID: an event id this API sent")
        after = int(last_event_id)
    start = after if after is not None else await run_in_threadpool(_last_id, svc.store)
    wanted = _types(types)

    async def events() -> AsyncIterator[str]:
        last, quiet_since = start, time.monotonic()
        yield ": keyrotor lifecycle events\n\n"
        while not await request.is_disconnected():
            rows = await run_in_threadpool(_after, svc.store, last, wanted, BATCH)
            for row in rows:
                data = json.dumps(event_view(row), separators=(",", ":"))
                yield f"id: {row.id}\nevent: {row.type}\ndata: {data}\n\n"
                last = row.id
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            if len(rows) < BATCH:
                await asyncio.sleep(STREAM_POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
