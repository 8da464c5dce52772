"""Spot termination-notice pollers against fake metadata servers on 127.0.0.1."""
import threading
import time

import pytest

from traind.cluster import spot
from tests.cluster.fakemeta import AWS_TOKEN, FakeMetadata


@pytest.mark.parametrize("provider", spot.PROVIDERS)
def test_no_notice_then_notice(provider):
    with FakeMetadata(provider) as fake:
        check = spot.CHECKS[provider]
        notice, problem = check(spot.Http(), fake.url, time.monotonic)
        assert notice is None and problem is None
        fake.preempt()
        notice, problem = check(spot.Http(), fake.url, time.monotonic)
        assert problem is None
        assert notice is not None and notice.provider == provider
        assert notice.window_seconds == {"aws": 120, "gcp": 30, "azure": 30}[provider]


def test_aws_uses_imdsv2_token():
    with FakeMetadata("aws") as fake:
        fake.preempt()
        notice, _ = spot.check_aws(spot.Http(), fake.url, time.monotonic)
        assert "terminate" in notice.detail
        (m1, p1, h1), (m2, p2, h2) = fake.requests
        assert (m1, p1) == ("PUT", "/latest/api/token") and h1["x-aws-ec2-metadata-token-ttl-seconds"]
        assert (m2, p2) == ("GET", "/latest/meta-data/spot/instance-action")
        assert h2["x-aws-ec2-metadata-token"] == AWS_TOKEN


def test_gcp_and_azure_send_their_headers():
    with FakeMetadata("gcp") as gcp, FakeMetadata("azure") as azure:
        spot.check_gcp(spot.Http(), gcp.url, time.monotonic)
        spot.check_azure(spot.Http(), azure.url, time.monotonic)
        assert gcp.requests[0][2]["metadata-flavor"] == "Google"
        assert azure.requests[0][2]["metadata"] == "true"
        assert "api-version=" in azure.requests[0][1]


def test_azure_ignores_other_event_types():
    with FakeMetadata("azure") as fake:  # serves a Freeze event even without preemption
        notice, problem = spot.check_azure(spot.Http(), fake.url, time.monotonic)
        assert notice is None and problem is None


@pytest.mark.parametrize("provider", spot.PROVIDERS)
def test_unreachable_or_broken_service_is_a_value(provider):
    # Port 9 on loopback: connection refused. Never raises, never a notice.
    notice, problem = spot.CHECKS[provider](spot.Http(), "http://127.0.0.1:9", time.monotonic)
    assert notice is None and problem
    with FakeMetadata(provider) as fake:
        fake.broken = True
        notice, problem = spot.CHECKS[provider](spot.Http(), fake.url, time.monotonic)
        assert notice is None and "500" in problem


def test_watcher_polls_on_a_schedule_and_calls_back_once():
    calls = []
    seen = threading.Event()
    with FakeMetadata("gcp") as fake:
        watcher = spot.SpotWatcher("gcp", lambda n: (calls.append(n), seen.set()), base_url=fake.url,
                                   poll_seconds=0.2)
        watcher.start()
        try:
            time.sleep(0.7)
            assert watcher.polls >= 2 and not calls     # first poll at once, then every 0.2 s
            fake.preempt()
            assert seen.wait(3)
            time.sleep(0.5)                              # further polls must not call back again
        finally:
            watcher.stop()
        assert len(calls) == 1 and calls[0].provider == "gcp"
        assert "window" in watcher.timing_line()


def test_watcher_survives_a_dead_metadata_service():
    calls = []
    watcher = spot.SpotWatcher("aws", calls.append, base_url="http://127.0.0.1:9", poll_seconds=0.1)
    watcher.start()
    try:
        time.sleep(0.5)
    finally:
        watcher.stop()
    assert watcher.polls >= 3 and not calls


def test_default_addresses_are_never_used_in_tests():
    watcher = spot.SpotWatcher("aws", print)
    assert watcher.base_url.startswith("http://127.0.0.1")


def test_detect_provider_from_dmi(tmp_path):
    def dmi(vendor, product=""):
        (tmp_path / "sys_vendor").write_text(vendor + "\n")
        (tmp_path / "product_name").write_text(product + "\n")
        return spot.detect_provider(tmp_path)
    assert dmi("Amazon EC2", "m5.large") == "aws"
    assert dmi("Google", "Google Compute Engine") == "gcp"
    assert dmi("Microsoft Corporation", "Virtual Machine") == "azure"
    assert dmi("QEMU", "Standard PC") is None
    assert spot.detect_provider(tmp_path / "missing") is None


def test_unknown_provider_is_rejected():
    with pytest.raises(ValueError):
        spot.SpotWatcher("ibm", print)
