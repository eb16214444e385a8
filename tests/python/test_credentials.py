"""The sandbox's token surfaces judged by Google's own google-auth: it loads each credential
file type the sandbox hands out or that CI writes (authorized_user, external_account with a
file- or URL-sourced subject token and impersonation, impersonated_service_account) with
`google.auth.load_credentials_from_file`, refreshes against the sandbox, and calls APIs with
the result through google-api-python-client. Also the quota-project rule for user principals
and the Token Creator check of iamcredentials."""

import json

import google.auth
import google.auth.transport.requests
import pytest
from googleapiclient.errors import HttpError

from conftest import SCOPES, unique


def _load(tmp_path, info, name="creds.json", quota_project=None):
    path = tmp_path / name
    path.write_text(json.dumps(info))
    creds, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES, quota_project_id=quota_project)
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.token and creds.valid
    return creds


def _user(sandbox, roles=("roles/owner",), quota=None):
    body = {"email": f"{unique('u')}@example.com", "roles": list(roles)}
    if quota:
        body["quotaProject"] = quota
    return sandbox.control("users", body)


def _grant_on_sa(sandbox, iam, email, role, member):
    name = f"projects/-/serviceAccounts/{email}"
    policy = iam.projects().serviceAccounts().getIamPolicy(resource=name).execute()
    policy.setdefault("bindings", []).append({"role": role, "members": [member]})
    iam.projects().serviceAccounts().setIamPolicy(resource=name, body={"policy": policy}).execute()


def test_authorized_user_refreshes_and_needs_a_quota_project(sandbox, tmp_path):
    info = _user(sandbox)
    assert info["type"] == "authorized_user" and info["token_uri"] == f"{sandbox.url}/token"
    creds = _load(tmp_path, info)
    su = sandbox.client("serviceusage", "v1", credentials=creds)
    name = f"projects/{sandbox.project}/services/iam.googleapis.com"
    with pytest.raises(HttpError) as exc:
        su.services().get(name=name).execute()
    err = json.loads(exc.value.content)["error"]
    assert exc.value.resp.status == 403 and "requires a quota project" in err["message"]
    info_detail = [d for d in err["details"] if d["@type"].endswith("ErrorInfo")][0]
    assert info_detail["reason"] == "SERVICE_DISABLED"
    assert info_detail["metadata"]["consumer"] == "projects/764086051850"
    # google-auth sends x-goog-user-project for quota_project_id; then the call works.
    creds = _load(tmp_path, info, quota_project=sandbox.project)
    su = sandbox.client("serviceusage", "v1", credentials=creds)
    assert su.services().get(name=name).execute()["state"] == "ENABLED"
    # A quota project the user may not use.
    creds = _load(tmp_path, info, quota_project=sandbox.other_project)
    other = _user(sandbox)  # no roles on other-project either
    creds = _load(tmp_path, other, quota_project=sandbox.other_project)
    su = sandbox.client("serviceusage", "v1", credentials=creds)
    with pytest.raises(HttpError) as exc:
        su.services().get(name=name).execute()
    assert "serviceusage.services.use" in json.loads(exc.value.content)["error"]["message"]


def test_bad_refresh_token_is_invalid_grant(sandbox, tmp_path):
    info = dict(_user(sandbox), refresh_token="1//not-issued")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(info))
    creds, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.RefreshError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "invalid_grant" in str(exc.value)


def _federation(sandbox, iam, new_sa, subject):
    provider = sandbox.control("workload-identity", {"pool": unique("pool"), "provider": "ci"})
    email = new_sa()
    _grant_on_sa(sandbox, iam, email, "roles/iam.workloadIdentityUser",
                 provider["principalPrefix"] + subject)
    token = sandbox.control("oidc/token", {"sub": subject, "aud": provider["audience"]})["token"]
    return provider["audience"], email, token


def _external(sandbox, audience, email, source):
    info = {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{sandbox.url}/v1/token",
        "credential_source": source,
    }
    if email:
        info["service_account_impersonation_url"] = (
            f"{sandbox.url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken")
    return info


def test_external_account_file_sourced_with_impersonation(sandbox, iam, new_sa, tmp_path):
    audience, email, token = _federation(sandbox, iam, new_sa, "repo:acme/x:ref:refs/heads/main")
    (tmp_path / "token").write_text(token)
    creds = _load(tmp_path, _external(sandbox, audience, email, {"file": str(tmp_path / "token")}))
    # The impersonated token acts as the service account: it can read itself.
    got = sandbox.client("iam", "v1", credentials=creds).projects().serviceAccounts().get(
        name=f"projects/-/serviceAccounts/{email}").execute()
    assert got["email"] == email


def test_external_account_without_impersonation_is_the_federated_principal(sandbox, iam, new_sa, tmp_path):
    audience, email, token = _federation(sandbox, iam, new_sa, "repo:acme/y:ref:refs/heads/main")
    (tmp_path / "token.json").write_text(json.dumps({"id_token": token}))
    creds = _load(tmp_path, _external(sandbox, audience, None, {
        "file": str(tmp_path / "token.json"),
        "format": {"type": "json", "subject_token_field_name": "id_token"}}))
    # The federated principal holds no project role, so IAM denies it (but authenticates it).
    with pytest.raises(HttpError) as exc:
        sandbox.client("iam", "v1", credentials=creds).projects().serviceAccounts().list(
            name=f"projects/{sandbox.project}").execute()
    assert exc.value.resp.status == 403


def test_sts_refuses_wrong_audience_and_forged_tokens(sandbox, iam, new_sa, tmp_path):
    audience, email, token = _federation(sandbox, iam, new_sa, "repo:acme/z:ref:refs/heads/main")
    forged = token[: token.rindex(".")] + ".AAAA"
    (tmp_path / "forged").write_text(forged)
    path = tmp_path / "ext.json"
    path.write_text(json.dumps(_external(sandbox, audience, None, {"file": str(tmp_path / "forged")})))
    creds, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.RefreshError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "invalid_grant" in str(exc.value)
    (tmp_path / "good").write_text(token)
    wrong = audience.replace("/providers/ci", "/providers/other")
    path.write_text(json.dumps(_external(sandbox, wrong, None, {"file": str(tmp_path / "good")})))
    creds, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.RefreshError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "invalid_target" in str(exc.value)


def test_impersonated_service_account_file_needs_token_creator(sandbox, iam, new_sa, tmp_path):
    email = new_sa()
    user = _user(sandbox, roles=())
    info = {
        "type": "impersonated_service_account",
        "delegates": [],
        "service_account_impersonation_url":
            f"{sandbox.url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        "source_credentials": user,
    }
    path = tmp_path / "imp.json"
    path.write_text(json.dumps(info))
    creds, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.RefreshError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "iam.serviceAccounts.getAccessToken" in str(exc.value)
    _grant_on_sa(sandbox, iam, email, "roles/iam.serviceAccountTokenCreator", "user:" + user["account"])
    creds = _load(tmp_path, info, name="imp2.json")
    got = sandbox.client("iam", "v1", credentials=creds).projects().serviceAccounts().get(
        name=f"projects/-/serviceAccounts/{email}").execute()
    assert got["email"] == email
