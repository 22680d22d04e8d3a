"""The `keyrotor` command: `dev` (everything on one machine), `worker` and `api`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import typer

from core.services import Services
from core.settings import Settings

app = typer.Typer(help="keyrotor: key lifecycle and rotation on Temporal.", no_args_is_help=True)


def main() -> None:
    app()


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # a dozen lines per start


@app.command()
def dev(
    api_port: int = typer.Option(3000, help="port of the REST API"),
    temporal_port: int = typer.Option(7233, help="port of the embedded Temporal server"),
    ui_port: int = typer.Option(8233, help="port of the Temporal Web UI"),
    data_dir: Path = typer.Option(Path(".keyrotor"), help="where dev state is kept"),
) -> None:
    """Run the embedded Temporal dev server, the worker and the API together."""
    from worker.dev import run_dev

    _setup_logging()
    try:
        asyncio.run(run_dev(data_dir, api_port, temporal_port, ui_port))
    except KeyboardInterrupt:
        pass


@app.command()
def worker() -> None:
    """Run a worker against KEYROTOR_TEMPORAL_ADDRESS and KEYROTOR_DATABASE_URL."""
    from worker.main import run_worker

    _setup_logging()
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
) -> None:
    """Run the REST API against KEYROTOR_TEMPORAL_ADDRESS and KEYROTOR_DATABASE_URL."""
    import uvicorn

    from api.app import create_app

    _setup_logging()
    services = build_or_exit(Settings())
    s = services.settings
    try:
        uvicorn.run(create_app(services), host=host or s.api_host, port=port or s.api_port)
    finally:
        services.close()


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
