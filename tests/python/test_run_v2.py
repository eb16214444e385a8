"""Cloud Run Admin v2 through Google's own client: jobs whose executions really run processes
(exit codes, maxRetries, timeout, cancel, secrets, logs), services whose containers really run
(ready, restarted, failing to start), operations, permissions, and the schema of every answer."""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest
from googleapiclient.errors import HttpError

from conftest import unique, wait_operation
from discovery import check

REGION = "us-central1"


def parent(sandbox):
    return f"projects/{sandbox.project}/locations/{REGION}"


def shell_job(script, max_retries=0, timeout="60s", env=None, service_account=None):
    task = {
        "containers": [{
            "image": "busybox",
            "command": ["sh", "-c"],
            "args": [script],
            "env": env or [],
        }],
        "maxRetries": max_retries,
        "timeout": timeout,
    }
    if service_account:
        task["serviceAccount"] = service_account
    return {"client": "pytest", "template": {"template": task}}


def create_job(sandbox, run_v2, body):
    jobs = run_v2.projects().locations().jobs()
    job_id = unique("job")
    op = check("run", "v2", "run.projects.locations.jobs.create",
               jobs.create(parent=parent(sandbox), jobId=job_id, body=body).execute())
    ops = run_v2.projects().locations().operations()
    done = check("run", "v2", "run.projects.locations.operations.get", wait_operation(ops.get, op["name"]))
    return f"{parent(sandbox)}/jobs/{job_id}", done


def run_and_wait(run_v2, job_name, body=None, timeout=60):
    jobs = run_v2.projects().locations().jobs()
    op = check("run", "v2", "run.projects.locations.jobs.run", jobs.run(name=job_name, body=body or {}).execute())
    exec_name = op["metadata"]["name"]
    executions = jobs.executions()
    deadline = time.monotonic() + timeout
    while True:
        ex = check("run", "v2", "run.projects.locations.jobs.executions.get", executions.get(name=exec_name).execute())
        if ex.get("completionTime"):
            return ex
        assert time.monotonic() < deadline, f"execution {exec_name} still running: {ex}"
        time.sleep(0.2)


def completed(ex):
    return next(c for c in ex["conditions"] if c["type"] == "Completed")


def logs(sandbox, name):
    with urllib.request.urlopen(f"{sandbox.url}/_sandbox/logs/{name}", timeout=10) as resp:
        return resp.read().decode()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return ") Z " not in f.read()
    except FileNotFoundError:
        return False


def test_job_execution_runs_a_process_success_and_failure(sandbox, run_v2):
    name, op = create_job(sandbox, run_v2, shell_job('echo "hello from task $CLOUD_RUN_TASK_INDEX"; exit ${CODE:-0}'))
    assert "error" not in op and op["response"]["name"] == name
    jobs = run_v2.projects().locations().jobs()
    job = check("run", "v2", "run.projects.locations.jobs.get", jobs.get(name=name).execute())
    assert job["terminalCondition"]["type"] == "Ready"
    assert job["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    assert job["generation"] == job["observedGeneration"] == "1"
    assert job["creator"] == sandbox.operator_email and job["uid"] and job["etag"]
    assert job["client"] == "pytest"

    ok = run_and_wait(run_v2, name)
    assert ok["succeededCount"] == 1 and ok.get("failedCount", 0) == 0
    assert completed(ok)["state"] == "CONDITION_SUCCEEDED"
    assert ok["job"] == name.rsplit("/", 1)[1] and ok["taskCount"] == 1
    assert "hello from task 0" in logs(sandbox, ok["name"])
    assert ok["logUri"].endswith(ok["name"])

    # Overrides: a non-zero exit code fails the task and the execution.
    bad = run_and_wait(run_v2, name, {"overrides": {"containerOverrides": [{"env": [{"name": "CODE", "value": "3"}]}]}})
    assert bad["failedCount"] == 1 and bad.get("succeededCount", 0) == 0
    assert completed(bad)["state"] == "CONDITION_FAILED"
    assert "exit(3)" in completed(bad)["message"]
    tasks = jobs.executions().tasks()
    listed = check("run", "v2", "run.projects.locations.jobs.executions.tasks.list", tasks.list(parent=bad["name"]).execute())
    assert listed["tasks"][0]["lastAttemptResult"]["exitCode"] == 3
    check("run", "v2", "run.projects.locations.jobs.executions.tasks.get", tasks.get(name=listed["tasks"][0]["name"]).execute())

    job = jobs.get(name=name).execute()
    assert job["executionCount"] == 2
    assert job["latestCreatedExecution"]["name"] == bad["name"]
    assert job["latestCreatedExecution"]["completionStatus"] == "EXECUTION_FAILED"
    listed = check("run", "v2", "run.projects.locations.jobs.executions.list", jobs.executions().list(parent=name).execute())
    assert [e["name"] for e in listed["executions"]] == [bad["name"], ok["name"]]


def test_max_retries_reruns_a_failing_task(sandbox, run_v2):
    name, _ = create_job(sandbox, run_v2, shell_job('echo "attempt $CLOUD_RUN_TASK_ATTEMPT"; exit 1', max_retries=2))
    ex = run_and_wait(run_v2, name)
    assert ex["failedCount"] == 1 and ex["retriedCount"] == 2
    text = logs(sandbox, ex["name"])
    assert all(f"attempt {i}" in text for i in range(3)), text


def test_timeout_kills_the_task(sandbox, run_v2):
    name, _ = create_job(sandbox, run_v2, shell_job("sleep 30", timeout="1s"))
    started = time.monotonic()
    ex = run_and_wait(run_v2, name, timeout=20)
    assert time.monotonic() - started < 15
    assert ex["failedCount"] == 1
    assert "timeout" in completed(ex)["message"]


def test_cancel_kills_the_process(sandbox, run_v2, tmp_path):
    pidfile = tmp_path / "pid"
    name, _ = create_job(sandbox, run_v2, shell_job(f"echo $$ > {pidfile}; sleep 30"))
    jobs = run_v2.projects().locations().jobs()
    op = jobs.run(name=name, body={}).execute()
    exec_name = op["metadata"]["name"]
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert alive(pid)
    check("run", "v2", "run.projects.locations.jobs.executions.cancel",
          jobs.executions().cancel(name=exec_name, body={}).execute())
    deadline = time.monotonic() + 20
    while True:
        ex = jobs.executions().get(name=exec_name).execute()
        if ex.get("completionTime"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ex["cancelledCount"] == 1
    assert completed(ex)["executionReason"] == "CANCELLED"
    assert not alive(pid)
    # Deleting the execution, then the job.
    ops = run_v2.projects().locations().operations()
    wait_operation(ops.get, jobs.executions().delete(name=exec_name).execute()["name"])
    with pytest.raises(HttpError) as gone:
        jobs.executions().get(name=exec_name).execute()
    assert gone.value.resp.status == 404
    wait_operation(ops.get, jobs.delete(name=name).execute()["name"])
    with pytest.raises(HttpError) as gone:
        jobs.get(name=name).execute()
    assert gone.value.resp.status == 404


def test_unknown_image_is_container_missing(sandbox, run_v2):
    body = shell_job("true")
    body["template"]["template"]["containers"][0]["image"] = "us-docker.pkg.dev/nope/nothing/x:1"
    name, op = create_job(sandbox, run_v2, body)
    assert "not found" in op["error"]["message"]
    job = run_v2.projects().locations().jobs().get(name=name).execute()
    assert job["terminalCondition"]["state"] == "CONDITION_FAILED"
    assert job["terminalCondition"]["reason"] == "CONTAINER_MISSING"
    with pytest.raises(HttpError) as dup:
        run_v2.projects().locations().jobs().create(
            parent=parent(sandbox), jobId=name.rsplit("/", 1)[1], body=body).execute()
    assert dup.value.resp.status == 409


def grant_secret_access(secretmanager, secret_name, email):
    secrets = secretmanager.projects().secrets()
    policy = secrets.getIamPolicy(resource=secret_name).execute()
    policy.setdefault("bindings", []).append(
        {"role": "roles/secretmanager.secretAccessor", "members": [f"serviceAccount:{email}"]})
    secrets.setIamPolicy(resource=secret_name, body={"policy": policy}).execute()


def test_secret_env_is_resolved_as_the_runtime_account(sandbox, run_v2, secretmanager, new_sa):
    secrets = secretmanager.projects().secrets()
    secret_id = unique("apikey")
    secret = secrets.create(parent=f"projects/{sandbox.project}", secretId=secret_id,
                            body={"replication": {"automatic": {}}}).execute()
    secrets.addVersion(parent=secret["name"], body={"payload": {"data": base64.b64encode(b"s3cr3t-value").decode()}}).execute()
    runner = new_sa()
    env = [{"name": "API_KEY", "valueSource": {"secretKeyRef": {"secret": secret_id, "version": "latest"}}}]
    # The runtime identity: the metadata server, as on Cloud Run (a container in its own network
    # namespace); a key file where the sandbox runs without namespaces.
    script = ('echo "key=$API_KEY"; if [ -n "$GOOGLE_APPLICATION_CREDENTIALS" ]; then '
              'test -s "$GOOGLE_APPLICATION_CREDENTIALS" && echo has-credentials; else '
              'echo "identity=$(curl -fsS -H "Metadata-Flavor: Google" '
              'http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/email)"; fi')

    # Without secretAccessor the execution fails with Google's message.
    name, _ = create_job(sandbox, run_v2, shell_job(script, env=env, service_account=runner))
    denied = run_and_wait(run_v2, name)
    assert completed(denied)["state"] == "CONDITION_FAILED"
    assert "Permission denied on secret" in completed(denied)["message"]

    grant_secret_access(secretmanager, secret["name"], runner)
    time.sleep(sandbox.control("settings")["grantDelayMs"] / 1000 + 0.2)
    ok = run_and_wait(run_v2, name)
    assert completed(ok)["state"] == "CONDITION_SUCCEEDED", completed(ok)
    text = logs(sandbox, ok["name"])
    assert "key=s3cr3t-value" in text, text
    assert "has-credentials" in text or f"identity={runner}" in text, text


def test_permission_denied_without_run_role(sandbox, new_sa):
    email, key = new_sa(key=True)
    client = sandbox.client("run", "v2", credentials=sandbox.credentials(key))
    with pytest.raises(HttpError) as denied:
        client.projects().locations().jobs().list(parent=parent(sandbox)).execute()
    assert denied.value.resp.status == 403
    assert "run.jobs.list" in json.loads(denied.value.content)["error"]["message"]


def python_service(extra=""):
    # The pytest interpreter serves HTTP; `busybox` maps to host programs.
    return {
        "template": {
            "containers": [{
                "image": "busybox",
                "command": ["sh", "-c"],
                "args": [f'{extra}exec {sys.executable} -m http.server --bind 127.0.0.1 "$PORT"'],
                "startupProbe": {"httpGet": {"path": "/"}, "periodSeconds": 1, "failureThreshold": 20},
            }],
            "scaling": {"minInstanceCount": 1},
        },
    }


def running_services(sandbox):
    return {s["name"]: s for s in sandbox.control("run/services")["services"]}


def test_service_runs_is_restarted_patched_and_deleted(sandbox, run_v2):
    services = run_v2.projects().locations().services()
    ops = run_v2.projects().locations().operations()
    service_id = unique("svc")
    op = check("run", "v2", "run.projects.locations.services.create",
               services.create(parent=parent(sandbox), serviceId=service_id, body=python_service()).execute())
    assert op["done"] is False
    done = wait_operation(ops.get, op["name"], timeout=60)
    assert "error" not in done, done
    name = f"{parent(sandbox)}/services/{service_id}"
    svc = check("run", "v2", "run.projects.locations.services.get", services.get(name=name).execute())
    assert svc["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    assert svc["latestReadyRevision"] == svc["latestCreatedRevision"]
    # Google's is `https://<service>-<hash>-<region code>.a.run.app`, which resolves nowhere
    # here; the sandbox's URL forwards to the container (crates/sandbox/src/run/invoke.rs), and
    # refuses a service that requires IAM for invocation (the sandbox verifies no ID token).
    project, location = parent(sandbox).split("/")[1::2]
    assert svc["uri"].endswith(f"/_sandbox/run/invoke/{project}/{location}/{service_id}"), svc["uri"]
    try:
        urllib.request.urlopen(svc["uri"] + "/health", timeout=10)
        raise AssertionError("an IAM-checked service answered without a token")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    assert svc["template"]["scaling"]["minInstanceCount"] == 1
    assert svc["traffic"][0]["percent"] == 100 and svc["reconciling"] is False

    info = running_services(sandbox)[name]
    with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/", timeout=5) as resp:
        assert resp.status == 200
    # Killing the container's process: the sandbox restarts it, as Cloud Run does.
    os.kill(info["pid"], 9)
    deadline = time.monotonic() + 30
    while True:
        now = running_services(sandbox)[name]
        if now.get("restarts", 0) >= 1 and now.get("ready"):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert now["pid"] != info["pid"]

    with pytest.raises(HttpError) as dup:
        services.create(parent=parent(sandbox), serviceId=service_id, body=python_service()).execute()
    assert dup.value.resp.status == 409

    patched = services.patch(name=name, body=python_service("echo v2; ")).execute()
    wait_operation(ops.get, patched["name"], timeout=60)
    svc = services.get(name=name).execute()
    assert svc["generation"] == "2" and svc["observedGeneration"] == "2"
    assert svc["latestReadyRevision"].endswith(svc["latestCreatedRevision"].rsplit("/", 1)[1])
    assert "-00002-" in svc["latestCreatedRevision"]

    listed = check("run", "v2", "run.projects.locations.services.list", services.list(parent=parent(sandbox)).execute())
    assert name in [s["name"] for s in listed["services"]]
    wait_operation(ops.get, services.delete(name=name).execute()["name"])
    with pytest.raises(HttpError) as gone:
        services.get(name=name).execute()
    assert gone.value.resp.status == 404
    assert name not in running_services(sandbox)


def test_service_whose_container_fails_still_exists(sandbox, run_v2):
    services = run_v2.projects().locations().services()
    ops = run_v2.projects().locations().operations()
    service_id = unique("bad")
    body = {"template": {"containers": [{"image": "busybox", "command": ["sh", "-c", "echo crashing; exit 1"]}]}}
    op = services.create(parent=parent(sandbox), serviceId=service_id, body=body).execute()
    done = wait_operation(ops.get, op["name"], timeout=30)
    assert "failed to start" in done["error"]["message"]
    svc = services.get(name=f"{parent(sandbox)}/services/{service_id}").execute()
    assert svc["terminalCondition"]["state"] == "CONDITION_FAILED"
    with pytest.raises(HttpError) as dup:
        services.create(parent=parent(sandbox), serviceId=service_id, body=body).execute()
    assert dup.value.resp.status == 409
    # allowMissing patch of a new name creates it; validateOnly changes nothing.
    other = unique("svc")
    checked = services.patch(name=f"{parent(sandbox)}/services/{other}", allowMissing=True,
                             validateOnly=True, body=python_service()).execute()
    assert checked["done"] is True
    with pytest.raises(HttpError):
        services.get(name=f"{parent(sandbox)}/services/{other}").execute()
    op = services.patch(name=f"{parent(sandbox)}/services/{other}", allowMissing=True, body=python_service()).execute()
    assert "error" not in wait_operation(ops.get, op["name"], timeout=60)
    wait_operation(ops.get, services.delete(name=f"{parent(sandbox)}/services/{other}").execute()["name"])


def test_operations_list_wait_delete(sandbox, run_v2):
    name, _ = create_job(sandbox, run_v2, shell_job("true"))
    ops = run_v2.projects().locations().operations()
    op = run_v2.projects().locations().jobs().run(name=name, body={}).execute()
    waited = check("run", "v2", "run.projects.locations.operations.wait",
                   ops.wait(name=op["name"], body={"timeout": "30s"}).execute())
    assert waited["done"] is True and waited["response"]["succeededCount"] == 1
    listed = check("run", "v2", "run.projects.locations.operations.list",
                   ops.list(name=parent(sandbox)).execute())
    assert op["name"] in [o["name"] for o in listed["operations"]]
    check("run", "v2", "run.projects.locations.operations.delete", ops.delete(name=op["name"]).execute())
    with pytest.raises(HttpError) as gone:
        ops.get(name=op["name"]).execute()
    assert gone.value.resp.status == 404
