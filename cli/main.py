"""The `keyrotor` command: `dev` (everything on one machine), `worker` and `api`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import typer

from core.services import Services
from core.settings import Settings, setup_logging

app = typer.Typer(help="keyrotor: key lifecycle and rotation on Temporal.", no_args_is_help=True)


def main() -> None:
    app()


@app.command()
def dev(
    api_port: int = typer.Option(3000, help="port of the REST API"),
    temporal_port: int = typer.Option(7233, help="port of the embedded Temporal server"),
    ui_port: int = typer.Option(8233, help="port of the Temporal Web UI"),
    data_dir: Path = typer.Option(Path(".keyrotor"), help="where dev state is kept"),
) -> None:
    """Run the embedded Temporal dev server, the worker and the API together."""
    from worker.dev import run_dev

    setup_logging()
    try:
        asyncio.run(run_dev(data_dir, api_port, temporal_port, ui_port))
    except KeyboardInterrupt:
        pass


@app.command()
def worker() -> None:
    """Run a worker against KEYROTOR_TEMPORAL_ADDRESS and KEYROTOR_DATABASE_URL."""
    from worker.main import run_worker

    setup_logging()
    services = build_or_exit(Settings())
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
        log_level=logging.getLogger().level,
    )


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
