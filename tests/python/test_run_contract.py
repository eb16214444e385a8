"""Cloud Run's container contract in the sandbox (issue 14), seen from inside job tasks by
Google's own discovery client: each task has its own network namespace (two tasks bind 8080 at
once), the documented CLOUD_RUN_* env, Google's host names over TLS with the sandbox's CA, and
the metadata server (google-auth's compute-engine credentials, unpatched)."""

import os

import pytest

from test_run_v2 import completed, create_job, logs, run_and_wait, shell_job

PROBE = r'''
import json, os, socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1)
time.sleep(1.5)  # both tasks hold 8080 at the same time
import google.auth
from googleapiclient.discovery import build
creds, project = google.auth.default()
run = build("run", "v2", credentials=creds)
jobs = run.projects().locations().jobs().list(parent=f"projects/{project}/locations/us-central1").execute()
import requests
md = "http://metadata.google.internal/computeMetadata/v1/"
h = {"Metadata-Flavor": "Google"}
print("CONTRACT " + json.dumps({
    "env": {k: v for k, v in os.environ.items() if k.startswith("CLOUD_RUN_") or k in ("PORT", "GOOGLE_APPLICATION_CREDENTIALS")},
    "creds": type(creds).__module__,
    "project": project,
    "jobs": len(jobs.get("jobs", [])),
    "email": requests.get(md + "instance/service-accounts/default/email", headers=h).text,
    "region": requests.get(md + "instance/region", headers=h).text,
    "number": requests.get(md + "project/numeric-project-id", headers=h).text,
    "no_flavor": requests.get(md + "project/project-id").status_code,
}))
'''


def netns_available():
    return os.geteuid() == 0 and any(os.path.exists(p) for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"))


@pytest.mark.skipif(not netns_available(), reason="needs root and ip netns (the sandbox falls back to loopback)")
def test_job_tasks_get_cloud_runs_contract(sandbox, run_v2):
    python = os.path.join(os.environ.get("BOOTSTRAP_VENV", ".venv"), "bin", "python")
    # The operator (project owner) as the runtime account, so that its token may list jobs.
    body = shell_job(f'exec {python} -c "$PROBE"', env=[{"name": "PROBE", "value": PROBE}],
                     service_account=sandbox.operator_email)
    body["template"]["taskCount"] = 2
    body["template"]["parallelism"] = 2
    name, _ = create_job(sandbox, run_v2, body)
    ex = run_and_wait(run_v2, name, timeout=120)
    text = logs(sandbox, ex["name"])
    assert completed(ex)["state"] == "CONDITION_SUCCEEDED", text
    assert ex["succeededCount"] == 2, text
    seen = [__import__("json").loads(line.split("CONTRACT ", 1)[1]) for line in text.splitlines() if "CONTRACT " in line]
    assert len(seen) == 2, text
    assert sorted(s["env"]["CLOUD_RUN_TASK_INDEX"] for s in seen) == ["0", "1"]
    for s in seen:
        env = s["env"]
        assert env["CLOUD_RUN_JOB"] == name.rsplit("/", 1)[1]
        assert env["CLOUD_RUN_EXECUTION"] == ex["name"].rsplit("/", 1)[1]
        assert env["CLOUD_RUN_TASK_COUNT"] == "2" and env["CLOUD_RUN_TASK_ATTEMPT"] == "0"
        assert "PORT" not in env and "GOOGLE_APPLICATION_CREDENTIALS" not in env
        assert s["creds"] == "google.auth.compute_engine.credentials"
        assert s["project"] == sandbox.project and s["jobs"] >= 1
        assert s["email"] == sandbox.operator_email
        assert s["region"] == f"projects/{s['number']}/regions/us-central1"
        assert s["no_flavor"] == 403
