"""Secret Manager v1: secrets, versions (:addVersion, :access, latest, states), secret IAM
policy, and access denied without secretAccessor."""

import base64
import json
import time

import pytest
from googleapiclient.errors import HttpError

from conftest import unique
from discovery import check


def test_secret_lifecycle(sandbox, secretmanager, new_sa):
    secrets = secretmanager.projects().secrets()
    secret_id = unique("key")
    created = check("secretmanager", "v1", "secretmanager.projects.secrets.create", secrets.create(
        parent=f"projects/{sandbox.project}", secretId=secret_id,
        body={"replication": {"automatic": {}}, "labels": {"app": "bootstrap"}}).execute())
    name = created["name"]
    assert name.endswith(f"/secrets/{secret_id}") and created["labels"] == {"app": "bootstrap"}
    with pytest.raises(HttpError) as dup:
        secrets.create(parent=f"projects/{sandbox.project}", secretId=secret_id,
                       body={"replication": {"automatic": {}}}).execute()
    assert dup.value.resp.status == 409

    assert check("secretmanager", "v1", "secretmanager.projects.secrets.get", secrets.get(name=name).execute())["name"] == name
    listed = check("secretmanager", "v1", "secretmanager.projects.secrets.list",
                   secrets.list(parent=f"projects/{sandbox.project}").execute())
    assert name in [s["name"] for s in listed["secrets"]]
    patched = check("secretmanager", "v1", "secretmanager.projects.secrets.patch", secrets.patch(
        name=name, updateMask="labels", body={"labels": {"app": "other"}}).execute())
    assert patched["labels"] == {"app": "other"}

    for value in (b"first", b"pnu_secret_value"):
        version = check("secretmanager", "v1", "secretmanager.projects.secrets.addVersion", secrets.addVersion(
            parent=name, body={"payload": {"data": base64.b64encode(value).decode()}}).execute())
        assert version["state"] == "ENABLED"
    versions = secrets.versions()
    latest = check("secretmanager", "v1", "secretmanager.projects.secrets.versions.access",
                   versions.access(name=f"{name}/versions/latest").execute())
    assert base64.b64decode(latest["payload"]["data"]) == b"pnu_secret_value"
    assert latest["name"] == f"{name}/versions/2"
    assert int(latest["payload"]["dataCrc32c"]) > 0
    assert base64.b64decode(versions.access(name=f"{name}/versions/1").execute()["payload"]["data"]) == b"first"
    listed = check("secretmanager", "v1", "secretmanager.projects.secrets.versions.list", versions.list(parent=name).execute())
    assert [v["name"].rsplit("/", 1)[1] for v in listed["versions"]] == ["2", "1"]
    check("secretmanager", "v1", "secretmanager.projects.secrets.versions.get", versions.get(name=f"{name}/versions/1").execute())

    check("secretmanager", "v1", "secretmanager.projects.secrets.versions.disable",
          versions.disable(name=f"{name}/versions/2", body={}).execute())
    with pytest.raises(HttpError) as exc:
        versions.access(name=f"{name}/versions/latest").execute()
    assert json.loads(exc.value.content)["error"]["status"] == "FAILED_PRECONDITION"
    check("secretmanager", "v1", "secretmanager.projects.secrets.versions.enable",
          versions.enable(name=f"{name}/versions/2", body={}).execute())
    destroyed = check("secretmanager", "v1", "secretmanager.projects.secrets.versions.destroy",
                      versions.destroy(name=f"{name}/versions/1", body={}).execute())
    assert destroyed["state"] == "DESTROYED" and "destroyTime" in destroyed

    # Bad payloads are rejected.
    with pytest.raises(HttpError) as bad:
        secrets.addVersion(parent=name, body={"payload": {"data": "!!not base64!!"}}).execute()
    assert bad.value.resp.status == 400

    check("secretmanager", "v1", "secretmanager.projects.secrets.delete", secrets.delete(name=name).execute())
    with pytest.raises(HttpError) as gone:
        secrets.get(name=name).execute()
    assert gone.value.resp.status == 404


def test_secret_access_needs_accessor_role(sandbox, secretmanager, new_sa):
    secrets = secretmanager.projects().secrets()
    name = secrets.create(parent=f"projects/{sandbox.project}", secretId=unique("acc"),
                          body={"replication": {"automatic": {}}}).execute()["name"]
    secrets.addVersion(parent=name, body={"payload": {"data": base64.b64encode(b"v").decode()}}).execute()
    email, info = new_sa(key=True)
    as_sa = sandbox.client("secretmanager", "v1", sandbox.credentials(info)).projects().secrets()
    with pytest.raises(HttpError) as exc:
        as_sa.versions().access(name=f"{name}/versions/latest").execute()
    err = json.loads(exc.value.content)["error"]
    assert (exc.value.resp.status, err["status"]) == (403, "PERMISSION_DENIED")
    assert "secretmanager.versions.access" in err["message"]

    policy = check("secretmanager", "v1", "secretmanager.projects.secrets.getIamPolicy",
                   secrets.getIamPolicy(resource=name).execute())
    policy["bindings"] = [{"role": "roles/secretmanager.secretAccessor", "members": [f"serviceAccount:{email}"]}]
    check("secretmanager", "v1", "secretmanager.projects.secrets.setIamPolicy",
          secrets.setIamPolicy(resource=name, body={"policy": policy}).execute())
    time.sleep(sandbox.control("settings")["grantDelayMs"] / 1000 + 0.2)
    tested = check("secretmanager", "v1", "secretmanager.projects.secrets.testIamPermissions", as_sa.testIamPermissions(
        resource=name, body={"permissions": ["secretmanager.versions.access", "secretmanager.secrets.delete"]}).execute())
    assert tested == {"permissions": ["secretmanager.versions.access"]}
    assert base64.b64decode(as_sa.versions().access(name=f"{name}/versions/latest").execute()["payload"]["data"]) == b"v"


def test_url_safe_payload_is_decoded(sandbox, secretmanager):
    """Regression: `payload.data` is a bytes field; gcloud sends it URL-safe base64 encoded, and
    Google decodes either alphabet. Bytes 0xfb 0xff encode to `+/8=` or `-_8=`."""
    secret_id = unique("urlsafe")
    parent = f"projects/{sandbox.project}"
    secretmanager.projects().secrets().create(
        parent=parent, secretId=secret_id, body={"replication": {"automatic": {}}}).execute()
    name = f"{parent}/secrets/{secret_id}"
    raw = bytes([0xFB, 0xFF, 0xBF]) * 3
    url_safe = base64.urlsafe_b64encode(raw).decode()
    assert "-" in url_safe or "_" in url_safe
    added = secretmanager.projects().secrets().addVersion(parent=name, body={"payload": {"data": url_safe}}).execute()
    assert "clientSpecifiedPayloadChecksum" not in added
    got = secretmanager.projects().secrets().versions().access(name=f"{name}/versions/latest").execute()
    assert base64.b64decode(got["payload"]["data"]) == raw

    # With `dataCrc32c` (as gcloud sends it) the version says the client checksummed it; gcloud
    # fails `versions add` with "payload data corruption may have occurred" otherwise.
    import google_crc32c

    body = {"payload": {"data": url_safe, "dataCrc32c": str(google_crc32c.value(raw))}}
    added = check("secretmanager", "v1", "secretmanager.projects.secrets.addVersion",
                  secretmanager.projects().secrets().addVersion(parent=name, body=body).execute())
    assert added["clientSpecifiedPayloadChecksum"] is True
    secretmanager.projects().secrets().delete(name=name).execute()
