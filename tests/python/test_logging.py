"""Cloud Logging v2 `entries.list` through Google's own client
(`googleapiclient.discovery.build('logging', 'v2')`): the sandbox serves what a real job
execution printed as `cloud_run_job` entries, filters them the way Google's clients ask, pages
them, and refuses filters it does not support with 400 INVALID_ARGUMENT."""

import json

import pytest
from googleapiclient.errors import HttpError

from conftest import unique
from discovery import check
from test_run_v2 import REGION, create_job, run_and_wait, shell_job


@pytest.fixture(scope="module")
def logging_v2(sandbox):
    return sandbox.client("logging", "v2")


@pytest.fixture(scope="module")
def failed_execution(sandbox, run_v2):
    """A job whose one execution prints to both streams and fails with a traceback."""
    marker = unique("m")
    script = (
        f'echo "start {marker}"; '
        f'for i in $(seq 1 7); do echo "line $i {marker}"; done; '
        # stdout and stderr are two pipes read apart (on Cloud Run too): without a pause the
        # last stdout line and the first stderr line may be stamped in either order.
        f'sleep 0.3; '
        f'echo "Traceback (most recent call last):" >&2; '
        f'echo "SyntaxError: {marker} was never closed" >&2; exit 1'
    )
    name, _ = create_job(sandbox, run_v2, shell_job(script))
    ex = run_and_wait(run_v2, name)
    assert ex.get("failedCount") == 1
    return name.rsplit("/", 1)[1], ex["name"].rsplit("/", 1)[1], marker


def entries_list(logging_v2, body):
    return check("logging", "v2", "logging.entries.list", logging_v2.entries().list(body=body).execute())


def execution_filter(job, execution):
    return (
        f'resource.type="cloud_run_job" AND resource.labels.job_name="{job}" '
        f'AND resource.labels.location="{REGION}" '
        f'AND labels."run.googleapis.com/execution_name"="{execution}"'
    )


def test_an_executions_output_is_listed_as_cloud_run_job_entries(sandbox, logging_v2, failed_execution):
    job, execution, marker = failed_execution
    got = entries_list(logging_v2, {
        "resourceNames": [f"projects/{sandbox.project}"],
        "filter": execution_filter(job, execution),
    })
    texts = [e["textPayload"] for e in got["entries"]]
    assert f"start {marker}" in texts and "Traceback (most recent call last):" in texts
    assert texts.index(f"start {marker}") < texts.index(f"SyntaxError: {marker} was never closed"), "oldest first"
    e = next(e for e in got["entries"] if e["textPayload"].startswith("SyntaxError"))
    assert e["resource"] == {"type": "cloud_run_job", "labels": {
        "project_id": sandbox.project, "job_name": job, "location": REGION}}
    assert e["labels"]["run.googleapis.com/execution_name"] == execution
    assert e["logName"] == f"projects/{sandbox.project}/logs/run.googleapis.com%2Fstderr"
    assert e["severity"] == "DEFAULT" and e["insertId"] and e["timestamp"] and e["receiveTimestamp"]
    out = next(e for e in got["entries"] if e["textPayload"] == f"start {marker}")
    assert out["logName"].endswith("run.googleapis.com%2Fstdout")


def test_newest_first_pages_and_the_tail(sandbox, logging_v2, failed_execution):
    job, execution, marker = failed_execution
    body = {
        "resourceNames": [f"projects/{sandbox.project}"],
        "filter": execution_filter(job, execution) + ' AND textPayload:"' + marker + '"',
        "orderBy": "timestamp desc",
        "pageSize": 4,
    }
    first = entries_list(logging_v2, body)
    assert len(first["entries"]) == 4 and first["nextPageToken"]
    assert first["entries"][0]["textPayload"] == f"SyntaxError: {marker} was never closed"
    seen = [e["insertId"] for e in first["entries"]]
    token = first["nextPageToken"]
    while token:
        page = entries_list(logging_v2, {**body, "pageToken": token})
        seen += [e["insertId"] for e in page.get("entries", [])]
        token = page.get("nextPageToken")
    assert len(seen) == len(set(seen)) == 9, "start + 7 lines + SyntaxError, each once"


def test_timestamp_severity_and_other_resources_filter(sandbox, logging_v2, failed_execution):
    job, execution, _ = failed_execution
    base = execution_filter(job, execution)
    project = [f"projects/{sandbox.project}"]
    later = entries_list(logging_v2, {"resourceNames": project, "filter": base + ' AND timestamp>="2999-01-01T00:00:00Z"'})
    assert later.get("entries", []) == []
    errors = entries_list(logging_v2, {"resourceNames": project, "filter": base + " AND severity>=ERROR"})
    assert errors.get("entries", []) == [], "unstructured text is DEFAULT"
    other = entries_list(logging_v2, {"resourceNames": project,
                                      "filter": base.replace("cloud_run_job", "cloud_run_revision")})
    assert other.get("entries", []) == []
    elsewhere = entries_list(logging_v2, {"resourceNames": [f"projects/{sandbox.other_project}"], "filter": base})
    assert elsewhere.get("entries", []) == []


@pytest.mark.parametrize("bad, why", [
    ('resource.type="a" OR resource.type="b"', "OR is not supported"),
    ("NOT severity=ERROR", "NOT is not supported"),
    ('textPayload=~"x.*"', "regular expressions"),
    ("jsonPayload.message=x", "jsonPayload.message"),
    ("timestamp>=yesterday", "RFC 3339"),
])
def test_unsupported_filters_are_invalid_argument(sandbox, logging_v2, bad, why):
    with pytest.raises(HttpError) as err:
        logging_v2.entries().list(body={"resourceNames": [f"projects/{sandbox.project}"], "filter": bad}).execute()
    assert err.value.resp.status == 400
    body = json.loads(err.value.content)
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert why in body["error"]["message"]


def test_resource_names_are_required_and_checked(sandbox, logging_v2):
    for body in ({}, {"resourceNames": ["folders/1"]}):
        with pytest.raises(HttpError) as err:
            logging_v2.entries().list(body=body).execute()
        assert err.value.resp.status == 400
    with pytest.raises(HttpError) as err:
        logging_v2.entries().list(body={"resourceNames": ["projects/no-such-project"]}).execute()
    assert err.value.resp.status == 404
