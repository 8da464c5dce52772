"""A fake cloud metadata service (AWS IMDSv2, GCP, Azure Scheduled Events) on 127.0.0.1 only.

`FakeMetadata(provider)` serves like the real one; `.preempt()` makes the termination notice appear.
It records every request (method, path, headers) so tests can check the protocol was followed.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AWS_TOKEN = "fake-imds-token-123"


class FakeMetadata:
    def __init__(self, provider: str):
        self.provider = provider
        self.noticed = False
        self.requests: list[tuple[str, str, dict]] = []
        self.broken = False           # answer 500 to everything
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, body: str = "", ctype: str = "text/plain"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if fake.broken:
                    return self._send(500)
                if fake.provider == "aws" and self.path == "/latest/api/token":
                    if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                        return self._send(400, "missing ttl")
                    return self._send(200, AWS_TOKEN)
                self._send(404)

            def do_GET(self):
                fake.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if fake.broken:
                    return self._send(500)
                answer = getattr(self, f"_{fake.provider}")()
                self._send(*answer)

            def _aws(self):
                if self.path != "/latest/meta-data/spot/instance-action":
                    return (404,)
                if self.headers.get("X-aws-ec2-metadata-token") != AWS_TOKEN:
                    return (401, "IMDSv2 token required")
                if not fake.noticed:
                    return (404, "Not Found")
                return (200, json.dumps({"action": "terminate", "time": "2026-11-28T12:00:00Z"}), "application/json")

            def _gcp(self):
                if self.path != "/computeMetadata/v1/instance/preempted":
                    return (404,)
                if self.headers.get("Metadata-Flavor") != "Google":
                    return (403, "Missing Metadata-Flavor:Google header")
                return (200, "TRUE" if fake.noticed else "FALSE")

            def _azure(self):
                if not self.path.startswith("/metadata/scheduledevents?api-version="):
                    return (404,)
                if self.headers.get("Metadata") != "true":
                    return (400, "Required metadata header not specified")
                events = [{"EventId": "A1", "EventType": "Freeze", "EventStatus": "Scheduled",
                           "NotBefore": "Sat, 28 Nov 2026 12:00:00 GMT"}]
                if fake.noticed:
                    events.append({"EventId": "B2", "EventType": "Preempt", "EventStatus": "Scheduled",
                                   "NotBefore": "Sat, 28 Nov 2026 12:00:30 GMT"})
                return (200, json.dumps({"DocumentIncarnation": 2, "Events": events}), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def preempt(self) -> None:
        self.noticed = True

    def __enter__(self) -> "FakeMetadata":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
