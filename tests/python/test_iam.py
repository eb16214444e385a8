"""IAM v1 service accounts and keys, driven by Google's own client and checked against the
discovery schema."""

import base64
import json
import time

import pytest
from googleapiclient.errors import HttpError

from conftest import unique
from discovery import check


def _error(exc):
    body = json.loads(exc.content)
    return exc.resp.status, body["error"]


def sa_name(sandbox, email):
    return f"projects/{sandbox.project}/serviceAccounts/{email}"


def test_service_account_lifecycle(sandbox, iam):
    sas = iam.projects().serviceAccounts()
    account_id = unique("life")
    created = check("iam", "v1", "iam.projects.serviceAccounts.create", sas.create(
        name=f"projects/{sandbox.project}",
        body={"accountId": account_id, "serviceAccount": {"displayName": "Life", "description": "d"}},
    ).execute())
    email = created["email"]
    assert email == f"{account_id}@{sandbox.project}.iam.gserviceaccount.com"
    assert created["displayName"] == "Life" and len(created["uniqueId"]) == 21
    assert created["oauth2ClientId"] == created["uniqueId"]

    got = check("iam", "v1", "iam.projects.serviceAccounts.get", sas.get(name=sa_name(sandbox, email)).execute())
    assert got == created
    # `-` as project wildcard, and the unique id in place of the email, as Google allows.
    assert sas.get(name=f"projects/-/serviceAccounts/{email}").execute()["email"] == email
    assert sas.get(name=f"projects/-/serviceAccounts/{created['uniqueId']}").execute()["email"] == email

    listed = check("iam", "v1", "iam.projects.serviceAccounts.list", sas.list(name=f"projects/{sandbox.project}").execute())
    assert email in [a["email"] for a in listed["accounts"]]

    patched = check("iam", "v1", "iam.projects.serviceAccounts.patch", sas.patch(
        name=sa_name(sandbox, email),
        body={"serviceAccount": {"displayName": "Renamed"}, "updateMask": "displayName"},
    ).execute())
    assert patched["displayName"] == "Renamed" and patched["etag"] != created["etag"]

    with pytest.raises(HttpError) as dup:
        sas.create(name=f"projects/{sandbox.project}", body={"accountId": account_id}).execute()
    status, err = _error(dup.value)
    assert (status, err["status"]) == (409, "ALREADY_EXISTS")

    check("iam", "v1", "iam.projects.serviceAccounts.disable", sas.disable(name=sa_name(sandbox, email), body={}).execute())
    assert sas.get(name=sa_name(sandbox, email)).execute()["disabled"] is True
    check("iam", "v1", "iam.projects.serviceAccounts.enable", sas.enable(name=sa_name(sandbox, email), body={}).execute())

    check("iam", "v1", "iam.projects.serviceAccounts.delete", sas.delete(name=sa_name(sandbox, email)).execute())
    with pytest.raises(HttpError) as gone:
        sas.get(name=sa_name(sandbox, email)).execute()
    assert _error(gone.value)[1]["status"] == "NOT_FOUND"


@pytest.mark.parametrize("bad", ["short", "1starts-with-digit", "Upper-case", "ends-with-", "x" * 31, "under_score"])
def test_account_id_rules(sandbox, iam, bad):
    with pytest.raises(HttpError) as exc:
        iam.projects().serviceAccounts().create(name=f"projects/{sandbox.project}", body={"accountId": bad}).execute()
    status, err = _error(exc.value)
    assert (status, err["status"]) == (400, "INVALID_ARGUMENT")
    assert bad in err["message"]


def test_key_lifecycle_and_key_authenticates(sandbox, iam, new_sa):
    email = new_sa()
    keys = iam.projects().serviceAccounts().keys()
    created = check("iam", "v1", "iam.projects.serviceAccounts.keys.create",
                    keys.create(name=sa_name(sandbox, email), body={"privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE"}).execute())
    info = json.loads(base64.b64decode(created["privateKeyData"]))
    assert info["private_key"].startswith("-----BEGIN " "PRIVATE KEY-----")
    assert info["token_uri"] == f"{sandbox.url}/token"
    assert info["client_email"] == email and info["type"] == "service_account"
    key_id = created["name"].rsplit("/", 1)[1]
    assert info["private_key_id"] == key_id and len(key_id) == 40

    listed = check("iam", "v1", "iam.projects.serviceAccounts.keys.list",
                   keys.list(name=sa_name(sandbox, email), keyTypes="USER_MANAGED").execute())
    assert [k["name"] for k in listed["keys"]] == [created["name"]]
    assert "privateKeyData" not in listed["keys"][0]
    assert keys.list(name=sa_name(sandbox, email), keyTypes="SYSTEM_MANAGED").execute() == {}
    got = check("iam", "v1", "iam.projects.serviceAccounts.keys.get", keys.get(name=created["name"]).execute())
    assert got["keyType"] == "USER_MANAGED"

    # The new key really authenticates: the account may read itself only once granted, so a
    # call it is not allowed to make proves the token was accepted (403, not 401).
    as_sa = sandbox.client("iam", "v1", sandbox.credentials(info))
    with pytest.raises(HttpError) as denied:
        as_sa.projects().serviceAccounts().list(name=f"projects/{sandbox.project}").execute()
    status, err = _error(denied.value)
    assert (status, err["status"]) == (403, "PERMISSION_DENIED")
    assert "iam.serviceAccounts.list" in err["message"]
    assert any(d["permission"] == "iam.serviceAccounts.list" for d in sandbox.control("denied")["denied"])

    # A disabled key no longer authenticates.
    check("iam", "v1", "iam.projects.serviceAccounts.keys.disable", keys.disable(name=created["name"], body={}).execute())
    with pytest.raises(Exception):
        sandbox.bearer(sandbox.credentials(info))
    check("iam", "v1", "iam.projects.serviceAccounts.keys.enable", keys.enable(name=created["name"], body={}).execute())
    assert sandbox.bearer(sandbox.credentials(info))

    check("iam", "v1", "iam.projects.serviceAccounts.keys.delete", keys.delete(name=created["name"]).execute())
    assert keys.list(name=sa_name(sandbox, email)).execute() == {}


def test_key_creation_org_policy(sandbox, iam, new_sa):
    email = new_sa()
    sandbox.control("org-policy", {"disableKeyCreation": True})
    try:
        with pytest.raises(HttpError) as exc:
            iam.projects().serviceAccounts().keys().create(name=sa_name(sandbox, email), body={}).execute()
        status, err = _error(exc.value)
        assert (status, err["status"]) == (400, "FAILED_PRECONDITION")
        assert err["message"] == "Key creation is not allowed on this service account."
        assert err["details"][0]["violations"][0]["type"] == "constraints/iam.disableServiceAccountKeyCreation"
    finally:
        sandbox.control("org-policy", {"disableKeyCreation": False})
    assert iam.projects().serviceAccounts().keys().create(name=sa_name(sandbox, email), body={}).execute()["privateKeyData"]


def test_service_account_iam_policy(sandbox, iam, new_sa):
    target = new_sa()
    user = new_sa()
    sas = iam.projects().serviceAccounts()
    policy = check("iam", "v1", "iam.projects.serviceAccounts.getIamPolicy",
                   sas.getIamPolicy(resource=sa_name(sandbox, target)).execute())
    body = {"policy": {"bindings": [{"role": "roles/iam.serviceAccountUser", "members": [f"serviceAccount:{user}"]}],
                       "etag": policy["etag"]}}
    updated = check("iam", "v1", "iam.projects.serviceAccounts.setIamPolicy",
                    sas.setIamPolicy(resource=sa_name(sandbox, target), body=body).execute())
    assert updated["bindings"][0]["members"] == [f"serviceAccount:{user}"]
    tested = check("iam", "v1", "iam.projects.serviceAccounts.testIamPermissions", sas.testIamPermissions(
        resource=sa_name(sandbox, target), body={"permissions": ["iam.serviceAccounts.actAs"]}).execute())
    assert tested == {"permissions": ["iam.serviceAccounts.actAs"]}


def test_requests_without_valid_token_get_401(sandbox):
    import urllib.error
    import urllib.request

    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        req = urllib.request.Request(f"{sandbox.url}/v1/projects/{sandbox.project}/serviceAccounts", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 401
        assert json.loads(exc.value.read())["error"]["status"] == "UNAUTHENTICATED"


def test_token_endpoint_accepts_padded_signature_and_rejects_forgery(sandbox):
    import urllib.error
    import urllib.parse
    import urllib.request

    from google.auth import crypt

    info = json.loads(open(sandbox.key_path).read())
    signer = crypt.RSASigner.from_service_account_info(info)

    def b64(data, pad):
        text = base64.urlsafe_b64encode(data).decode()
        return text if pad else text.rstrip("=")

    def assertion(pad, tamper=False):
        now = int(time.time())
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": info["private_key_id"]}).encode(), pad)
        claims = {"iss": info["client_email"], "aud": info["token_uri"], "iat": now, "exp": now + 3600,
                  "scope": "https://www.googleapis.com/auth/cloud-platform"}
        payload = b64(json.dumps(claims).encode(), pad)
        signature = signer.sign(f"{header}.{payload}".encode())
        if tamper:
            payload = b64(json.dumps({**claims, "iss": "someone@else.iam.gserviceaccount.com"}).encode(), pad)
        return f"{header}.{payload}.{b64(signature, pad)}"

    def post(jwt):
        data = urllib.parse.urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt}).encode()
        return urllib.request.urlopen(urllib.request.Request(info["token_uri"], data=data), timeout=10)

    for pad in (True, False):
        body = json.loads(post(assertion(pad)).read())
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["access_token"]
    with pytest.raises(urllib.error.HTTPError) as exc:
        post(assertion(False, tamper=True))
    assert exc.value.code == 400 and json.loads(exc.value.read())["error"] == "invalid_grant"


def test_startup_is_fast(sandbox):
    # From spawn to the ready line, including the operator key generation.
    assert sandbox.startup_seconds < 1.0, f"started in {sandbox.startup_seconds:.2f}s"


def test_idle_memory_under_30mb(sandbox):
    status = open(f"/proc/{sandbox.process.pid}/status").read()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    assert rss_kb < 30 * 1024, f"RSS {rss_kb} kB"
