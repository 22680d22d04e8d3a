"""Logging: `LOG_LEVEL`, `LOG_FORMAT` (`json` or `text`) and the request id of each log line.

JSON lines carry `time`, `level`, `logger`, `message`, the `requestId` of the API request being
served (if any), the Temporal workflow or activity a worker line is about, and `error` (the
exception's type) when one is attached. Tracebacks are left out of JSON lines: an exception's
text can hold what a log must not (a provider's answer, a statement's parameters).
"""

from __future__ import annotations

import json
import logging
import os
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# the id of the API request this task is serving ("" outside a request)
request_id: ContextVar[str] = ContextVar("request_id", default="")

_TEMPORAL_CONTEXT = ("temporal_workflow", "temporal_activity")


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (`record.request_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            line["requestId"] = rid
        for name in _TEMPORAL_CONTEXT:
            context = getattr(record, name, None)
            if isinstance(context, dict):
                line[name.removeprefix("temporal_")] = {
                    k: v for k, v in context.items() if isinstance(v, str | int | float | bool)
                }
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False)


QUIET_LIBRARIES = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "azure", "hvac")


def setup_logging(default_format: str = "json") -> None:
    """Log at `LOG_LEVEL` (default INFO) to stderr, as `LOG_FORMAT` says (`json` or `text`;
    default `default_format`); once per process."""
    root = logging.getLogger()
    if any(getattr(h, "keyrotor", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.keyrotor = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    if os.environ.get("LOG_FORMAT", default_format).lower() == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    if root.level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # a dozen lines per start
    # Whatever LOG_LEVEL says: these log what keyrotor sends and receives. httpx logs each
    # webhook's full URL (for Slack and the like, a bearer secret) at INFO; botocore logs KMS
    # request and response bodies (plaintext, data keys) at DEBUG.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
