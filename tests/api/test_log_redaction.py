"""Access logs print request paths; values never belong in one, but a client may put one there
(a 404 for `/handles/<value>/rotate`): the log filter installed by the app replaces credential
and handle values."""

from __future__ import annotations

import logging

import pytest

from api.app import RedactSecrets, install_log_redaction

HANDLE = "krh_dev_abcdefghijklmnop_" + "S3cr3t-_" * 6 + "Ab12Cd"
CREDENTIAL = "krc_prod-eu_qrstuvwxyz234567_" + "Z" * 43 + "000000"


def test_uvicorn_access_lines_lose_the_values(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    install_log_redaction()  # idempotent
    access = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, RedactSecrets) for f in access.filters) == 1
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "POST",
            f"/api/key-management/handles/{HANDLE}/rotate",
            "1.1",
            200,
        )
        access.info("presented %s", CREDENTIAL)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        '127.0.0.1:5000 - "POST /api/key-management/handles/krh_<redacted>/rotate HTTP/1.1" 200',
        "presented krc_<redacted>",
    ]


def test_other_messages_are_untouched() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, "GET %s", ("/livez",), None)
    assert RedactSecrets().filter(record) is True
    assert (record.msg, record.args) == ("GET %s", ("/livez",))
