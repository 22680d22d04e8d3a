"""Fixed-window rate limits, per process."""

from __future__ import annotations

import threading


class RateLimiter:
    """Fixed windows per client (a credential, a handle value, an admin key), in this process:
    limits shared by several API processes need a shared store."""

    PRUNE_AT = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, client: str, limit: int, window: float, now: float) -> float | None:
        """None when allowed, else the seconds until the window resets."""
        with self._lock:
            if len(self._windows) >= self.PRUNE_AT:  # handles add a key per value
                self._windows = {
                    k: (start, n) for k, (start, n) in self._windows.items() if now - start < 86400
                }
            start, count = self._windows.get(client, (now, 0))
            if now - start >= window:
                start, count = now, 0
            if count >= limit:
                return start + window - now
            self._windows[client] = (start, count + 1)
            return None
