"""The `keyrotor` command: `dev` (everything on one machine), `worker` and `api`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from cli import rest
from core.envelope import MasterKeyring
from core.logs import setup_logging
from core.runtime import exit_process
from core.services import Services
from core.settings import Settings

app = typer.Typer(help="keyrotor: key lifecycle and rotation on Temporal.", no_args_is_help=True)


def main() -> None:
    code: str | int | None = 0
    try:
        app()
    except SystemExit as e:
        code = e.code
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    exit_process(code)


@app.command()
def dev(
    api_port: int = typer.Option(3000, help="port of the REST API"),
    temporal_port: int = typer.Option(7233, help="port of the embedded Temporal server"),
    ui_port: int = typer.Option(8233, help="port of the Temporal Web UI"),
    data_dir: Path = typer.Option(Path(".keyrotor"), help="where dev state is kept"),
) -> None:
    """Run the embedded Temporal dev server, the worker and the API together."""
    from core.runtime import tune_gc
    from worker.dev import run_dev

    setup_logging(default_format="text")  # a terminal
    tune_gc()
    try:
        asyncio.run(run_dev(data_dir, api_port, temporal_port, ui_port))
    except KeyboardInterrupt:
        pass


@app.command()
def worker(
    processes: int = typer.Option(
        None,
        min=1,
        help="worker processes on this machine, each with its own workflow cache and about "
        "one core (KEYROTOR_WORKER_PROCESSES; default 1)",
    ),
) -> None:
    """Run a worker against KEYROTOR_TEMPORAL_ADDRESS and KEYROTOR_DATABASE_URL until SIGINT or
    SIGTERM. With --processes N above 1, run N workers under a supervisor that stops them all
    together (and exits 1) when one of them exits on its own."""
    from core.runtime import WORKER_FULL_COLLECTION_AFTER, tune_gc
    from worker.main import run_worker

    setup_logging()
    services = build_or_exit(Settings())
    count = processes or services.settings.worker_processes
    if count > 1:
        from worker.main import GRACEFUL_SHUTDOWN
        from worker.processes import STOP_MARGIN, supervise, worker_command

        # checked (and migrated) here once, as `api` does; each process builds its own
        services.close()
        stop_timeout = GRACEFUL_SHUTDOWN.total_seconds() + STOP_MARGIN
        sys.exit(supervise([worker_command()] * count, stop_timeout))
    tune_gc(WORKER_FULL_COLLECTION_AFTER)
    try:
        asyncio.run(run_worker(services))
    except KeyboardInterrupt:
        pass
    finally:
        services.close()


@app.command()
def api(
    host: str = typer.Option(None, help="bind address (KEYROTOR_API_HOST)"),
    port: int = typer.Option(None, help="port (KEYROTOR_API_PORT)"),
    workers: int = typer.Option(
        None, min=1, help="processes serving the port (KEYROTOR_API_WORKERS; default 1)"
    ),
) -> None:
    """Run the REST API against KEYROTOR_TEMPORAL_ADDRESS and KEYROTOR_DATABASE_URL."""
    import uvicorn

    setup_logging()
    # checked (and migrated) here once, so that a bad setting is one clear line, not a
    # traceback per process; each serving process then builds its own from the environment
    services = build_or_exit(Settings())
    s = services.settings
    services.close()
    uvicorn.run(
        "api.app:from_environment",
        factory=True,
        host=host or s.api_host,
        port=port or s.api_port,
        workers=workers or s.api_workers,
        access_log=s.access_log,
        log_config=None,  # uvicorn's lines go to the root logger, as set up here (LOG_FORMAT)
        log_level=logging.getLogger().level,
    )


def keyring_or_exit(settings: Settings) -> MasterKeyring:
    """The master keyring of KEYROTOR_MASTER_KEY, for the commands that need only it (the
    store, not the services), or exit with what is wrong."""
    from core.envelope import EnvelopeError

    if settings.master_key is None:
        typer.echo(
            "keyrotor: KEYROTOR_MASTER_KEY is not set (`keyrotor dev` keeps the key it"
            " generated in .keyrotor/master.key)",
            err=True,
        )
        sys.exit(2)
    try:
        return MasterKeyring.parse(settings.master_key.get_secret_value())
    except EnvelopeError as e:
        typer.echo(f"keyrotor: KEYROTOR_MASTER_KEY: {e}", err=True)
        sys.exit(2)


def build_or_exit(settings: Settings) -> Services:
    """Build services or exit with the configuration problem (never a traceback)."""
    from core.envelope import EnvelopeError
    from core.policy import PolicyError
    from core.services import ConfigurationError, build_services

    try:
        return build_services(settings)
    except (ConfigurationError, PolicyError, EnvelopeError) as e:
        typer.echo(f"keyrotor: {e}", err=True)
        sys.exit(2)


@app.command()
def backup(
    path: Path = typer.Argument(..., dir_okay=False, help="the file to write (mode 0600)"),
) -> None:
    """Write an encrypted, integrity-checked backup of the whole store (KEYROTOR_DATABASE_URL)
    under a key derived from the current master key. Material stays sealed inside it."""
    import os

    from core.backup import write_backup
    from core.store.db import Store

    settings = Settings()
    keyring = keyring_or_exit(settings)
    store = Store(settings.resolved_database_url())
    try:
        data, summary = write_backup(
            store, keyring, lambda table, n: typer.echo(f"  {table}: {n} rows", err=True)
        )
    finally:
        store.dispose()
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)
    rows = sum(summary.tables.values())
    typer.echo(
        f"backup {path}: {rows} rows in {len(summary.tables)} tables, schema {summary.revision},"
        f" sealed under master key {summary.master_key_id}, {len(data)} bytes"
    )


@app.command()
def restore(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="a `keyrotor backup` file"),
    workflows: bool = typer.Option(
        True, help="then start the lifecycle workflows on KEYROTOR_TEMPORAL_ADDRESS"
    ),
) -> None:
    """Restore a backup into an empty database (KEYROTOR_DATABASE_URL, migrated first), then
    start the workflow of every key, credential and handle family that has not ended, from the
    restored state. Needs the master key the backup was made under in KEYROTOR_MASTER_KEY.
    Checks the whole file before it writes anything."""
    from core.backup import BackupError, restore_backup
    from core.store.db import Store

    settings = Settings()
    keyring = keyring_or_exit(settings)
    store = Store(settings.resolved_database_url())
    try:
        store.migrate()
        summary = restore_backup(
            store,
            keyring,
            path.read_bytes(),
            lambda table, n: typer.echo(f"  {table}: {n} rows", err=True),
        )
    except BackupError as e:
        typer.echo(f"keyrotor: {e}", err=True)
        sys.exit(1)
    finally:
        store.dispose()
    typer.echo(f"restored {path}: {sum(summary.tables.values())} rows, made {summary.created_at}")
    if workflows:
        from core.codec import connect_with
        from worker.restore import restart_workflows

        services = build_or_exit(settings)

        async def start() -> dict[str, int]:
            client = await connect_with(services.settings, keyring)
            return await restart_workflows(
                client, services, lambda line: typer.echo(line, err=True)
            )

        try:
            started = asyncio.run(start())
        finally:
            services.close()
        counts = (
            ", ".join(f"{n} {kind}{'s' * (n != 1)}" for kind, n in sorted(started.items()))
            or "none"
        )
        typer.echo(f"started the workflows of what has not ended: {counts}")


audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify-export")
def verify_export(
    path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="a JSON Lines or CSV export"
    ),
    head: str = typer.Option(
        None,
        help="the chain head's hash the export must end at (default: the one a JSON Lines "
        "export names; for CSV, the X-Keyrotor-Audit-Head-Hash header of the export)",
    ),
) -> None:
    """Check an export of `GET /audit/export` with no database: every hash, every link, no
    gap, and that it ends at the head. Exit 0 if it verifies, 1 with the first problem if not."""
    import csv
    import json

    from core.audit import EXPORT_FORMAT, verify_export

    with path.open(newline="", encoding="utf-8") as f:
        first = f.readline()
        if first.startswith("{"):
            header = json.loads(first)
            if header.get("format") != EXPORT_FORMAT:
                typer.echo(f"keyrotor: {path} is not a keyrotor audit export", err=True)
                sys.exit(2)
            named = header["head"]["hash"]
            if head is not None and head != named:
                typer.echo(f"not verified: the export names head {named}, not {head}")
                sys.exit(1)
            report = verify_export((json.loads(line) for line in f if line.strip()), named)
        else:
            f.seek(0)
            report = verify_export(csv.DictReader(f), head)
    if not report.ok:
        typer.echo(f"not verified: {report.problem} ({report.checked} records verified before it)")
        sys.exit(1)
    anchored = "the chain's start" if report.first_seq == 1 else f"record {report.first_seq}"
    typer.echo(
        f"verified: {report.checked} records, {anchored} to record {report.last_seq},"
        f" head {report.last_hash}" + ("" if head or first.startswith("{") else " (no head given)")
    )


bulk_app = typer.Typer(
    help="Bulk operations: rotate or revoke everything matching a filter.", no_args_is_help=True
)
app.add_typer(bulk_app, name="bulk")
URL_OPTION = typer.Option(
    "http://localhost:3000", "--api-url", envvar="KEYROTOR_API_URL", help="the keyrotor API"
)
KEY_OPTION = typer.Option(
    None, help="an admin key (default: KEYROTOR_ADMIN_KEY, or keyrotor dev's .keyrotor/admin.key)"
)


@bulk_app.command("start")
def bulk_start(
    action: str = typer.Argument(..., help="rotate or revoke"),
    kind: str = typer.Option("key", help="key, credential or handle"),
    reason: str = typer.Option(..., help="why (audited on every object)"),
    owner: str = typer.Option(None),
    type_: str = typer.Option(None, "--type", help="key type (keys) or handle type (handles)"),
    environment: str = typer.Option(None),
    provider: str = typer.Option(None, help="keys only"),
    algorithm: str = typer.Option(None, help="keys only"),
    rate: int = typer.Option(10, help="objects a second"),
    wait: bool = typer.Option(True, help="show progress until it ends"),
    json_out: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    api_url: str = URL_OPTION,
    admin_key: str = KEY_OPTION,
) -> None:
    """Start a bulk operation and show its progress."""
    from cli.client import Client

    client = Client(api_url, admin_key)
    filters = {
        "owner": owner,
        "type": type_,
        "environment": environment,
        "provider": provider,
        "algorithm": algorithm,
    }
    body = client.call(
        "POST",
        "/bulk",
        json={
            "action": action,
            "kind": kind,
            "filter": {k: v for k, v in filters.items() if v is not None},
            "reason": reason,
            "ratePerSecond": rate,
        },
    )
    operation = body["operation"]
    if wait:
        operation = _follow(client, operation, quiet=json_out)
    _show(operation, json_out)
    if operation["status"] == "running" or operation["failed"] == 0:
        return
    sys.exit(1)


@bulk_app.command("status")
def bulk_status(
    operation_id: str,
    wait: bool = typer.Option(False, help="show progress until it ends"),
    json_out: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    api_url: str = URL_OPTION,
    admin_key: str = KEY_OPTION,
) -> None:
    """Show a bulk operation (and, with --wait, follow it to its end)."""
    from cli.client import Client

    client = Client(api_url, admin_key)
    operation = client.call("GET", f"/bulk/{operation_id}")["operation"]
    if wait:
        operation = _follow(client, operation, quiet=json_out)
    _show(operation, json_out)


@bulk_app.command("cancel")
def bulk_cancel(operation_id: str, api_url: str = URL_OPTION, admin_key: str = KEY_OPTION) -> None:
    """Stop a running bulk operation after the object in hand."""
    from cli.client import Client

    Client(api_url, admin_key).call("DELETE", f"/bulk/{operation_id}")
    typer.echo(f"cancelling {operation_id}")


def _follow(client: Any, operation: dict[str, Any], quiet: bool) -> dict[str, Any]:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=quiet,
    ) as bar:
        task = bar.add_task(f"{operation['action']} {operation['kind']}s", total=operation["total"])
        while True:
            bar.update(task, completed=operation["done"] + operation["failed"])
            if operation["status"] != "running":
                return operation
            time.sleep(0.5)
            operation = client.call("GET", f"/bulk/{operation['id']}")["operation"]


def _show(operation: dict[str, Any], json_out: bool) -> None:
    import json

    if json_out:
        typer.echo(json.dumps(operation, indent=2))
        return
    typer.echo(
        f"{operation['id']} {operation['status']}: {operation['done']} done, "
        f"{operation['failed']} failed of {operation['total']} ({operation['action']} "
        f"{operation['kind']}s, filter {operation['filter']})"
    )


credentials_app = typer.Typer(help="Credentials over REST.", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")


@credentials_app.command(
    "import", help="Bring existing API keys in from a JSON-lines file of their SHA-256 hashes."
)
def credentials_import(
    file: Path = typer.Argument(
        ...,
        help='JSON lines, one existing API key each: {"sha256": "<its SHA-256, hex or base64>", '
        '"name": ..., "owner": ..., "scopes": [...], ...} (the body of POST /credentials/import)',
    ),
    api_url: str = URL_OPTION,
    admin_key: str = KEY_OPTION,
) -> None:
    """Bring existing API keys in by the SHA-256 hashes their old system stored. Prints one JSON
    line per input line (its new credential id, or why not); a key imported already is
    skipped, so a file can be run again after a failure."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from cli.client import Client

    client = Client(api_url, admin_key)
    lines = [(n, line) for n, line in enumerate(file.read_text().splitlines(), 1) if line.strip()]
    tally = {"imported": 0, "skipped": 0, "failed": 0}
    with Progress("imported", BarColumn(), MofNCompleteColumn(), console=_stderr_console()) as bar:
        task = bar.add_task("", total=len(lines))
        for n, line in lines:
            outcome: dict[str, Any] = {"line": n}
            body: dict[str, Any] = {}
            try:
                request = json.loads(line)
            except ValueError:
                request, error = None, "INVALID_REQUEST: not JSON"
            if request is not None:
                body, error = client.attempt("POST", "/credentials/import", json=request)
            if error is None:
                outcome |= {"status": "imported", "credentialId": body["credential"]["id"]}
            elif error.startswith("ALREADY_IMPORTED"):
                outcome |= {"status": "skipped", "error": error}
            else:
                outcome |= {"status": "failed", "error": error}
            tally[outcome["status"]] += 1
            typer.echo(json.dumps(outcome))
            bar.advance(task)
    typer.echo(", ".join(f"{v} {k}" for k, v in tally.items()), err=True)
    if tally["failed"]:
        sys.exit(1)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


rest.register(app, {"audit": audit_app, "bulk": bulk_app, "credentials": credentials_app})
