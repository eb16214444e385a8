"""Fault injection: each kind (429 with Retry-After, 500, 503, dropped connection), added
latency, failing operations, per-method rates, and determinism under a seed."""

import http.client
import json
import time
import urllib.parse

import pytest
from googleapiclient.errors import HttpError

from conftest import wait_operation


def raw_get(sandbox, path, token):
    """One GET without retries; returns (status, headers, body) or raises on a dropped connection."""
    url = urllib.parse.urlparse(sandbox.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


LIST = "/v1/projects/sandbox-project/serviceAccounts"


@pytest.mark.parametrize("kind,status,google_status", [
    ("429", 429, "RESOURCE_EXHAUSTED"), ("500", 500, "INTERNAL"), ("503", 503, "UNAVAILABLE"),
])
def test_error_kinds(sandbox, iam, kind, status, google_status):
    sandbox.control("faults", {"spec": f"seed=1,kinds={kind},retry_after=3,method:iam.serviceAccounts.list=1"})
    with pytest.raises(HttpError) as exc:
        iam.projects().serviceAccounts().list(name=f"projects/{sandbox.project}").execute()
    assert exc.value.resp.status == status
    assert json.loads(exc.value.content)["error"]["status"] == google_status
    if kind == "429":
        assert exc.value.resp["retry-after"] == "3"
    # Other methods are untouched by a per-method rate.
    iam.projects().serviceAccounts().get(name=f"projects/-/serviceAccounts/{sandbox.operator_email}").execute()


def test_drop_closes_connection_without_response(sandbox):
    token = sandbox.bearer()
    sandbox.control("faults", {"spec": "seed=1,kinds=drop,rate=1"})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine)):
        raw_get(sandbox, LIST, token)
    sandbox.control("faults", {"spec": ""})
    assert raw_get(sandbox, LIST, token)[0] == 200


def test_latency(sandbox):
    token = sandbox.bearer()
    sandbox.control("faults", {"spec": "latency=300ms"})
    started = time.monotonic()
    assert raw_get(sandbox, LIST, token)[0] == 200
    assert time.monotonic() - started >= 0.3


def test_deterministic_under_seed(sandbox):
    token = sandbox.bearer()

    def sequence():
        sandbox.control("faults", {"spec": "seed=7,rate=0.5,kinds=500|503"})
        return [raw_get(sandbox, LIST, token)[0] for _ in range(20)]

    first = sequence()
    assert first == sequence()
    assert 200 in first and any(s in (500, 503) for s in first)
    assert sandbox.control("faults")["injected"] > 0


def test_failing_operation(sandbox, serviceusage):
    sandbox.control("faults", {"spec": "seed=3,op_fail=1"})
    op = serviceusage.services().enable(
        name=f"projects/{sandbox.other_project}/services/logging.googleapis.com", body={}).execute()
    sandbox.control("faults", {"spec": ""})
    done = wait_operation(serviceusage.operations().get, op["name"])
    assert done["error"]["code"] == 13
    state = serviceusage.services().get(name=f"projects/{sandbox.other_project}/services/logging.googleapis.com").execute()
    assert state["state"] == "DISABLED"


def test_bad_fault_spec_is_rejected(sandbox):
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as exc:
        sandbox.control("faults", {"spec": "rate=7"})
    assert exc.value.code == 400
