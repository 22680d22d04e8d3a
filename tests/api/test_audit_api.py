"""The audit trail over REST: list with filters and a cursor, verify the chain (a tampered
record is named), export as JSON Lines and CSV, and `keyrotor audit verify-export` checking an
export with no database."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import Services
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import make_services

AUDIT = "/api/key-management/audit"
KEYROTOR = Path(sys.executable).parent / "keyrotor"


@dataclass
class Trail:
    http: httpx.AsyncClient
    services: Services
    keys: list[str]
    auditor: dict[str, str]


@pytest.fixture
async def trail(tmp_path: Path) -> AsyncIterator[Trail]:
    services = make_services(tmp_path)
    admin_keys = AdminKeys(services.store, services.keyring)
    admin = admin_keys.create("ops", Role.ADMIN, "test")
    auditor = admin_keys.create("auditor-ann", Role.AUDITOR, "test")
    keys = [commit_key(services, created_by=f"user-{i}") for i in range(5)]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)),
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield Trail(http, services, keys, {"Authorization": f"Bearer {auditor}"})
    services.close()


async def test_list_filters_and_pages_newest_first(trail: Trail) -> None:
    r = await trail.http.get(AUDIT, headers=trail.auditor)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    # the two admin keys the fixture made, then the five keys
    assert [x["seq"] for x in records] == [7, 6, 5, 4, 3, 2, 1]
    assert [x["action"] for x in records] == ["key.created"] * 5 + ["admin_key.created"] * 2
    assert records[-1]["prevHash"] == "0" * 64 and records[-1]["cid"].startswith("bagaaiera")
    first_key = records[-3]
    assert first_key["objectId"] == trail.keys[0] and first_key["actor"] == "user-0"
    assert first_key["prevHash"] == records[-2]["hash"]

    r = await trail.http.get(AUDIT, params={"objectId": trail.keys[2]})
    assert [x["objectId"] for x in r.json()["records"]] == [trail.keys[2]]
    r = await trail.http.get(AUDIT, params={"actor": "user-4", "action": "key.created"})
    assert [x["seq"] for x in r.json()["records"]] == [7]
    r = await trail.http.get(AUDIT, params={"objectKind": "admin_key"})
    assert [x["seq"] for x in r.json()["records"]] == [2, 1]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await trail.http.get(AUDIT, params={"since": later})).json()["records"] == []
    assert len((await trail.http.get(AUDIT, params={"until": later})).json()["records"]) == 7

    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {
            "limit": 2,
            "objectKind": "key",
            **({"cursor": cursor} if cursor else {}),
        }
        page = (await trail.http.get(AUDIT, params=params)).json()
        seen += [x["seq"] for x in page["records"]]
        cursor = page["pagination"]["nextCursor"]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3]

    for bad in ({"cursor": "nonsense"}, {"since": "2026-01-01T00:00:00"}, {"limit": 0}):
        r = await trail.http.get(AUDIT, params=bad)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_REQUEST"), bad


async def test_verify_names_the_first_tampered_record(trail: Trail) -> None:
    r = await trail.http.get(f"{AUDIT}/verify", headers=trail.auditor)
    assert r.json()["verification"] == {
        "ok": True,
        "checked": 7,
        "headHash": (await trail.http.get(AUDIT)).json()["records"][0]["hash"],
        "firstBrokenSeq": None,
        "reason": None,
    }
    with trail.services.store.write() as s:
        s.execute(text("UPDATE audit_records SET reason = 'nothing to see' WHERE seq = 4"))
    v = (await trail.http.get(f"{AUDIT}/verify")).json()["verification"]
    assert (v["ok"], v["checked"], v["firstBrokenSeq"]) == (False, 3, 4)
    assert "hash does not match" in v["reason"]


def verify_export(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KEYROTOR), "audit", "verify-export", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_jsonl_export_verifies_offline_and_a_changed_copy_does_not(
    trail: Trail, tmp_path: Path
) -> None:
    r = await trail.http.get(f"{AUDIT}/export", headers=trail.auditor)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = r.text.splitlines()
    header = json.loads(lines[0])
    assert header["head"] == {"seq": 7, "hash": r.headers["x-keyrotor-audit-head-hash"]}
    assert [json.loads(line)["seq"] for line in lines[1:]] == [1, 2, 3, 4, 5, 6, 7]
    export = tmp_path / "audit.jsonl"
    export.write_text(r.text)
    ok = verify_export(export)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified: 7 records, the chain's start to record 7" in ok.stdout

    # the export was audited, after the head it exported
    last = (await trail.http.get(AUDIT, params={"limit": 1})).json()["records"][0]
    assert (last["seq"], last["action"], last["actor"]) == (8, "audit.exported", "auditor-ann")
    assert last["details"] == {"format": "jsonl", "fromSeq": 1, "headSeq": 7}

    record = json.loads(lines[3])
    record["actor"] = "someone else"
    export.write_text("\n".join([*lines[:3], json.dumps(record), *lines[4:]]) + "\n")
    bad = verify_export(export)
    assert bad.returncode == 1 and "record 3: hash does not match its content" in bad.stdout
    export.write_text("\n".join([*lines[:3], *lines[4:]]) + "\n")  # record 3 removed
    bad = verify_export(export)
    assert bad.returncode == 1 and "record 3 missing" in bad.stdout
    export.write_text("\n".join(lines[:-1]) + "\n")  # the newest record cut off
    bad = verify_export(export)
    assert bad.returncode == 1 and "not the head's" in bad.stdout


async def test_a_csv_export_from_a_later_record_verifies_against_its_head(
    trail: Trail, tmp_path: Path
) -> None:
    r = await trail.http.get(f"{AUDIT}/export", params={"format": "csv", "fromSeq": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = r.text.splitlines()
    assert rows[0].startswith("seq,event_id,at,actor,action") and len(rows) == 1 + 5
    export = tmp_path / "audit.csv"
    export.write_text(r.text)
    head = r.headers["x-keyrotor-audit-head-hash"]
    ok = verify_export(export, "--head", head)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified: 5 records, record 3 to record 7" in ok.stdout
    wrong = verify_export(export, "--head", "f" * 64)
    assert wrong.returncode == 1 and "not the head's" in wrong.stdout

    r = await trail.http.get(f"{AUDIT}/export", params={"fromSeq": 99})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_REQUEST")
