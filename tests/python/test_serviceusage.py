"""Service Usage v1: get/list/batchGet, enable/disable/batchEnable as Operations, and
SERVICE_DISABLED for calls to a disabled API."""

import json

import pytest
from googleapiclient.errors import HttpError

from conftest import wait_operation
from discovery import check


def svc(project, name):
    return f"projects/{project}/services/{name}"


def test_get_list_batch_get(sandbox, serviceusage):
    got = check("serviceusage", "v1", "serviceusage.services.get",
                serviceusage.services().get(name=svc(sandbox.project, "iam.googleapis.com")).execute())
    assert got["state"] == "ENABLED" and got["config"]["name"] == "iam.googleapis.com"
    listed = check("serviceusage", "v1", "serviceusage.services.list", serviceusage.services().list(
        parent=f"projects/{sandbox.project}", filter="state:ENABLED").execute())
    names = {s["config"]["name"] for s in listed["services"]}
    assert {"iam.googleapis.com", "run.googleapis.com"} <= names
    assert all(s["state"] == "ENABLED" for s in listed["services"])
    batch = check("serviceusage", "v1", "serviceusage.services.batchGet", serviceusage.services().batchGet(
        parent=f"projects/{sandbox.project}",
        # monitoring: an API no test enables (the tests share one sandbox, and test_builds
        # enables cloudbuild, which this case used before).
        names=[svc(sandbox.project, "iam.googleapis.com"), svc(sandbox.project, "monitoring.googleapis.com")]).execute())
    assert [s["state"] for s in batch["services"]] == ["ENABLED", "DISABLED"]
    with pytest.raises(HttpError) as exc:
        serviceusage.services().get(name=svc(sandbox.project, "nope.googleapis.com")).execute()
    assert exc.value.resp.status == 403


def test_disable_then_calls_get_service_disabled_then_enable(sandbox, serviceusage, secretmanager):
    project = sandbox.other_project
    ops = serviceusage.operations()
    op = check("serviceusage", "v1", "serviceusage.services.disable", serviceusage.services().disable(
        name=svc(project, "secretmanager.googleapis.com"), body={}).execute())
    done = check("serviceusage", "v1", "serviceusage.operations.get", wait_operation(ops.get, op["name"]))
    assert done["response"]["service"]["state"] == "DISABLED"

    with pytest.raises(HttpError) as exc:
        secretmanager.projects().secrets().list(parent=f"projects/{project}").execute()
    err = json.loads(exc.value.content)["error"]
    assert (exc.value.resp.status, err["status"]) == (403, "PERMISSION_DENIED")
    info = next(d for d in err["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "SERVICE_DISABLED" and info["metadata"]["service"] == "secretmanager.googleapis.com"
    assert "Secret Manager API has not been used in project" in err["message"]

    op = check("serviceusage", "v1", "serviceusage.services.enable", serviceusage.services().enable(
        name=svc(project, "secretmanager.googleapis.com"), body={}).execute())
    assert op["name"].startswith("operations/")
    done = wait_operation(ops.get, op["name"])
    assert done["response"]["service"]["state"] == "ENABLED"
    secretmanager.projects().secrets().list(parent=f"projects/{project}").execute()


def test_batch_enable_and_slow_operations(sandbox, serviceusage):
    before = sandbox.control("settings")["opDelayMs"]
    sandbox.control("settings", {"opDelayMs": 60_000})
    try:
        op = check("serviceusage", "v1", "serviceusage.services.batchEnable", serviceusage.services().batchEnable(
            parent=f"projects/{sandbox.other_project}",
            body={"serviceIds": ["cloudbuild.googleapis.com", "artifactregistry.googleapis.com"]}).execute())
        assert op["done"] is False
        assert serviceusage.operations().get(name=op["name"]).execute()["done"] is False
        assert sandbox.control("operations/finish", {})["finished"] >= 1
        done = serviceusage.operations().get(name=op["name"]).execute()
        assert done["done"] is True
        assert {s["state"] for s in done["response"]["services"]} == {"ENABLED"}
    finally:
        sandbox.control("settings", {"opDelayMs": before})
