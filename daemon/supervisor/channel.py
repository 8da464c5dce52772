"""The supervisor's end of the control channel (see daemon/contract/protocol.py for the messages).

An AF_UNIX stream socketpair: the child inherits one end (its fd number in TRAIND_CONTROL_FD),
the supervisor keeps the other, non-blocking. When the supervisor dies, even by SIGKILL, the
kernel closes its end and the child reads end of file: that is how a job learns it is alone.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from ..contract import protocol


@dataclass(frozen=True)
class Received:
    messages: list[dict]
    errors: list[str]      # malformed lines, logged and otherwise ignored
    closed: bool           # the child closed its end (or exited)


class SupervisorChannel:
    def __init__(self) -> None:
        self._sock, self.child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._lines = protocol.LineBuffer()
        self.closed = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def child_fd(self) -> int:
        return self.child_end.fileno()

    def forget_child_end(self) -> None:
        """After the spawn: only the child holds its end, so its exit is our end of file."""
        self.child_end.close()

    def send(self, msg_type: str, **fields) -> bool:
        """False when the child cannot be reached (gone, or not reading and the buffer is full)."""
        if self.closed:
            return False
        try:
            data = protocol.encode(msg_type, **fields)
            return self._sock.send(data, socket.MSG_NOSIGNAL) == len(data)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
            return False

    def drain(self) -> Received:
        """Read whatever is waiting without blocking."""
        messages, errors = [], []
        while not self.closed:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except (ConnectionResetError, OSError):
                data = b""
            if not data:
                self.closed = True
                break
            for line in self._lines.feed(data):
                try:
                    messages.append(protocol.decode(line))
                except protocol.ProtocolError as err:
                    errors.append(f"{err}: {line[:120]!r}")
        return Received(messages, errors, self.closed)

    def close(self) -> None:
        self.closed = True
        self._sock.close()
        self.child_end.close()
