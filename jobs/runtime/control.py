"""The child end of the supervisor's control channel (see daemon/contract/protocol.py).

A reader thread turns incoming messages into flags (never acts itself); `send` writes one JSON
line under a lock, because the store's background thread reports commits while the loop sends
heartbeats. EOF means the supervisor is gone: the job must checkpoint and stop, never train
unsupervised.
"""
from __future__ import annotations

import os
import socket
import sys
import threading

from traind.contract import protocol
from .preemption import FLAGS, StopFlags

REASON_SUPERVISOR_GONE = "supervisor gone"


class ControlChannel:
    def __init__(self, sock: socket.socket, flags: StopFlags = FLAGS) -> None:
        self._sock = sock
        self._flags = flags
        self._send_lock = threading.Lock()
        self._broken = False
        self._lines = protocol.LineBuffer()
        self._reader = threading.Thread(target=self._read_loop, name="traind-control", daemon=True)
        self._resume: dict | None = None          # a warm spare's RESUME message
        self._resumed = threading.Event()         # set by RESUME, or by EOF (then _resume stays None)

    @classmethod
    def from_env(cls, environ=os.environ, flags: StopFlags = FLAGS) -> "ControlChannel | None":
        """The channel named by TRAIND_CONTROL_FD, started; None when running unsupervised."""
        raw = environ.get(protocol.ENV_CONTROL_FD, "").strip()
        if not raw:
            return None
        try:
            sock = socket.socket(fileno=int(raw))
        except (ValueError, OSError) as err:
            # A bad fd means no supervisor can hear us; training on would be unsupervised.
            print(f"traind: {protocol.ENV_CONTROL_FD}={raw!r} is not a usable socket ({err}); stopping",
                  file=sys.stderr)
            flags.request_stop(REASON_SUPERVISOR_GONE)
            return None
        channel = cls(sock, flags)
        channel.start()
        return channel

    def start(self) -> None:
        # What the supervisor sent before we started (e.g. a stop during our start-up) is handled
        # now, synchronously, so the loop sees it before its first step; the thread does the rest.
        self._sock.setblocking(False)
        try:
            open_ = self._receive_available()
        finally:
            self._sock.setblocking(True)
        if open_:
            self._reader.start()

    def _receive_available(self) -> bool:
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not self._feed(data):
                return False

    def _read_loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not self._feed(data):
                return

    def _feed(self, data: bytes) -> bool:
        """Handle received bytes; False at EOF (supervisor gone: stop)."""
        if not data:
            self._flags.request_stop(REASON_SUPERVISOR_GONE)
            self._resumed.set()
            return False
        for line in self._lines.feed(data):
            self._handle(line)
        return True

    def _handle(self, line: bytes) -> None:
        try:
            msg = protocol.decode(line)
        except protocol.ProtocolError as err:
            print(f"traind: ignoring a malformed control message: {err}", file=sys.stderr)
            return
        reason = str(msg.get("reason") or msg["type"])
        if msg["type"] == protocol.CHECKPOINT_AND_STOP:
            self._flags.request_stop(reason)
        elif msg["type"] == protocol.CHECKPOINT_NOW:
            self._flags.request_checkpoint(reason)
        elif msg["type"] == protocol.RESUME:
            self._resume = msg
            self._resumed.set()
        else:
            print(f"traind: ignoring unknown control message type {msg['type']!r}", file=sys.stderr)

    def become_attempt(self, env) -> dict:
        """A warm spare has done everything up to here (imports, model, optimizer, datasets) and
        waits for the attempt it will be; returns that attempt's environment. What it becomes comes
        only from the RESUME message and the checkpoint it names (the restore overwrites weights,
        RNG and data position). Not needed after all (supervisor gone, run over, stop): exit 0."""
        self.send(protocol.SPARE_READY, pid=os.getpid())
        msg = self.wait_for_resume()
        if msg is None:
            sys.stderr.flush()
            os._exit(0)
        resume_from = msg.get("resume_from")
        return {**{k: v for k, v in env.items() if k != protocol.ENV_SPARE},
                protocol.ENV_RESUME_FROM: resume_from if isinstance(resume_from, str) else "",
                protocol.ENV_ATTEMPT: str(msg.get("attempt", ""))}

    def wait_for_resume(self) -> dict | None:
        """A warm spare waits here (built, holding nothing) until the supervisor hands it an
        attempt: the RESUME message, or None when the supervisor is gone or a stop was asked."""
        while not self._resumed.wait(0.2):
            if self._flags.stop is not None:
                return None
        return self._resume

    def send(self, msg_type: str, **fields) -> bool:
        """Send one message; False (not an exception) when the supervisor is gone."""
        if self._broken:
            return False
        data = protocol.encode(msg_type, **fields)
        with self._send_lock:
            try:
                self._sock.sendall(data)
                return True
            except OSError:
                self._broken = True   # the reader sees EOF and raises the stop flag
                return False

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
