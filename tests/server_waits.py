"""Waiting on a running QwenServer, shared by the server and reliability tests."""

from __future__ import annotations

import time


def wait_idle(server, timeout: float = 30.0) -> dict:
    """The server's stats once nothing runs or waits; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.stats()
        if stats["requests_running"] == stats["requests_waiting"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"server not idle: {server.stats()}")
