"""sd_notify: the test plays systemd's manager (a datagram socket) and reads what the daemon says."""
import os
import socket
import struct
import time

import pytest

from conftest import read_ledger, traind, wait_for, write_spec
from traind.service.sdnotify import Notifier


class FakeManager:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.path = str(path)
        self.messages: list[tuple[int, dict]] = []   # (sender pid, fields)

    def drain(self):
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                return self.messages
            pid = next((struct.unpack("3i", d)[0] for lvl, typ, d in anc if typ == socket.SCM_CREDENTIALS), -1)
            self.messages.append((pid, dict(line.split("=", 1) for line in data.decode().splitlines())))

    def seen(self, key):
        return [m for _, m in self.drain() if key in m]


def test_notifier_sends_and_never_raises(tmp_path):
    mgr = FakeManager(tmp_path / "notify")
    assert Notifier(mgr.path).ready("hello")
    assert mgr.drain()[0][1] == {"READY": "1", "STATUS": "hello"}
    assert Notifier(str(tmp_path / "nobody-listens")).watchdog() is False
    assert Notifier("@traind-test-no-such-abstract").status("x") is False
    assert Notifier(None, environ={}).send("READY=1") is False


def test_watchdog_interval_only_for_our_pid():
    assert Notifier("x", environ={"WATCHDOG_USEC": "4000000"}).watchdog_interval() == 2.0
    assert Notifier("x", environ={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier("x", environ=mine).watchdog_interval() == 2.0
    assert Notifier("x", environ={"WATCHDOG_USEC": "junk"}).watchdog_interval() is None


@pytest.mark.slow
def test_daemon_ready_status_watchdog_and_stopping(tmp_path, serve):
    mgr = FakeManager(tmp_path / "notify")
    s = serve(slots=1, extra_env={"NOTIFY_SOCKET": mgr.path, "WATCHDOG_USEC": "1000000"}).start()
    wait_for(lambda: mgr.seen("READY"), 20, "READY=1")
    ready = [(pid, m) for pid, m in mgr.messages if "READY" in m][0]
    assert ready[0] == s.proc.pid and "slot" in ready[1]["STATUS"]   # from the main pid (NotifyAccess=main)
    time.sleep(1.5)
    assert len(mgr.seen("WATCHDOG")) >= 2
    ledger = tmp_path / "ledger"
    traind("submit", str(write_spec(tmp_path, "long", ledger, steps=1000, step_seconds=0.02)),
           state_dir=s.state_dir, check=True)
    wait_for(lambda: read_ledger(ledger), 60, "job started")
    wait_for(lambda: any("1 running" in m.get("STATUS", "") for _, m in mgr.drain()), 10, "STATUS with 1 running")
    assert s.stop(timeout=60) == 0
    stopping = mgr.seen("STOPPING")
    assert stopping and int(stopping[0]["EXTEND_TIMEOUT_USEC"]) > 1_000_000
    assert "emergency" in stopping[0]["STATUS"]
    assert [e["what"].split()[0] for e in read_ledger(ledger)] == ["start", "emergency", "stop"]
