"""Cloud Run v1 jobs (pool type `cloud-run`) through Google's own client: the Knative shapes,
a real execution, cancel, replace, delete, and the one job store shared with v2."""

import time

import pytest
from googleapiclient.errors import HttpError

from conftest import unique
from discovery import check


def v1_job(name, script, timeout_seconds=60):
    # The body prefect-gcp's `cloud-run` worker sends (job_configuration.job_body).
    return {
        "apiVersion": "run.googleapis.com/v1",
        "kind": "Job",
        "metadata": {"name": name, "annotations": {"run.googleapis.com/launch-stage": "BETA"}},
        "spec": {"template": {
            "metadata": {"annotations": {}},
            "spec": {"template": {"spec": {
                "containers": [{
                    "image": "busybox",
                    "command": ["sh", "-c", script],
                    "resources": {"limits": {"cpu": "1000m", "memory": "512Mi"}},
                }],
                "timeoutSeconds": str(timeout_seconds),
            }}},
        }},
    }


def wait_ready(jobs, name, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get(name=name).execute()
        ready = next(c for c in job["status"]["conditions"] if c["type"] == "Ready")
        if ready["status"] != "Unknown":
            return job, ready
        assert time.monotonic() < deadline
        time.sleep(0.1)


def wait_execution(executions, name, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        ex = check("run", "v1", "run.namespaces.executions.get", executions.get(name=name).execute())
        if ex["status"].get("completionTime"):
            return ex
        assert time.monotonic() < deadline, ex
        time.sleep(0.2)


def completed(ex):
    return next(c for c in ex["status"]["conditions"] if c["type"] == "Completed")


def test_v1_job_runs_and_is_shared_with_v2(sandbox, run_v1, run_v2):
    ns = f"namespaces/{sandbox.project}"
    jobs = run_v1.namespaces().jobs()
    job_id = unique("v1job")
    created = check("run", "v1", "run.namespaces.jobs.create",
                    jobs.create(parent=ns, body=v1_job(job_id, "echo v1-ran; exit 0")).execute())
    assert created["kind"] == "Job" and created["metadata"]["name"] == job_id
    name = f"{ns}/jobs/{job_id}"
    job, ready = wait_ready(jobs, name)
    check("run", "v1", "run.namespaces.jobs.get", job)
    assert ready["status"] == "True"
    assert job["metadata"]["annotations"]["run.googleapis.com/launch-stage"] == "BETA"

    ex = check("run", "v1", "run.namespaces.jobs.run", jobs.run(name=name, body={}).execute())
    assert ex["kind"] == "Execution"
    assert ex["metadata"]["labels"]["run.googleapis.com/job"] == job_id
    executions = run_v1.namespaces().executions()
    ex = wait_execution(executions, f"{ns}/executions/{ex['metadata']['name']}")
    assert completed(ex)["status"] == "True" and ex["status"]["succeededCount"] == 1

    # The same job through v2.
    v2 = run_v2.projects().locations().jobs().get(
        name=f"projects/{sandbox.project}/locations/us-central1/jobs/{job_id}").execute()
    assert v2["launchStage"] == "BETA" and v2["executionCount"] == 1
    assert v2["template"]["template"]["timeout"] == "60s"

    listed = check("run", "v1", "run.namespaces.jobs.list", jobs.list(parent=ns).execute())
    assert job_id in [j["metadata"]["name"] for j in listed["items"]]
    listed = check("run", "v1", "run.namespaces.executions.list", executions.list(parent=ns).execute())
    assert ex["metadata"]["name"] in [e["metadata"]["name"] for e in listed["items"]]

    # replaceJob: a failing command now.
    body = v1_job(job_id, "exit 4")
    replaced = check("run", "v1", "run.namespaces.jobs.replaceJob", jobs.replaceJob(name=name, body=body).execute())
    assert replaced["metadata"]["generation"] == 2
    wait_ready(jobs, name)
    ex = jobs.run(name=name, body={}).execute()
    ex = wait_execution(executions, f"{ns}/executions/{ex['metadata']['name']}")
    assert completed(ex)["status"] == "False" and ex["status"]["failedCount"] == 1

    check("run", "v1", "run.namespaces.executions.delete",
          executions.delete(name=f"{ns}/executions/{ex['metadata']['name']}").execute())
    check("run", "v1", "run.namespaces.jobs.delete", jobs.delete(name=name).execute())
    with pytest.raises(HttpError) as gone:
        jobs.get(name=name).execute()
    assert gone.value.resp.status == 404


def test_v1_cancel_and_missing_image(sandbox, run_v1):
    ns = f"namespaces/{sandbox.project}"
    jobs = run_v1.namespaces().jobs()
    job_id = unique("v1job")
    jobs.create(parent=ns, body=v1_job(job_id, "sleep 30")).execute()
    wait_ready(jobs, f"{ns}/jobs/{job_id}")
    ex = jobs.run(name=f"{ns}/jobs/{job_id}", body={}).execute()
    executions = run_v1.namespaces().executions()
    ex_name = f"{ns}/executions/{ex['metadata']['name']}"
    time.sleep(0.5)
    check("run", "v1", "run.namespaces.executions.cancel", executions.cancel(name=ex_name, body={}).execute())
    ex = wait_execution(executions, ex_name)
    assert ex["status"]["cancelledCount"] == 1 and completed(ex)["status"] == "False"

    missing = unique("v1job")
    body = v1_job(missing, "true")
    body["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["image"] = "gcr.io/nope/none:1"
    jobs.create(parent=ns, body=body).execute()
    _, ready = wait_ready(jobs, f"{ns}/jobs/{missing}")
    # prefect-gcp's v1 worker looks for exactly this reason.
    assert ready["status"] == "False" and ready["reason"] == "ContainerMissing"
