"""The REST operations as `keyrotor` subcommands: `keyrotor keys list`, `keyrotor credentials
create --owner team --scope read`, `keyrotor webhooks replay whk_... 42`, ...

Each operation is one row of OPERATIONS (group, name, method, path, the path's arguments, the
fields it sends); the commands are built from that table. Lists print as tables, one object as
its fields, anything with `--json` as the API's JSON.
"""

from __future__ import annotations

import base64
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from cli.client import Client


@dataclass(frozen=True)
class Field:
    """One option: `--flag`, sent as `wire`. kind: str, int, bool, json, list (repeatable),
    b64 (text sent base64-encoded), file (a file's text), binfile (a file's bytes, base64)."""

    flag: str
    wire: str
    kind: str = "str"
    help: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    group: str
    name: str
    method: str
    path: str  # with {arg} for each of `args`
    help: str
    args: tuple[str, ...] = ()
    fields: tuple[Field, ...] = ()
    list_key: str | None = None  # the answer's list, printed as a table of `columns`
    columns: tuple[str, ...] = ()


def F(
    flag: str, wire: str | None = None, kind: str = "str", help: str = "", required: bool = False
) -> Field:
    return Field(flag, wire or flag, kind, help, required)


REASON = F("reason")
USER = F("user-id", "userId", help="who (audited; default: the admin key's name)")
# what creating and importing a key share
NEW_KEY = (
    F("name"),
    F("owner"),
    F("algorithm"),
    F("environment"),
    F("expires-at", "expiresAt"),
    F("metadata", kind="json"),
    USER,
)
LIST = (F("limit", kind="int"), F("cursor"))
KEY_COLUMNS = (
    "id",
    "type",
    "algorithm",
    "provider",
    "environment",
    "owner",
    "status",
    "version",
    "nextRotationAt",
)
OPERATIONS: tuple[Operation, ...] = (
    # keys
    Operation(
        "keys",
        "list",
        "GET",
        "/keys",
        "Keys, newest first.",
        (),
        (F("type"), F("status"), F("environment"), F("owner"), *LIST),
        "keys",
        KEY_COLUMNS,
    ),
    Operation("keys", "get", "GET", "/keys/{key}", "One key and its versions.", ("key",)),
    Operation("keys", "statistics", "GET", "/keys/statistics", "Keys by type and status."),
    Operation(
        "keys",
        "create",
        "POST",
        "/keys/generate",
        "Create a key (its workflow makes version 1).",
        (),
        (F("type", required=True), F("provider"), *NEW_KEY),
    ),
    Operation(
        "keys",
        "import",
        "POST",
        "/keys/import",
        "Bring a key in (BYOK) from a file: the raw key, or PKCS#8 DER.",
        (),
        (
            F("type", required=True),
            # a file, never an argument: arguments show in process lists and shell history
            F("material-file", "material", "binfile", required=True),
            F("provider"),
            *NEW_KEY,
        ),
    ),
    Operation(
        "keys",
        "rotate",
        "POST",
        "/keys/{key}/rotate",
        "Rotate now (reason compromise: no grace).",
        ("key",),
        (F("reason"), F("grace-period", "gracePeriod", help="ISO 8601"), USER),
    ),
    Operation(
        "keys",
        "revoke",
        "DELETE",
        "/keys/{key}",
        "Revoke: every version compromised at once.",
        ("key",),
        (REASON, USER),
    ),
    Operation(
        "keys",
        "suspend",
        "POST",
        "/keys/{key}/suspend",
        "Suspend until resumed.",
        ("key",),
        (REASON, USER),
    ),
    Operation(
        "keys",
        "resume",
        "POST",
        "/keys/{key}/resume",
        "Resume a suspended key.",
        ("key",),
        (REASON, USER),
    ),
    Operation(
        "keys",
        "acknowledge",
        "POST",
        "/keys/{key}/warnings/acknowledge",
        "Acknowledge its open warnings.",
        ("key",),
        (F("target"), REASON, USER),
    ),
    Operation(
        "keys",
        "encrypt",
        "POST",
        "/keys/{key}/encrypt",
        "Encrypt text with the active version.",
        ("key",),
        (F("text", "plaintext", "b64", required=True), F("aad", kind="b64")),
    ),
    Operation(
        "keys",
        "decrypt",
        "POST",
        "/keys/{key}/decrypt",
        "Decrypt a kr: ciphertext (plaintext is base64).",
        ("key",),
        (F("ciphertext", required=True), F("aad", kind="b64")),
    ),
    Operation(
        "keys",
        "rewrap",
        "POST",
        "/keys/{key}/rewrap",
        "Re-encrypt under the active version.",
        ("key",),
        (F("ciphertext", required=True), F("aad", kind="b64")),
    ),
    Operation(
        "keys",
        "sign",
        "POST",
        "/keys/{key}/sign",
        "Sign text with the active version.",
        ("key",),
        (F("text", "message", "b64", required=True),),
    ),
    Operation(
        "keys",
        "verify",
        "POST",
        "/keys/{key}/verify",
        "Verify a signature over text.",
        ("key",),
        (F("text", "message", "b64", required=True), F("signature", required=True)),
    ),
    Operation(
        "keys",
        "wrap",
        "POST",
        "/keys/{key}/wrap",
        "Wrap a data key (base64).",
        ("key",),
        (F("data-key", "key", required=True), F("aad", kind="b64")),
    ),
    Operation(
        "keys",
        "unwrap",
        "POST",
        "/keys/{key}/unwrap",
        "Unwrap a krw: token.",
        ("key",),
        (F("wrapped", required=True), F("aad", kind="b64")),
    ),
    Operation(
        "keys",
        "derive",
        "POST",
        "/keys/{key}/derive",
        "Derive bytes (HKDF) for a context.",
        ("key",),
        (
            F("context", kind="b64", required=True),
            F("length", kind="int", required=True),
            F("version", kind="int"),
        ),
    ),
    Operation(
        "keys",
        "public-key",
        "GET",
        "/keys/{key}/public-key",
        "The public key (PEM, JWK, raw).",
        ("key",),
        (F("version", kind="int"),),
    ),
    Operation(
        "keys",
        "jwks",
        "GET",
        "/keys/{key}/jwks",
        "The JWKS of the active and grace versions.",
        ("key",),
    ),
    # credentials
    Operation(
        "credentials",
        "list",
        "GET",
        "/credentials",
        "API credentials, newest first.",
        (),
        (F("owner"), F("status"), *LIST),
        "credentials",
        ("id", "name", "owner", "environment", "status", "version", "expiresAt"),
    ),
    Operation(
        "credentials",
        "get",
        "GET",
        "/credentials/{credential}",
        "One credential (no secret).",
        ("credential",),
    ),
    Operation(
        "credentials",
        "create",
        "POST",
        "/credentials",
        "Create one; the secret is shown once.",
        (),
        (
            F("name"),
            F("owner"),
            F("scope", "scopes", "list"),
            F("expires-at", "expiresAt"),
            F("environment"),
            F("usage-limit", "usageLimit", "int"),
            F("rate-limit", "rateLimit", "json", help='{"limit": n, "duration": "PT1M"}'),
            F("scheduled-rotation", "scheduledRotation", "bool"),
            F("metadata", kind="json"),
            USER,
        ),
    ),
    Operation(
        "credentials",
        "rotate",
        "POST",
        "/credentials/{credential}/rotate",
        "Reroll: a new secret, the old one in grace.",
        ("credential",),
        (F("grace-period", "gracePeriod"), F("reason"), USER),
    ),
    Operation(
        "credentials",
        "reveal",
        "POST",
        "/credentials/{credential}/reveal",
        "Fetch a rotated secret once.",
        ("credential",),
    ),
    Operation(
        "credentials",
        "revoke",
        "DELETE",
        "/credentials/{credential}",
        "Revoke: refused everywhere once this answers.",
        ("credential",),
        (REASON, USER),
    ),
    Operation(
        "credentials",
        "suspend",
        "POST",
        "/credentials/{credential}/suspend",
        "Suspend until resumed.",
        ("credential",),
        (REASON, USER),
    ),
    Operation(
        "credentials",
        "resume",
        "POST",
        "/credentials/{credential}/resume",
        "Resume.",
        ("credential",),
        (REASON, USER),
    ),
    Operation(
        "credentials",
        "acknowledge",
        "POST",
        "/credentials/{credential}/warnings/acknowledge",
        "Acknowledge its open warnings.",
        ("credential",),
        (F("target"), REASON, USER),
    ),
    Operation(
        "credentials",
        "verify",
        "POST",
        "/credentials/verify",
        "Verify a key (and required scopes).",
        (),
        (F("key", required=True), F("scope", "scopes", "list")),
    ),
    # handles
    Operation(
        "handles",
        "list",
        "GET",
        "/handles",
        "Handle families, newest first.",
        (),
        (F("type"), F("status"), *LIST),
        "handles",
        ("familyId", "type", "userId", "status", "version", "expiresAt"),
    ),
    Operation("handles", "get", "GET", "/handles/{family}", "One handle family.", ("family",)),
    Operation(
        "handles",
        "statistics",
        "GET",
        "/handles/statistics",
        "Families, validations and anomalies.",
    ),
    Operation(
        "handles",
        "generate",
        "POST",
        "/handles/generate",
        "Issue a handle; its value is shown once.",
        (),
        (
            F("type", required=True),
            F("user-id", "userId", required=True),
            F("context", kind="json"),
            F("environment"),
        ),
    ),
    Operation(
        "handles",
        "validate",
        "POST",
        "/handles/validate",
        "Validate a handle value.",
        (),
        (
            F("handle", "handleId", required=True, help="the value (krh_...)"),
            F("user-id", "userId"),
            F("context", kind="json"),
        ),
    ),
    Operation(
        "handles",
        "rotate",
        "POST",
        "/handles/{family}/rotate",
        "Exchange the current value for the next.",
        ("family",),
        (F("handle"),),
    ),
    Operation(
        "handles",
        "revoke",
        "DELETE",
        "/handles/{family}",
        "Revoke the family.",
        ("family",),
        (REASON, USER),
    ),
    Operation(
        "handles",
        "suspend",
        "POST",
        "/handles/{family}/suspend",
        "Suspend the family.",
        ("family",),
        (REASON, USER),
    ),
    Operation(
        "handles",
        "resume",
        "POST",
        "/handles/{family}/resume",
        "Resume the family.",
        ("family",),
        (REASON, USER),
    ),
    # the trail, events, warnings
    Operation(
        "audit",
        "list",
        "GET",
        "/audit",
        "Audit records, newest first.",
        (),
        (
            F("object-id", "objectId"),
            F("object-kind", "objectKind"),
            F("actor"),
            F("action"),
            F("since"),
            F("until"),
            *LIST,
        ),
        "records",
        ("seq", "at", "actor", "action", "objectKind", "objectId", "version", "reason"),
    ),
    Operation(
        "audit",
        "verify",
        "GET",
        "/audit/verify",
        "Walk the hash chain; names the first broken record.",
    ),
    Operation(
        "events",
        "list",
        "GET",
        "/events",
        "Events in commit order.",
        (),
        (F("after", kind="int"), F("types"), F("limit", kind="int")),
        "events",
        ("id", "at", "type", "objectKind", "objectId"),
    ),
    Operation(
        "warnings",
        "list",
        "GET",
        "/warnings",
        "Staged warnings, newest first.",
        (),
        (
            F("state"),
            F("severity"),
            F("target"),
            F("object-id", "objectId"),
            F("environment"),
            F("limit", kind="int"),
        ),
        "warnings",
        (
            "id",
            "objectKind",
            "objectId",
            "target",
            "stage",
            "stages",
            "severity",
            "deadline",
            "acknowledgedBy",
            "closedAt",
        ),
    ),
    # webhooks
    Operation(
        "webhooks",
        "list",
        "GET",
        "/webhooks",
        "Webhook subscriptions.",
        (),
        (),
        "webhooks",
        ("id", "url", "eventTypes", "minSeverity", "status"),
    ),
    Operation("webhooks", "get", "GET", "/webhooks/{webhook}", "One webhook.", ("webhook",)),
    Operation(
        "webhooks",
        "create",
        "POST",
        "/webhooks",
        "Subscribe a URL; the signing secret is shown once.",
        (),
        (
            F("url", required=True),
            F("description"),
            F("event-type", "eventTypes", "list"),
            F("min-severity", "minSeverity"),
            USER,
        ),
    ),
    Operation(
        "webhooks", "delete", "DELETE", "/webhooks/{webhook}", "Stop sending to it.", ("webhook",)
    ),
    Operation(
        "webhooks",
        "deliveries",
        "GET",
        "/webhooks/{webhook}/deliveries",
        "Its deliveries, newest first.",
        ("webhook",),
        (F("status"), F("limit", kind="int")),
        "deliveries",
        ("id", "eventType", "status", "attempts", "lastStatus", "lastError", "deliveredAt"),
    ),
    Operation(
        "webhooks",
        "replay",
        "POST",
        "/webhooks/{webhook}/deliveries/{delivery}/replay",
        "Send a delivery again.",
        ("webhook", "delivery"),
    ),
    # bulk (start, status and cancel with a progress bar are in cli.main)
    Operation(
        "bulk",
        "list",
        "GET",
        "/bulk",
        "Bulk operations, newest first.",
        (),
        (F("limit", kind="int"),),
        "operations",
        ("id", "action", "kind", "status", "done", "failed", "total", "createdAt"),
    ),
    # the master key
    Operation(
        "master-key",
        "status",
        "GET",
        "/master-key",
        "The master keys (current, previous, retired), what each sealed, and the rotation.",
    ),
    Operation(
        "master-key",
        "rotate",
        "POST",
        "/master-key/rotate",
        "Re-seal everything under the current master key, then retire the older ones.",
        (),
        (F("reason", required=True), F("batch-size", "batchSize", "int"), USER),
    ),
    Operation(
        "peppers",
        "status",
        "GET",
        "/peppers",
        "The credential peppers the stored hashes name, and the re-hash job.",
    ),
    Operation(
        "peppers",
        "rehash",
        "POST",
        "/peppers/rehash",
        "Re-hash every stored hash not under the current pepper, without the secrets.",
        (),
        (F("reason", required=True), F("batch-size", "batchSize", "int"), USER),
    ),
    # the cleanup
    Operation(
        "cleanup",
        "status",
        "GET",
        "/cleanup",
        "The cleanup's policy, what it would change now, its schedule and its last run.",
    ),
    Operation("cleanup", "run", "POST", "/cleanup/run", "Run the cleanup now (GET it to follow)."),
    # the policy, health
    Operation(
        "config",
        "get",
        "GET",
        "/config",
        "The policy in force (or --version); --json for the TOML.",
        (),
        (F("version", kind="int"),),
    ),
    Operation(
        "config",
        "put",
        "PUT",
        "/config",
        "Make a policy file the policy in force.",
        (),
        (F("file", "toml", "file", required=True), F("reason", required=True), USER),
    ),
    Operation("health", "show", "GET", "/health", "The service's and each provider's health."),
)


def _value(field: Field, raw: Any) -> Any:
    if field.kind == "b64":
        return base64.b64encode(str(raw).encode()).decode()
    if field.kind == "json":
        try:
            return json.loads(raw)
        except ValueError:
            raise typer.BadParameter(f"--{field.flag} must be JSON") from None
    if field.kind == "file":
        return Path(raw).read_text()
    if field.kind == "binfile":
        return base64.b64encode(Path(raw).read_bytes()).decode()
    if field.kind == "list":
        return list(raw)
    return raw


def _cell(item: dict[str, Any], column: str) -> str:
    value = item.get(column)
    if value is None:
        return ""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def show(op: Operation, body: dict[str, Any], as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    # piped: no terminal width to fit, so ids are never cut short
    console = Console(width=None if sys.stdout.isatty() else 400)
    if op.list_key is not None:
        table = Table(*op.columns, show_lines=False)
        for item in body.get(op.list_key, []):
            table.add_row(*(_cell(item, c) for c in op.columns))
        console.print(table)
        cursor = (body.get("pagination") or {}).get("nextCursor")
        if cursor:
            typer.echo(f"more: --cursor {cursor}")
        return

    def rows(title: str, items: list[dict[str, Any]]) -> None:  # a list of objects: a table
        table = Table(*items[0], title=title)
        for item in items:
            table.add_row(*(_cell(item, c) for c in items[0]))
        console.print(table)

    for name, value in body.items():
        if isinstance(value, dict):
            table = Table("field", "value", title=name)
            nested = {}
            for k, v in value.items():
                if isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
                    nested[k] = v  # e.g. a key's versions
                else:
                    table.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
            console.print(table)
            for k, items in nested.items():
                rows(f"{name} {k}", items)
        elif isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
            rows(name, value)
        else:
            typer.echo(f"{name}: {json.dumps(value) if isinstance(value, list) else value}")


def command(op: Operation) -> Callable[..., None]:
    """A function typer turns into the operation's command: its signature (built here) is the
    command's arguments and options."""
    params = [
        inspect.Parameter(
            a, inspect.Parameter.KEYWORD_ONLY, default=typer.Argument(...), annotation=str
        )
        for a in op.args
    ]
    for f in op.fields:
        kind = {"int": int | None, "bool": bool, "list": list[str] | None}.get(f.kind, str | None)
        default = typer.Option(
            False if f.kind == "bool" else (... if f.required else None),
            f"--{f.flag}",
            help=f.help or None,
        )
        params.append(
            inspect.Parameter(
                f.flag.replace("-", "_"),
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=kind,
            )
        )
    params += [
        inspect.Parameter(
            "as_json",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--json", help="print the answer as JSON"),
            annotation=bool,
        ),
        inspect.Parameter(
            "api_url",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option("http://localhost:3000", "--api-url", envvar="KEYROTOR_API_URL"),
            annotation=str,
        ),
        inspect.Parameter(
            "admin_key",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, help="default: KEYROTOR_ADMIN_KEY"),
            annotation=str | None,
        ),
    ]

    def run(**kw: Any) -> None:
        client = Client(kw.pop("api_url"), kw.pop("admin_key"))
        as_json = kw.pop("as_json")
        path = op.path.format(**{a: kw.pop(a) for a in op.args})
        values = {}
        for f in op.fields:
            raw = kw.get(f.flag.replace("-", "_"))
            if raw is None or raw == [] or (f.kind == "bool" and not raw):
                continue
            values[f.wire] = _value(f, raw)
        if op.method == "GET":
            body = client.call("GET", path, params=values)
        else:
            body = client.call(op.method, path, json=values)
        show(op, body, as_json)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = op.help
    return run


def register(app: typer.Typer, existing: dict[str, typer.Typer]) -> None:
    """Add every operation to `app`: into the sub-app of its group (`existing` ones included)."""
    apps = dict(existing)
    for op in OPERATIONS:
        sub = apps.get(op.group)
        if sub is None:
            sub = apps[op.group] = typer.Typer(
                help=f"{op.group.capitalize()} over REST.", no_args_is_help=True
            )
            app.add_typer(sub, name=op.group)
        sub.command(op.name, help=op.help)(command(op))

    @app.command("metrics")
    def metrics(
        api_url: str = typer.Option("http://localhost:3000", envvar="KEYROTOR_API_URL"),
        admin_key: str | None = typer.Option(None, help="default: KEYROTOR_ADMIN_KEY"),
    ) -> None:
        """GET /metrics: Prometheus text."""
        sys.stdout.write(Client(api_url, admin_key).text("/metrics"))
