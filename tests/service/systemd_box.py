"""Boot a throw-away systemd as PID 1 of fresh pid/mount/cgroup/uts/ipc/net namespaces (reusing the
host's /), with ONLY our unit folder on its unit path, and talk to it with nsenter + systemctl.

Why this shape (measured on this machine, see /work/shared/notes/systemd-testing.md): PID 1 here
is not systemd, but root with CAP_SYS_ADMIN can start one in new namespaces in ~0.3 s. A private
SYSTEMD_UNIT_PATH keeps the host's sysinit units from running against the host; stub targets
satisfy DefaultDependencies; journald is linked in so `journalctl -u` works; the launcher sits in
its own cgroup2 directory so cleanup can kill and remove everything.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

STUB_TARGETS = ("sdtest", "sysinit", "basic", "shutdown", "sockets", "network", "network-online",
                "multi-user", "timers", "paths", "slices")
JOURNALD = ("systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket")

INIT_SH = """#!/bin/sh -e
mount --make-rprivate /
mount -o remount,bind,ro /sys; mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/system.conf.d /run/systemd/journald.conf.d
printf '[Manager]\\nShowStatus=no\\nDefaultLimitCORE=0\\n' > /run/systemd/system.conf.d/t.conf
printf '[Journal]\\nStorage=volatile\\n' > /run/systemd/journald.conf.d/t.conf
exec env -i container=sdtest PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_UNIT_PATH={units} \\
    /lib/systemd/systemd --unit=sdtest.target
"""


def available() -> str | None:
    """None if a box can boot here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "nsenter", "systemctl"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if not os.access("/lib/systemd/systemd", os.X_OK):
        return "systemd not installed"
    return None


class SystemdBox:
    def __init__(self, workdir: Path):
        self.w = workdir
        self.units = workdir / "units"
        self.units.mkdir(parents=True)
        self.pid1: int | None = None
        self.launcher: subprocess.Popen | None = None
        self.cgroup: Path | None = None
        for t in STUB_TARGETS:
            (self.units / f"{t}.target").write_text("[Unit]\nDefaultDependencies=no\n")
        for u in JOURNALD:
            (self.units / u).symlink_to(f"/lib/systemd/system/{u}")
        with open(self.units / "sdtest.target", "a") as f:
            f.write("Wants=systemd-journald.socket systemd-journald.service\n")

    def add_unit(self, src: Path) -> None:
        shutil.copy(src, self.units / src.name)

    def add_dropin(self, unit: str, text: str) -> None:
        d = self.units / f"{unit}.d"
        d.mkdir(exist_ok=True)
        (d / "test.conf").write_text(text)

    def boot(self, timeout: float = 30.0) -> None:
        init = self.w / "init.sh"
        init.write_text(INIT_SH.format(units=self.units))
        init.chmod(0o755)
        subprocess.run(["chmod", "-R", "a+rX", str(self.w)], check=True)
        cg2 = Path("/sys/fs/cgroup")
        if not (cg2 / "cgroup.controllers").exists():   # hybrid hierarchy: cgroup2 lives in unified/
            cg2 = cg2 / "unified"
        self.cgroup = cg2 / f"traind-sdtest-{os.getpid()}-{time.time_ns()}"
        self.cgroup.mkdir()
        self.launcher = subprocess.Popen(
            ["setsid", "sh", "-c", f"echo $$ > {self.cgroup}/cgroup.procs; exec unshare -pfmuinC --mount-proc {init}"],
            stdin=subprocess.DEVNULL, stdout=open(self.w / "boot.log", "wb"), stderr=subprocess.STDOUT)
        self._wait(lambda: self._find_pid1(), timeout, "namespace PID 1")
        self._wait(lambda: self.sd("systemctl", "is-system-running").stdout.strip() in ("running", "degraded"),
                   timeout, "systemd running")

    def _find_pid1(self) -> bool:
        """The launcher's child (unshare forks it): PID 1 inside. /proc only (no procps needed)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.launcher.pid:
                self.pid1 = int(entry.name)
                return True
        return False

    def sd(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "--", *cmd],
                              capture_output=True, text=True, timeout=timeout)

    def prop(self, unit: str, name: str) -> str:
        return self.sd("systemctl", "show", "-P", name, unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.sd("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout

    @staticmethod
    def _wait(cond, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"systemd box: timed out waiting for {what}")

    def shutdown(self) -> None:
        if self.pid1:
            try:
                os.kill(self.pid1, signal.SIGKILL)   # the whole PID namespace dies with it
            except ProcessLookupError:
                pass
        if self.launcher:
            try:
                self.launcher.wait(20)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
        if self.cgroup and self.cgroup.exists():
            for procs in sorted(self.cgroup.rglob("cgroup.procs"), key=lambda p: -len(p.parts)):
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for d in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_retry(d)
            _rmdir_retry(self.cgroup)


def _rmdir_retry(d: Path) -> None:
    for _ in range(50):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
