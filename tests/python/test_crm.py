"""Resource Manager v1: project, project IAM policy (etag, version, member rules), consistency
delays and permission checks."""

import json
import time

import pytest
from googleapiclient.errors import HttpError

from discovery import check


def _error(exc):
    return exc.resp.status, json.loads(exc.content)["error"]


def get_policy(crm, project):
    return crm.projects().getIamPolicy(resource=project, body={"options": {"requestedPolicyVersion": 3}}).execute()


def test_project_get_and_list(sandbox, crm):
    project = check("cloudresourcemanager", "v1", "cloudresourcemanager.projects.get",
                    crm.projects().get(projectId=sandbox.project).execute())
    assert project["projectId"] == sandbox.project and project["lifecycleState"] == "ACTIVE"
    assert len(project["projectNumber"]) == 12
    listed = check("cloudresourcemanager", "v1", "cloudresourcemanager.projects.list", crm.projects().list().execute())
    assert {p["projectId"] for p in listed["projects"]} >= {sandbox.project, sandbox.other_project}
    with pytest.raises(HttpError) as exc:
        crm.projects().get(projectId="no-such-project").execute()
    assert _error(exc.value)[0] == 403


def test_policy_roundtrip_and_stale_etag(sandbox, crm, new_sa):
    email = new_sa()
    policy = check("cloudresourcemanager", "v1", "cloudresourcemanager.projects.getIamPolicy", get_policy(crm, sandbox.project))
    assert policy["version"] in (1, 3)
    assert f"serviceAccount:{sandbox.operator_email}" in next(b for b in policy["bindings"] if b["role"] == "roles/owner")["members"]
    stale = dict(policy)
    policy["bindings"].append({"role": "roles/viewer", "members": [f"serviceAccount:{email}"]})
    updated = check("cloudresourcemanager", "v1", "cloudresourcemanager.projects.setIamPolicy", crm.projects().setIamPolicy(
        resource=sandbox.project, body={"policy": policy, "updateMask": "bindings,etag"}).execute())
    assert updated["etag"] != policy["etag"]
    assert any(b["role"] == "roles/viewer" and f"serviceAccount:{email}" in b["members"] for b in updated["bindings"])

    # A write with the etag read before the last write: 409 ABORTED.
    with pytest.raises(HttpError) as exc:
        crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": stale}).execute()
    status, err = _error(exc.value)
    assert (status, err["status"]) == (409, "ABORTED")
    assert "concurrent policy changes" in err["message"]


@pytest.mark.parametrize("member", ["someone@example.com", "user:", "robot:x@y.com", "domain:"])
def test_member_format_rules(sandbox, crm, member):
    policy = get_policy(crm, sandbox.project)
    policy["bindings"].append({"role": "roles/viewer", "members": [member]})
    with pytest.raises(HttpError) as exc:
        crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": policy}).execute()
    assert _error(exc.value)[:1] == (400,)
    assert _error(exc.value)[1]["status"] == "INVALID_ARGUMENT"


def test_unknown_role_is_rejected(sandbox, crm):
    policy = get_policy(crm, sandbox.project)
    policy["bindings"].append({"role": "roles/run.superuser", "members": ["user:a@example.com"]})
    with pytest.raises(HttpError) as exc:
        crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": policy}).execute()
    assert _error(exc.value)[1]["status"] == "INVALID_ARGUMENT"


def test_new_service_account_does_not_exist_for_a_moment(sandbox, crm, new_sa):
    delay = sandbox.control("settings")["saVisibilityMs"] / 1000
    assert delay > 0, "consistency delay is on by default"
    email = new_sa(wait=False)
    policy = get_policy(crm, sandbox.project)
    policy["bindings"].append({"role": "roles/viewer", "members": [f"serviceAccount:{email}"]})
    with pytest.raises(HttpError) as exc:
        crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": policy}).execute()
    status, err = _error(exc.value)
    assert (status, err["status"]) == (400, "INVALID_ARGUMENT")
    assert err["message"] == f"Service account {email} does not exist."
    time.sleep(delay + 0.2)
    crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": policy}).execute()


def test_new_grant_takes_a_moment_to_apply(sandbox, crm, new_sa):
    email, info = new_sa(key=True)
    as_sa = sandbox.client("cloudresourcemanager", "v1", sandbox.credentials(info))
    permission = "resourcemanager.projects.get"
    body = {"permissions": [permission]}
    assert as_sa.projects().testIamPermissions(resource=sandbox.project, body=body).execute() == {}
    policy = get_policy(crm, sandbox.project)
    policy["bindings"].append({"role": "roles/browser", "members": [f"serviceAccount:{email}"]})
    crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": policy}).execute()
    # Right after the grant it does not count yet ...
    assert as_sa.projects().testIamPermissions(resource=sandbox.project, body=body).execute() == {}
    with pytest.raises(HttpError) as exc:
        as_sa.projects().get(projectId=sandbox.project).execute()
    assert _error(exc.value)[1]["status"] == "PERMISSION_DENIED"
    # ... and after the propagation delay it does.
    time.sleep(sandbox.control("settings")["grantDelayMs"] / 1000 + 0.2)
    tested = check("cloudresourcemanager", "v1", "cloudresourcemanager.projects.testIamPermissions",
                   as_sa.projects().testIamPermissions(resource=sandbox.project, body=body).execute())
    assert tested == {"permissions": [permission]}
    assert as_sa.projects().get(projectId=sandbox.project).execute()["projectId"] == sandbox.project


def test_url_safe_etag_is_the_same_etag(sandbox, crm, new_sa):
    """Regression: `etag` is a bytes field and gcloud (apitools) sends it in the URL-safe base64
    alphabet; Google decodes either alphabet. The sandbox compared text and answered 409 whenever
    the etag held a `+` or `/`. Writes until such an etag comes up (each write rotates it)."""
    email = new_sa()
    member = f"serviceAccount:{email}"
    seen_special = False
    for attempt in range(64):
        policy = get_policy(crm, sandbox.project)
        etag = policy["etag"]
        policy["etag"] = etag.replace("+", "-").replace("/", "_")
        seen_special = seen_special or policy["etag"] != etag
        binding = next((b for b in policy.get("bindings", []) if b["role"] == "roles/viewer"), None)
        if binding is None:
            policy.setdefault("bindings", []).append({"role": "roles/viewer", "members": [member]})
        elif member in binding["members"]:
            binding["members"].remove(member)
        else:
            binding["members"].append(member)
        crm.projects().setIamPolicy(resource=sandbox.project, body={"policy": policy}).execute()
        if seen_special and attempt >= 3:
            break
    assert seen_special, "no etag with + or / came up in 64 writes"
