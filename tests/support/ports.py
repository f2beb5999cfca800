"""Ports for processes a test or bench starts and restarts on the same port.

A port picked by binding to port 0 lies in the kernel's ephemeral range: between the moment it
is released and the moment the child process binds it, any outgoing connection (a client of the
API server, a database, another test) may take it as its local port, and the child fails with
"address already in use". That happened to the replicas test under load (2026-12-02). Ports
below the ephemeral range are never handed out to outgoing connections, only to listeners that
ask for them.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Linux's default ``net.ipv4.ip_local_port_range``.
_DEFAULT_EPHEMERAL = (32768, 60999)
#: Lowest port handed out (above well-known and most registered services' ports).
_LOWEST = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range when there is room."""
    low, _ = _ephemeral_range()
    if low - _LOWEST >= 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST, low)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:  # no room below the ephemeral range: let the kernel pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
