"""The REST client of the `keyrotor` command's operator subcommands (`keyrotor bulk ...`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import typer

API = "/api/key-management"


def admin_key(given: str | None) -> str:
    """--admin-key, else KEYROTOR_ADMIN_KEY, else the key `keyrotor dev` made here."""
    key = given or os.environ.get("KEYROTOR_ADMIN_KEY")
    dev_key = Path(".keyrotor") / "admin.key"
    if not key and dev_key.exists():
        key = dev_key.read_text().strip()
    if not key:
        typer.echo("keyrotor: give --admin-key or set KEYROTOR_ADMIN_KEY", err=True)
        sys.exit(2)
    return key


class Client:
    def __init__(self, url: str, key: str | None) -> None:
        self._root = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self._root + API,
            headers={"Authorization": f"Bearer {admin_key(key)}"},
            timeout=60,
        )

    def text(self, path: str) -> str:
        """A page outside the REST prefix (/metrics), as text."""
        return self._send("GET", self._root + path).text

    def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """The answer's JSON; exits 1 with the API's error message on a 4xx or 5xx."""
        body: dict[str, Any] = self._send(method, path, **kw).json()
        return body

    def attempt(self, method: str, path: str, **kw: Any) -> tuple[dict[str, Any], str | None]:
        """(the answer's JSON, None), or on a 4xx or 5xx ({}, "CODE: message")."""
        r = self._request(method, path, **kw)
        if r.status_code >= 400:
            return {}, _error(r)
        body: dict[str, Any] = r.json()
        return body, None

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._request(method, path, **kw)
        if r.status_code >= 400:
            typer.echo(f"keyrotor: {_error(r)}", err=True)
            sys.exit(1)
        return r

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            typer.echo(f"keyrotor: cannot reach the API: {type(e).__name__}", err=True)
            sys.exit(1)


def _error(r: httpx.Response) -> str:
    try:
        error = r.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}"
