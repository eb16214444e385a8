"""Cloud Run v2 worker pools through Google's own client (run.v2.json
`projects.locations.workerPools`): every answer checked against the discovery schema, and
`scaling.manualInstanceCount` checked against the processes the sandbox really runs."""

import time
import urllib.request

import pytest
from googleapiclient.errors import HttpError

from conftest import unique, wait_operation
from discovery import check

REGION = "us-central1"
M = "run.projects.locations.workerPools."


def parent(sandbox):
    return f"projects/{sandbox.project}/locations/{REGION}"


def pool_body(count, marker="v1"):
    # Prints the worker-pool contract it sees, then stays up like a pull worker.
    script = (f'echo "{marker} pool=$CLOUD_RUN_WORKER_POOL rev=$CLOUD_RUN_WORKER_POOL_REVISION '
              'port=${PORT:-none}"; exec sleep 3600')
    return {
        "labels": {"managed-by": "pytest"},
        "scaling": {"manualInstanceCount": count},
        "template": {"containers": [{"image": "busybox", "command": ["sh", "-c", script]}]},
    }


def instances(sandbox, name):
    pools = {p["name"]: p for p in sandbox.control("run/workerPools")["workerPools"]}
    return pools.get(name, {}).get("instances", [])


def logs(sandbox, name):
    with urllib.request.urlopen(f"{sandbox.url}/_sandbox/logs/{name}", timeout=10) as resp:
        return resp.read().decode()


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def done_ok(run_v2, op, timeout=60):
    ops = run_v2.projects().locations().operations()
    done = check("run", "v2", "run.projects.locations.operations.get",
                 wait_operation(ops.get, op["name"], timeout=timeout))
    assert "error" not in done, done
    assert done["response"]["@type"] == "type.googleapis.com/google.cloud.run.v2.WorkerPool"
    return done["response"]


def test_instances_follow_the_count_and_a_count_change_keeps_the_revision(sandbox, run_v2):
    pools = run_v2.projects().locations().workerPools()
    pool_id = unique("wp")
    name = f"{parent(sandbox)}/workerPools/{pool_id}"
    op = check("run", "v2", M + "create",
               pools.create(parent=parent(sandbox), workerPoolId=pool_id, body=pool_body(2)).execute())
    assert op["done"] is False
    done_ok(run_v2, op)
    pool = check("run", "v2", M + "get", pools.get(name=name).execute())
    assert pool["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    assert pool["reconciling"] is False
    assert pool["generation"] == "1" and pool["observedGeneration"] == "1"
    assert pool["latestReadyRevision"] == pool["latestCreatedRevision"]
    assert "-00001-" in pool["latestCreatedRevision"]
    assert pool["uid"] and pool["etag"] and pool["createTime"] and pool["creator"] == sandbox.operator_email
    assert pool["scaling"]["manualInstanceCount"] == 2
    assert pool["template"]["serviceAccount"].endswith("-compute@developer.gserviceaccount.com")
    assert pool["instanceSplitStatuses"][0]["percent"] == 100

    running = instances(sandbox, name)
    assert len(running) == 2 and all(i["state"] == "running" for i in running), running
    revision = pool["latestCreatedRevision"].rsplit("/", 1)[1]
    text = wait_for(lambda: logs(sandbox, name) if logs(sandbox, name).count("v1 pool=") >= 2 else None,
                    "both instances' first line")
    # The worker-pool contract: CLOUD_RUN_WORKER_POOL{,_REVISION}, and no PORT.
    assert f"v1 pool={pool_id} rev={revision} port=none" in text, text

    # A count change alone is an in-place update: same revision, one instance stopped.
    pids = {i["pid"] for i in running}
    op = check("run", "v2", M + "patch",
               pools.patch(name=name, updateMask="scaling.manualInstanceCount",
                           body={"scaling": {"manualInstanceCount": 1}}).execute())
    resized = done_ok(run_v2, op)
    assert resized["latestCreatedRevision"] == pool["latestCreatedRevision"]
    pool = check("run", "v2", M + "get", pools.get(name=name).execute())
    assert pool["generation"] == "2" and pool["observedGeneration"] == "2"
    assert pool["labels"] == {"managed-by": "pytest"}, "the mask kept the other fields"
    assert pool["template"]["containers"][0]["image"] == "busybox"
    running = instances(sandbox, name)
    assert len(running) == 1 and running[0]["pid"] in pids, (running, pids)

    # Zero stops every instance.
    done_ok(run_v2, pools.patch(name=name, updateMask="scaling.manualInstanceCount",
                                body={"scaling": {"manualInstanceCount": 0}}).execute())
    assert instances(sandbox, name) == []
    assert pools.get(name=name).execute()["scaling"]["manualInstanceCount"] == 0

    # A template change is a new revision, whose instances replace the old ones.
    done_ok(run_v2, pools.patch(name=name, body=pool_body(1, marker="v2")).execute())
    pool = check("run", "v2", M + "get", pools.get(name=name).execute())
    assert "-00002-" in pool["latestCreatedRevision"]
    assert pool["latestReadyRevision"] == pool["latestCreatedRevision"]
    running = instances(sandbox, name)
    assert len(running) == 1 and running[0]["revision"] == pool["latestCreatedRevision"].rsplit("/", 1)[1]
    wait_for(lambda: "v2 pool=" in logs(sandbox, name), "the new revision's output")

    listed = check("run", "v2", M + "list", pools.list(parent=parent(sandbox)).execute())
    assert name in [p["name"] for p in listed["workerPools"]]

    # Delete: a stale etag is refused; the delete stops the instances before it is done.
    with pytest.raises(HttpError) as stale:
        pools.delete(name=name, etag='"stale"').execute()
    assert stale.value.resp.status == 409
    op = check("run", "v2", M + "delete", pools.delete(name=name, etag=pool["etag"]).execute())
    gone = done_ok(run_v2, op)
    assert gone["deleteTime"]
    assert instances(sandbox, name) == []
    with pytest.raises(HttpError) as missing:
        pools.get(name=name).execute()
    assert missing.value.resp.status == 404


def test_validate_only_allow_missing_bad_input_and_iam(sandbox, run_v2):
    pools = run_v2.projects().locations().workerPools()
    pool_id = unique("wp")
    name = f"{parent(sandbox)}/workerPools/{pool_id}"
    checked = check("run", "v2", M + "create",
                    pools.create(parent=parent(sandbox), workerPoolId=pool_id, validateOnly=True,
                                 body=pool_body(1)).execute())
    assert checked["done"] is True and checked["response"]["name"] == name
    with pytest.raises(HttpError) as absent:
        pools.get(name=name).execute()
    assert absent.value.resp.status == 404

    with pytest.raises(HttpError) as negative:
        pools.create(parent=parent(sandbox), workerPoolId=pool_id, body=pool_body(-1)).execute()
    assert negative.value.resp.status == 400
    with pytest.raises(HttpError) as bad_id:
        pools.create(parent=parent(sandbox), workerPoolId="Bad_Id", body=pool_body(1)).execute()
    assert bad_id.value.resp.status == 400
    with pytest.raises(HttpError) as no_pool:
        pools.patch(name=name, body=pool_body(1)).execute()
    assert no_pool.value.resp.status == 404

    # allowMissing creates; a second create is a conflict.
    done_ok(run_v2, pools.patch(name=name, allowMissing=True, body=pool_body(1)).execute())
    assert len(instances(sandbox, name)) == 1
    with pytest.raises(HttpError) as dup:
        pools.create(parent=parent(sandbox), workerPoolId=pool_id, body=pool_body(1)).execute()
    assert dup.value.resp.status == 409

    policy = check("run", "v2", M + "getIamPolicy", pools.getIamPolicy(resource=name).execute())
    assert policy.get("bindings", []) == []
    member = "user:someone@example.com"
    set_ = check("run", "v2", M + "setIamPolicy", pools.setIamPolicy(resource=name, body={
        "policy": {"bindings": [{"role": "roles/run.developer", "members": [member]}],
                   "etag": policy["etag"]}}).execute())
    assert set_["bindings"][0]["members"] == [member]
    held = check("run", "v2", M + "testIamPermissions", pools.testIamPermissions(resource=name, body={
        "permissions": ["run.workerpools.get", "run.workerpools.update"]}).execute())
    assert held["permissions"] == ["run.workerpools.get", "run.workerpools.update"]

    done_ok(run_v2, pools.delete(name=name).execute())
    assert instances(sandbox, name) == []
