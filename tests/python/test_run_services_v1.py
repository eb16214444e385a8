"""Cloud Run v1 (Knative serving) services and the Run IAM methods through Google's own client:
a v1 Service (the shape gcloud sends) is the same resource as the v2 Service, revisions read
back, resourceVersion conflicts, and service/job IAM policies with allUsers and permission
checks, on both the v1 and the v2 paths."""

import sys
import time

import pytest
from googleapiclient.errors import HttpError

from conftest import unique, wait_operation
from discovery import check

REGION = "us-central1"


def knative_service(name, min_scale="1", throttling="False"):
    # What `gcloud run deploy NAME --no-cpu-throttling --min-instances 1` sends (from --log-http),
    # with a container the sandbox can run: the pytest interpreter serves HTTP on $PORT.
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "annotations": {"run.googleapis.com/client-name": "gcloud", "run.googleapis.com/client-version": "528.0.0"},
            "labels": {"team": "data"},
        },
        "spec": {"template": {
            "metadata": {
                "annotations": {
                    "autoscaling.knative.dev/minScale": min_scale,
                    "run.googleapis.com/cpu-throttling": throttling,
                    "run.googleapis.com/startup-cpu-boost": "True",
                },
                "labels": {"client.knative.dev/nonce": "abcdefghij"},
            },
            "spec": {"containers": [{
                "name": "",
                "image": "busybox",
                "command": ["sh", "-c"],
                "args": [f'exec {sys.executable} -m http.server --bind 127.0.0.1 "$PORT"'],
                "env": [{"name": "GREETING", "value": "hi"}],
                "startupProbe": {"httpGet": {"path": "/"}, "periodSeconds": 1, "failureThreshold": 20},
            }]},
        }},
    }


def wait_ready(services, name, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        svc = services.get(name=name).execute()
        ready = next(c for c in svc["status"]["conditions"] if c["type"] == "Ready")
        if ready["status"] != "Unknown" and svc["status"].get("observedGeneration") == svc["metadata"]["generation"]:
            return svc, ready
        assert time.monotonic() < deadline, svc["status"]
        time.sleep(0.2)


def test_v1_service_is_the_v2_service(sandbox, run_v1, run_v2):
    services = run_v1.namespaces().services()
    ns = f"namespaces/{sandbox.project}"
    service_id = unique("kn")
    created = check("run", "v1", "run.namespaces.services.create",
                    services.create(parent=ns, body=knative_service(service_id)).execute())
    assert created["metadata"]["name"] == service_id
    assert created["metadata"]["labels"]["cloud.googleapis.com/location"] == REGION
    name = f"{ns}/services/{service_id}"
    svc, ready = wait_ready(services, name)
    assert ready["status"] == "True", ready
    svc = check("run", "v1", "run.namespaces.services.get", svc)
    tann = svc["spec"]["template"]["metadata"]["annotations"]
    assert tann["autoscaling.knative.dev/minScale"] == "1"
    assert tann["run.googleapis.com/cpu-throttling"] == "false"
    assert svc["status"]["latestReadyRevisionName"] == svc["status"]["latestCreatedRevisionName"]
    # The sandbox's service URL (Google's `https://...run.app` resolves nowhere here).
    assert "/_sandbox/run/invoke/" in svc["status"]["url"], svc["status"]["url"]

    # The same resource through v2.
    v2_name = f"projects/{sandbox.project}/locations/{REGION}/services/{service_id}"
    v2 = run_v2.projects().locations().services().get(name=v2_name).execute()
    assert v2["template"]["scaling"]["minInstanceCount"] == 1
    assert v2["template"]["containers"][0]["resources"]["cpuIdle"] is False
    assert v2["labels"] == {"team": "data"}
    assert v2["client"] == "gcloud"

    # A v2 patch shows through v1 (min instances 2), and a stale resourceVersion is a conflict.
    body = {k: v for k, v in v2.items() if k in ("labels", "template", "ingress", "client")}
    body["template"]["scaling"]["minInstanceCount"] = 2
    op = run_v2.projects().locations().services().patch(name=v2_name, body=body).execute()
    wait_operation(run_v2.projects().locations().operations().get, op["name"], timeout=60)
    stale = svc
    svc, _ = wait_ready(services, name)
    assert svc["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/minScale"] == "2"
    with pytest.raises(HttpError) as conflict:
        services.replaceService(name=name, body=stale).execute()
    assert conflict.value.resp.status == 409

    # replaceService with the current version: cpu throttled again, a new revision.
    svc["spec"]["template"]["metadata"]["annotations"]["run.googleapis.com/cpu-throttling"] = "true"
    replaced = check("run", "v1", "run.namespaces.services.replaceService",
                     services.replaceService(name=name, body=svc).execute())
    assert replaced["metadata"]["generation"] > stale["metadata"]["generation"]
    svc, ready = wait_ready(services, name)
    assert ready["status"] == "True"
    assert "run.googleapis.com/cpu-throttling" not in svc["spec"]["template"]["metadata"]["annotations"]

    revisions = run_v1.namespaces().revisions()
    listed = check("run", "v1", "run.namespaces.revisions.list",
                   revisions.list(parent=ns, labelSelector=f"serving.knative.dev/service={service_id}").execute())
    assert [r["metadata"]["name"] for r in listed["items"]] == [svc["status"]["latestCreatedRevisionName"]]
    rev = check("run", "v1", "run.namespaces.revisions.get",
                revisions.get(name=f"{ns}/revisions/{svc['status']['latestCreatedRevisionName']}").execute())
    assert rev["metadata"]["labels"]["serving.knative.dev/service"] == service_id

    listed = check("run", "v1", "run.namespaces.services.list", services.list(parent=ns).execute())
    assert service_id in [s["metadata"]["name"] for s in listed["items"]]
    everywhere = check("run", "v1", "run.projects.locations.services.list",
                       run_v1.projects().locations().services().list(
                           parent=f"projects/{sandbox.project}/locations/-").execute())
    assert service_id in [s["metadata"]["name"] for s in everywhere["items"]]

    check("run", "v1", "run.namespaces.services.delete", services.delete(name=name).execute())
    with pytest.raises(HttpError) as gone:
        services.get(name=name).execute()
    assert gone.value.resp.status == 404


def test_locations_list(sandbox, run_v1):
    got = check("run", "v1", "run.projects.locations.list",
                run_v1.projects().locations().list(name=f"projects/{sandbox.project}").execute())
    assert f"projects/{sandbox.project}/locations/{REGION}" in [l["name"] for l in got["locations"]]


def test_bad_annotation_is_invalid_argument(sandbox, run_v1):
    body = knative_service(unique("kn"), min_scale="one")
    with pytest.raises(HttpError) as bad:
        run_v1.namespaces().services().create(parent=f"namespaces/{sandbox.project}", body=body).execute()
    assert bad.value.resp.status == 400


def _service(sandbox, run_v2):
    service_id = unique("iam")
    parent = f"projects/{sandbox.project}/locations/{REGION}"
    body = {"template": {"containers": [{"image": "busybox", "command": ["sh", "-c", "sleep 600"]}]}}
    run_v2.projects().locations().services().create(parent=parent, serviceId=service_id, body=body).execute()
    return f"{parent}/services/{service_id}"


def test_service_iam_v2_and_v1_share_one_policy(sandbox, run_v1, run_v2, new_sa):
    name = _service(sandbox, run_v2)
    v2 = run_v2.projects().locations().services()
    v1 = run_v1.projects().locations().services()
    empty = check("run", "v2", "run.projects.locations.services.getIamPolicy",
                  v2.getIamPolicy(resource=name).execute())
    assert "bindings" not in empty and empty["etag"]

    # `--allow-unauthenticated`: allUsers as invoker, written through v1 as gcloud does.
    policy = check("run", "v1", "run.projects.locations.services.getIamPolicy", v1.getIamPolicy(resource=name).execute())
    policy["bindings"] = [{"role": "roles/run.invoker", "members": ["allUsers"]}]
    written = check("run", "v1", "run.projects.locations.services.setIamPolicy",
                    v1.setIamPolicy(resource=name, body={"policy": policy}).execute())
    assert written["etag"] != policy["etag"]
    read = v2.getIamPolicy(resource=name).execute()
    assert read["bindings"] == [{"role": "roles/run.invoker", "members": ["allUsers"]}]

    # A stale etag is 409; the same etag in the URL-safe alphabet is not stale.
    with pytest.raises(HttpError) as stale:
        v2.setIamPolicy(resource=name, body={"policy": policy}).execute()
    assert stale.value.resp.status == 409
    read["etag"] = read["etag"].replace("+", "-").replace("/", "_")
    read["bindings"] = []
    v2.setIamPolicy(resource=name, body={"policy": read}).execute()
    assert "bindings" not in v2.getIamPolicy(resource=name).execute()

    # Permissions: a new account holds nothing until granted on this service.
    email, key = new_sa(key=True)
    other = sandbox.client("run", "v2", credentials=sandbox.credentials(key))
    asked = {"permissions": ["run.routes.invoke", "run.services.get"]}
    got = check("run", "v2", "run.projects.locations.services.testIamPermissions",
                other.projects().locations().services().testIamPermissions(resource=name, body=asked).execute())
    assert got.get("permissions", []) == []
    with pytest.raises(HttpError) as denied:
        other.projects().locations().services().getIamPolicy(resource=name).execute()
    assert denied.value.resp.status == 403
    policy = v2.getIamPolicy(resource=name).execute()
    policy["bindings"] = [{"role": "roles/run.invoker", "members": [f"serviceAccount:{email}"]}]
    v2.setIamPolicy(resource=name, body={"policy": policy}).execute()
    time.sleep(sandbox.control("settings")["grantDelayMs"] / 1000 + 0.2)
    got = other.projects().locations().services().testIamPermissions(resource=name, body=asked).execute()
    assert got["permissions"] == ["run.routes.invoke"]
    got = check("run", "v1", "run.projects.locations.services.testIamPermissions",
                run_v1.projects().locations().services().testIamPermissions(resource=name, body=asked).execute())
    assert sorted(got["permissions"]) == ["run.routes.invoke", "run.services.get"]

    # Bad members and unknown resources.
    policy = v2.getIamPolicy(resource=name).execute()
    policy["bindings"] = [{"role": "roles/run.invoker", "members": ["everyone"]}]
    with pytest.raises(HttpError) as bad:
        v2.setIamPolicy(resource=name, body={"policy": policy}).execute()
    assert bad.value.resp.status == 400
    with pytest.raises(HttpError) as missing:
        v2.getIamPolicy(resource=name + "-nope").execute()
    assert missing.value.resp.status == 404

    # A service deleted and made again starts with an empty policy.
    policy = v2.getIamPolicy(resource=name).execute()
    policy["bindings"] = [{"role": "roles/run.invoker", "members": ["allAuthenticatedUsers"]}]
    v2.setIamPolicy(resource=name, body={"policy": policy}).execute()
    ops = run_v2.projects().locations().operations()
    wait_operation(ops.get, v2.delete(name=name).execute()["name"])
    parent, service_id = name.rsplit("/services/", 1)
    body = {"template": {"containers": [{"image": "busybox", "command": ["sh", "-c", "sleep 600"]}]}}
    v2.create(parent=parent, serviceId=service_id, body=body).execute()
    assert "bindings" not in v2.getIamPolicy(resource=name).execute()
    wait_operation(ops.get, v2.delete(name=name).execute()["name"])


def test_job_iam(sandbox, run_v1, run_v2):
    parent = f"projects/{sandbox.project}/locations/{REGION}"
    job_id = unique("job")
    body = {"template": {"template": {"containers": [{"image": "busybox", "command": ["true"]}]}}}
    run_v2.projects().locations().jobs().create(parent=parent, jobId=job_id, body=body).execute()
    name = f"{parent}/jobs/{job_id}"
    jobs = run_v2.projects().locations().jobs()
    policy = check("run", "v2", "run.projects.locations.jobs.getIamPolicy", jobs.getIamPolicy(resource=name).execute())
    policy["bindings"] = [{"role": "roles/run.invoker", "members": ["allAuthenticatedUsers"]}]
    check("run", "v2", "run.projects.locations.jobs.setIamPolicy", jobs.setIamPolicy(resource=name, body={"policy": policy}).execute())
    v1 = check("run", "v1", "run.projects.locations.jobs.getIamPolicy",
               run_v1.projects().locations().jobs().getIamPolicy(resource=name).execute())
    assert v1["bindings"][0]["members"] == ["allAuthenticatedUsers"]
    got = check("run", "v2", "run.projects.locations.jobs.testIamPermissions",
                jobs.testIamPermissions(resource=name, body={"permissions": ["run.jobs.run"]}).execute())
    assert got["permissions"] == ["run.jobs.run"]
    jobs.delete(name=name).execute()
