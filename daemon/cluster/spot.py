"""Spot / preemptible VM termination notices: poll the cloud's metadata service, stop on a notice.

Notice windows (what the emergency checkpoint must fit in): AWS 2 min, GCP 30 s, Azure >= 30 s.
- AWS (IMDSv2): PUT /latest/api/token (header X-aws-ec2-metadata-token-ttl-seconds), then
  GET /latest/meta-data/spot/instance-action with X-aws-ec2-metadata-token: 404 = no notice,
  200 = {"action": "terminate"|"stop"|"hibernate", "time": "..."}.
- GCP: GET /computeMetadata/v1/instance/preempted with Metadata-Flavor: Google: "TRUE" = preempted.
- Azure: GET /metadata/scheduledevents?api-version=2020-07-01 with Metadata: true: an event with
  EventType "Preempt" = notice.
Polling runs as an APScheduler 3 interval job (default every 5 s, first poll at once); the callback
is called ONCE, with the Notice. Each poll uses short timeouts and reports failures as values: an
unreachable metadata service never stops training. HTTP goes through `Http`, which tests replace;
the real tests run fake metadata servers on 127.0.0.1 and set base_url.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("traind.spot")

PROVIDERS = ("aws", "gcp", "azure")
# Real addresses, used only when the spec gives no base_url. Tests always set base_url to 127.0.0.1.
DEFAULT_BASE_URLS = {"aws": "http://169.254.169.254", "gcp": "http://metadata.google.internal",
                     "azure": "http://169.254.169.254"}
NOTICE_WINDOW_SECONDS = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
AZURE_API_VERSION = "2020-07-01"
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Notice:
    provider: str
    detail: str              # e.g. "instance-action terminate at 2026-11-28T10:00:00Z"
    received: float          # monotonic clock when we saw it (to time the stop against the window)

    @property
    def window_seconds(self) -> float:
        return NOTICE_WINDOW_SECONDS[self.provider]


@dataclass(frozen=True)
class Reply:
    status: int | None       # None: no answer at all (see error)
    body: str = ""
    error: str | None = None


class Http:
    """The one network effect: a request with a short timeout, never raising."""

    def request(self, method: str, url: str, headers: dict[str, str], timeout: float = TIMEOUT_SECONDS) -> Reply:
        req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "PUT" else None)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # metadata is never proxied
        try:
            with opener.open(req, timeout=timeout) as resp:
                return Reply(resp.status, resp.read(65536).decode(errors="replace"))
        except urllib.error.HTTPError as err:
            return Reply(err.code, "", f"HTTP {err.code}")
        except (urllib.error.URLError, OSError, ValueError) as err:
            return Reply(None, "", str(getattr(err, "reason", err)))


# --- one check per provider: None = no notice; Notice = stop now ----------------------------------

def check_aws(http: Http, base: str, now: Callable[[], float]) -> tuple[Notice | None, str | None]:
    token = http.request("PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    if token.status != 200 or not token.body:
        return None, f"aws token: {token.error or token.status}"
    reply = http.request("GET", f"{base}/latest/meta-data/spot/instance-action",
                         {"X-aws-ec2-metadata-token": token.body.strip()})
    if reply.status == 404:
        return None, None
    if reply.status != 200:
        return None, f"aws instance-action: {reply.error or reply.status}"
    try:
        action = json.loads(reply.body)
    except ValueError:
        return None, "aws instance-action: not JSON"
    if not isinstance(action, dict) or not action.get("action"):
        return None, "aws instance-action: no 'action'"
    return Notice("aws", f"spot/instance-action {action.get('action')} at {action.get('time')}", now()), None


def check_gcp(http: Http, base: str, now: Callable[[], float]) -> tuple[Notice | None, str | None]:
    reply = http.request("GET", f"{base}/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"})
    if reply.status != 200:
        return None, f"gcp preempted: {reply.error or reply.status}"
    if reply.body.strip().upper() == "TRUE":
        return Notice("gcp", "instance/preempted is TRUE", now()), None
    return None, None


def check_azure(http: Http, base: str, now: Callable[[], float]) -> tuple[Notice | None, str | None]:
    reply = http.request("GET", f"{base}/metadata/scheduledevents?api-version={AZURE_API_VERSION}",
                         {"Metadata": "true"})
    if reply.status != 200:
        return None, f"azure scheduledevents: {reply.error or reply.status}"
    try:
        events = json.loads(reply.body).get("Events") or []
    except (ValueError, AttributeError):
        return None, "azure scheduledevents: not a JSON object"
    for event in events:
        if isinstance(event, dict) and event.get("EventType") == "Preempt":
            return Notice("azure", f"scheduled event Preempt {event.get('EventId', '')} "
                                   f"not before {event.get('NotBefore', '?')}", now()), None
    return None, None


CHECKS = {"aws": check_aws, "gcp": check_gcp, "azure": check_azure}


def detect_provider(dmi_dir: Path = Path("/sys/class/dmi/id")) -> str | None:
    """Which cloud we run on, from the local DMI strings only (no network: off-cloud, no traffic)."""
    def read(name: str) -> str:
        try:
            return (dmi_dir / name).read_text().strip().lower()
        except OSError:
            return ""
    vendor, product, bios = read("sys_vendor"), read("product_name"), read("bios_vendor")
    if "amazon" in vendor or "amazon" in bios or product.startswith("ec2"):
        return "aws"
    if "google" in vendor or "google" in product:
        return "gcp"
    if "microsoft" in vendor and "virtual machine" in product:
        return "azure"
    return None


# --- the poller ------------------------------------------------------------------------------------------

class SpotWatcher:
    """Polls one provider every `poll_seconds` (APScheduler interval job) and calls `on_notice` once."""

    def __init__(self, provider: str, on_notice: Callable[[Notice], None], *, base_url: str | None = None,
                 poll_seconds: float = 5.0, http: Http | None = None,
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] | None = None):
        if provider not in CHECKS:
            raise ValueError(f"unknown spot provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
        self.provider = provider
        self.base_url = (base_url or DEFAULT_BASE_URLS[provider]).rstrip("/")
        self.poll_seconds = poll_seconds
        self._on_notice = on_notice
        self._http = http or Http()
        self._clock = clock
        self._say = say or log.warning    # problems reading the service (once per change, not per poll)
        self._lock = threading.Lock()
        self._scheduler = None
        self._last_problem: str | None = None
        self.notice: Notice | None = None
        self.polls = 0

    def poll_once(self) -> Notice | None:
        """One check; calls on_notice the first time a notice is seen. Safe to call from any thread."""
        if self.notice is not None:
            return self.notice
        notice, problem = CHECKS[self.provider](self._http, self.base_url, self._clock)
        self.polls += 1
        if problem != self._last_problem:  # log a failure once, not every 5 s
            if problem:
                self._say(f"spot {self.provider}: cannot read the termination notice ({problem}); "
                          f"will keep trying every {self.poll_seconds:g} s")
            elif self._last_problem:
                self._say(f"spot {self.provider}: the metadata service answers again")
            self._last_problem = problem
        if notice is None:
            return None
        with self._lock:
            first = self.notice is None
            if first:
                self.notice = notice
        if first:
            log.info("spot %s: termination notice: %s (window %.0f s)", notice.provider, notice.detail,
                        notice.window_seconds)
            self._on_notice(notice)
        return self.notice

    def start(self) -> None:
        from datetime import datetime, timezone

        from apscheduler.schedulers.background import BackgroundScheduler
        self._scheduler = BackgroundScheduler(timezone=timezone.utc,
                                              job_defaults={"coalesce": True, "max_instances": 1,
                                                            "misfire_grace_time": None})
        self._scheduler.add_job(self.poll_once, "interval", seconds=self.poll_seconds, id=f"spot-{self.provider}",
                                next_run_time=datetime.now(timezone.utc))
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per poll
        self._scheduler.start()
        log.info("spot %s: polling %s every %g s", self.provider, self.base_url, self.poll_seconds)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def timing_line(self, stopped_at: float | None = None) -> str | None:
        """'notice -> checkpoint committed in X s of the Y s window' for the log, if there was a notice."""
        if self.notice is None:
            return None
        took = (stopped_at if stopped_at is not None else self._clock()) - self.notice.received
        return (f"spot {self.notice.provider}: termination notice to emergency checkpoint done in {took:.2f} s "
                f"({took / self.notice.window_seconds:.0%} of the {self.notice.window_seconds:.0f} s window)")
