"""A hand-written sd_notify client (the protocol is one datagram; see sd_notify(3)).

Why not a library: PyPI `sdnotify` swallows every error silently and `systemd-python` needs
libsystemd headers to build. Failures here are logged at debug level and never fatal: a daemon
started outside systemd (no NOTIFY_SOCKET) must behave exactly the same.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("traind.sdnotify")


class Notifier:
    def __init__(self, address: str | None = None, *, environ=os.environ):
        self.address = address if address is not None else environ.get("NOTIFY_SOCKET")
        self._watchdog_usec = _watchdog_usec(environ)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the manager's timeout), None if not asked for."""
        return self._watchdog_usec / 2e6 if self._watchdog_usec else None

    def send(self, *lines: str) -> bool:
        """Send "KEY=value" lines in one datagram. True if the manager got it."""
        if not self.address:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(addr)
                sock.sendall("\n".join(lines).encode())
            return True
        except OSError as err:
            log.debug("sd_notify to %s failed: %s", self.address, err)
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str, extend_seconds: float) -> bool:
        # EXTEND_TIMEOUT_USEC asks for this much more time from now, repeated while checkpoints run.
        return self.send("STOPPING=1", f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(extend_seconds * 1e6)}")


def _watchdog_usec(environ) -> int:
    # WATCHDOG_USEC applies only to the process named by WATCHDOG_PID (or to anyone if unset).
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return 0
    try:
        return max(0, int(environ.get("WATCHDOG_USEC", "0")))
    except ValueError:
        return 0
