"""The sandbox's token surfaces judged by Google's own google-auth: it loads each credential
file type the sandbox hands out or that CI writes (authorized_user, external_account with a
file-sourced subject token, with and without impersonation, impersonated_service_account),
refreshes against the sandbox, and calls APIs with the result through
google-api-python-client. Also the quota-project rule for user principals and the Token
Creator check of iamcredentials.

Where google-auth itself would go to Google's hosts whatever the file says, its own public API
points it at the sandbox instead: authorized_user files always use Google's token endpoint
(`from_authorized_user_info`, "always overrides"; `with_token_uri` redirects it);
`load_credentials_from_file` looks up an external account's project at Google's Resource
Manager (so the type's own `identity_pool.Credentials.from_info` is used); and an
impersonated_service_account file's URL only names the target (`iam_endpoint_override` is the
constructor's)."""

import json

import time

import google.auth
import google.auth.transport.requests
import pytest
from google.auth import identity_pool, impersonated_credentials
from google.oauth2 import service_account
from googleapiclient.errors import HttpError

from conftest import SCOPES, unique


def _load(tmp_path, info, name="creds.json", quota_project=None):
    path = tmp_path / name
    path.write_text(json.dumps(info))
    if info["type"] == "external_account":
        creds = identity_pool.Credentials.from_file(str(path), scopes=SCOPES)
    else:
        creds, _ = google.auth.load_credentials_from_file(
            str(path), scopes=SCOPES, quota_project_id=quota_project)
    if info["type"] == "authorized_user":
        # google-auth always uses Google's token endpoint for authorized_user files
        # (`from_authorized_user_info`: "always overrides"); its own API points it elsewhere.
        creds = creds.with_token_uri(info["token_uri"])
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.token and creds.valid
    return creds


def _user(sandbox, roles=("roles/owner",), quota=None):
    body = {"email": f"{unique('u')}@example.com", "roles": list(roles), "project": sandbox.project}
    if quota:
        body["quotaProject"] = quota
    return sandbox.control("users", body)


def _assert_acts_as(sandbox, creds, email):
    """The token is the service account's: a call it holds no role for is denied, and the
    sandbox's denial log names the account as the caller."""
    with pytest.raises(HttpError) as exc:
        sandbox.client("iam", "v1", credentials=creds).projects().serviceAccounts().list(
            name=f"projects/{sandbox.other_project}").execute()
    assert exc.value.resp.status == 403
    assert sandbox.control("denied")["denied"][-1]["caller"] == email


def _grant_on_sa(sandbox, iam, email, role, member):
    name = f"projects/-/serviceAccounts/{email}"
    policy = iam.projects().serviceAccounts().getIamPolicy(resource=name).execute()
    policy.setdefault("bindings", []).append({"role": role, "members": [member]})
    iam.projects().serviceAccounts().setIamPolicy(resource=name, body={"policy": policy}).execute()
    # Grants take effect after the sandbox's propagation delay, as on Google.
    time.sleep(sandbox.control("settings")["grantDelayMs"] / 1000 + 0.1)


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
    # A quota project the user may not use (no role on other-project).
    creds = _load(tmp_path, info, quota_project=sandbox.other_project)
    su = sandbox.client("serviceusage", "v1", credentials=creds)
    with pytest.raises(HttpError) as exc:
        su.services().get(name=name).execute()
    assert "serviceusage.services.use" in json.loads(exc.value.content)["error"]["message"]


def test_bad_refresh_token_is_invalid_grant(sandbox, tmp_path):
    info = dict(_user(sandbox), refresh_token="1//not-issued")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(info))
    creds, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    creds = creds.with_token_uri(info["token_uri"])
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
    _assert_acts_as(sandbox, creds, email)


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
    creds = identity_pool.Credentials.from_file(str(path), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.GoogleAuthError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "invalid_grant" in str(exc.value)
    (tmp_path / "good").write_text(token)
    wrong = audience.replace("/providers/ci", "/providers/other")
    path.write_text(json.dumps(_external(sandbox, wrong, None, {"file": str(tmp_path / "good")})))
    creds = identity_pool.Credentials.from_file(str(path), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.GoogleAuthError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "invalid_target" in str(exc.value)


def test_impersonated_service_account_needs_token_creator(sandbox, iam, new_sa):
    source_email, source_key = new_sa(key=True)
    email = new_sa()
    url = f"{sandbox.url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"

    def impersonated():
        source = service_account.Credentials.from_service_account_info(source_key, scopes=SCOPES)
        return impersonated_credentials.Credentials(
            source_credentials=source, target_principal=email, target_scopes=SCOPES,
            delegates=[], iam_endpoint_override=url)

    creds = impersonated()
    with pytest.raises(google.auth.exceptions.RefreshError) as exc:
        creds.refresh(google.auth.transport.requests.Request())
    assert "iam.serviceAccounts.getAccessToken" in str(exc.value)
    _grant_on_sa(sandbox, iam, email, "roles/iam.serviceAccountTokenCreator", "serviceAccount:" + source_email)
    creds = impersonated()
    creds.refresh(google.auth.transport.requests.Request())
    _assert_acts_as(sandbox, creds, email)
