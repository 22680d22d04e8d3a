"""Request ids and JSON log lines: every answer carries an X-Request-Id (the caller's, if it is
a sane one), and a line logged while serving a request names it."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.logs import JSONFormatter, RequestIdFilter
from core.services import Services
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import make_services

KEYS = "/api/key-management/keys"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    services = make_services(tmp_path)
    admin = AdminKeys(services.store, services.keyring).create("ops", Role.ADMIN, "t")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)),
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield http, services
    services.close()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("keyrotor")
    logger.addHandler(handler)
    yield out
    logger.removeHandler(handler)


async def test_answers_carry_the_callers_request_id_or_a_new_one(
    api: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = api
    key_id = commit_key(services)
    for method, path, body in (
        ("GET", f"{KEYS}/{key_id}", None),  # through FastAPI's stack
        ("POST", f"{KEYS}/{key_id}/encrypt", {"plaintext": "aGk="}),  # the hot path
        ("GET", f"{KEYS}/key_nosuchkey000000000", None),  # an error answer
    ):
        r = await http.request(method, path, json=body, headers={"X-Request-Id": "req-42.a"})
        assert r.headers["x-request-id"] == "req-42.a", (path, r.status_code)
        for bad in ("has spaces", "x" * 129, ""):
            r = await http.request(method, path, json=body, headers={"X-Request-Id": bad})
            assert re.fullmatch("[0-9a-f]{32}", r.headers["x-request-id"]), bad
    a = (await http.get("/livez")).headers["x-request-id"]
    assert a != (await http.get("/livez")).headers["x-request-id"]


async def test_a_line_logged_while_serving_names_the_request_and_no_secret(
    api: tuple[httpx.AsyncClient, Services],
    json_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    http, services = api
    key_id = commit_key(services)

    def explode(*args: object) -> None:
        raise RuntimeError("provider said: secret material 0xDEADBEEF")

    monkeypatch.setattr(services.keys, "encrypt", explode)
    r = await http.post(
        f"{KEYS}/{key_id}/encrypt", json={"plaintext": "aGk="}, headers={"X-Request-Id": "req-500"}
    )
    assert r.status_code == 500
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert errors and all(line["requestId"] == "req-500" for line in errors), lines
    assert errors[0]["logger"] == "keyrotor.api" and "RuntimeError" in errors[0]["message"]
    assert "DEADBEEF" not in json_log.getvalue()


def test_json_lines_name_the_error_type_but_never_its_text() -> None:
    try:
        raise ValueError("the statement's parameters: salt=00ff")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "keyrotor.worker", logging.WARNING, __file__, 1, "commit failed", (), sys.exc_info()
        )
    record.temporal_activity = {"activity_type": "commit_key_transition", "attempt": 2}
    line = json.loads(JSONFormatter().format(record))
    assert line["error"] == "ValueError" and "salt" not in json.dumps(line)
    assert line["activity"] == {"activity_type": "commit_key_transition", "attempt": 2}
    assert line["message"] == "commit failed" and line["level"] == "WARNING"


def test_log_format_and_level_come_from_the_environment() -> None:
    code = (
        "import logging; from core.logs import setup_logging; setup_logging();"
        " logging.getLogger('keyrotor.x').info('hello'); logging.getLogger('keyrotor.x').debug('no')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"LOG_LEVEL": "info", "LOG_FORMAT": "json", "PATH": ""},
        check=True,
    )
    [line] = [json.loads(x) for x in run.stderr.splitlines()]
    assert (line["message"], line["logger"], line["level"]) == ("hello", "keyrotor.x", "INFO")
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"LOG_LEVEL": "debug", "LOG_FORMAT": "text", "PATH": ""},
        check=True,
    )
    assert "INFO keyrotor.x: hello" in run.stderr and "DEBUG keyrotor.x: no" in run.stderr


def test_http_and_cloud_libraries_never_log_urls_or_bodies() -> None:
    """At LOG_LEVEL=debug too: httpx logs a webhook's whole URL (a bearer secret for Slack and
    the like) at INFO, botocore the bodies of KMS calls (plaintext) at DEBUG."""
    code = """
import http.server, logging, threading
import httpx
from core.logs import setup_logging
setup_logging()
class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args): pass  # the test server's own request line
server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=server.handle_request, daemon=True).start()
httpx.post(f"http://127.0.0.1:{server.server_port}/services/T0/B0/hook-secret-path", json={})
logging.getLogger("botocore.endpoint").debug("Plaintext kms-plaintext-body")
logging.getLogger("keyrotor.x").debug("still debug")
"""
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"LOG_LEVEL": "debug", "LOG_FORMAT": "text", "PATH": ""},
        check=True,
        timeout=60,
    )
    assert "DEBUG keyrotor.x: still debug" in run.stderr
    assert "hook-secret-path" not in run.stderr and "kms-plaintext-body" not in run.stderr
