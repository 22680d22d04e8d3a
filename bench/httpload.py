"""A minimal HTTP/1.1 load generator for the benchmarks: keep-alive connections, pre-built
requests, raw asyncio streams. It costs the driving process little CPU, so on a small machine
the numbers measure the server rather than the client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path


def request_bytes(
    method: str,
    path: str,
    bearer: str | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """One complete request (JSON body when `body` is not None; `headers` added as given)."""
    head = [f"{method} {path} HTTP/1.1", "Host: bench"]
    data = b""
    if bearer:
        head.append(f"Authorization: Bearer {bearer}")
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        data = json.dumps(body).encode()
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class Connection:
    """One keep-alive connection; `send` answers (status, body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        chunked = False
        for line in head.split(b"\r\n"):
            lower = line.lower()
            if lower.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
                chunked = True
        if chunked:  # Go's net/http chunks answers it did not buffer whole (> 2 KiB)
            return int(head[9:12]), await self._chunks()
        body = await self.reader.readexactly(length)
        return int(head[9:12]), body

    async def _chunks(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until something accepts connections on `port` (a minute at most); fails if `process`
    exits first."""
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after a minute")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process `pid` and its live
    descendants (`keyrotor api --workers N` serves from child processes); 0 once gone."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                pass  # exited meanwhile
    tree, found = {pid}, True
    while found:
        found = False
        for child, fields in stats.items():
            if child not in tree and int(fields[1]) in tree:
                tree.add(child)
                found = True
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")
