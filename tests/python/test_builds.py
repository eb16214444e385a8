"""Remote builds the way `gcloud run deploy --source` makes them, through Google's own
discovery clients: Artifact Registry v1 repositories (create/get/list/IAM/delete as
operations) and docker images, Cloud Run v2 `:uploadSource` and `builds:submit`, Cloud Build
v1 operations and builds. Every response is checked against the discovery schemas."""

import io
import json
import tarfile

import pytest
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from conftest import unique, wait_operation
from discovery import check, errors, document

REGION = "us-central1"


@pytest.fixture(scope="module")
def apis(sandbox, serviceusage):
    op = serviceusage.services().batchEnable(
        parent=f"projects/{sandbox.project}",
        body={"serviceIds": ["artifactregistry.googleapis.com", "cloudbuild.googleapis.com", "run.googleapis.com"]},
    ).execute()
    if not op.get("done"):
        wait_operation(serviceusage.operations().get, op["name"])
    return {
        "ar": sandbox.client("artifactregistry", "v1"),
        "cb": sandbox.client("cloudbuild", "v1"),
        "run": sandbox.client("run", "v2"),
    }


def schema_errors(api, version, value, ref):
    return errors(api, version, value, {"$ref": ref})


def tar_gz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_repo(sandbox, ar, repo_id):
    parent = f"projects/{sandbox.project}/locations/{REGION}"
    op = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.create",
               ar.projects().locations().repositories().create(
                   parent=parent, repositoryId=repo_id,
                   body={"format": "DOCKER", "description": "flows"}).execute())
    done = wait_operation(ar.projects().locations().operations().get, op["name"], timeout=60)
    assert not schema_errors("artifactregistry", "v1", done, "Operation")
    assert done["response"]["name"] == f"{parent}/repositories/{repo_id}"
    return f"{parent}/repositories/{repo_id}"


def upload(sandbox, run, files):
    media = MediaIoBaseUpload(io.BytesIO(tar_gz(files)), mimetype="application/gzip")
    request = run.projects().locations().sourceUploads().upload(
        parent=f"projects/{sandbox.project}/locations/{REGION}", body={}, media_body=media)
    # The client moves a media path to the api_endpoint's host but keeps the discovery
    # document's https scheme (googleapiclient.discovery._fix_up_media_path_base_url); the
    # sandbox speaks plain HTTP on its port.
    request.uri = request.uri.replace("https://", "http://", 1)
    assert "/upload/v2/projects/" in request.uri and "uploadType=multipart" in request.uri
    return check("run", "v2", "run.projects.locations.sourceUploads.upload", request.execute())


def submit(sandbox, apis, source, image):
    body = {"storageSource": {k: source[k] for k in ("bucket", "object", "generation")},
            "imageUri": image, "dockerBuild": {},
            "serviceAccount": f"projects/{sandbox.project}/serviceAccounts/{sandbox.operator_email}",
            "tags": ["bootstrap"]}
    resp = check("run", "v2", "run.projects.locations.builds.submit",
                 apis["run"].projects().locations().builds().submit(
                     parent=f"projects/{sandbox.project}/locations/{REGION}", body=body).execute())
    op = resp["buildOperation"]
    assert not schema_errors("cloudbuild", "v1", op["metadata"], "BuildOperationMetadata")
    assert op["metadata"]["build"]["status"] in ("QUEUED", "WORKING")
    done = wait_operation(apis["cb"].projects().locations().operations().get, op["name"], timeout=120)
    assert not schema_errors("cloudbuild", "v1", done, "Operation")
    build = done["metadata"]["build"]
    assert not schema_errors("cloudbuild", "v1", build, "Build")
    return done, build


def test_repository_lifecycle_and_iam(sandbox, apis):
    ar = apis["ar"]
    repos = ar.projects().locations().repositories()
    repo_id = unique("r")
    name = make_repo(sandbox, ar, repo_id)
    got = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.get",
                repos.get(name=name).execute())
    assert got["format"] == "DOCKER" and got["description"] == "flows" and got["mode"] == "STANDARD_REPOSITORY"
    listed = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.list",
                   repos.list(parent=f"projects/{sandbox.project}/locations/{REGION}").execute())
    assert name in [r["name"] for r in listed["repositories"]]
    with pytest.raises(HttpError) as dup:
        repos.create(parent=f"projects/{sandbox.project}/locations/{REGION}", repositoryId=repo_id,
                     body={"format": "DOCKER"}).execute()
    assert dup.value.resp.status == 409

    policy = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.getIamPolicy",
                   repos.getIamPolicy(resource=name).execute())
    member = f"serviceAccount:{sandbox.operator_email}"
    policy["bindings"] = [{"role": "roles/artifactregistry.reader", "members": [member]}]
    set_ = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.setIamPolicy",
                 repos.setIamPolicy(resource=name, body={"policy": policy}).execute())
    assert set_["bindings"] == [{"role": "roles/artifactregistry.reader", "members": [member]}]
    assert repos.getIamPolicy(resource=name).execute()["etag"] == set_["etag"]

    images = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.dockerImages.list",
                   repos.dockerImages().list(parent=name).execute())
    assert images.get("dockerImages", []) == []

    op = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.delete",
               repos.delete(name=name).execute())
    wait_operation(ar.projects().locations().operations().get, op["name"], timeout=60)
    with pytest.raises(HttpError) as gone:
        repos.get(name=name).execute()
    assert gone.value.resp.status == 404


def test_build_pushes_an_image_with_a_stable_digest(sandbox, apis):
    repo = make_repo(sandbox, apis["ar"], unique("r"))
    registry = f"{REGION}-docker.pkg.dev/{sandbox.project}/{repo.rsplit('/', 1)[1]}"
    files = {
        "Dockerfile": "FROM prefecthq/prefect:3-python3.11\nWORKDIR /opt/prefect/flows\nCOPY . /opt/prefect/flows/\nENV GREETING=hi\nCMD [\"python\", \"flow.py\"]\n",
        "flow.py": "print('hello')\n",
    }
    source = upload(sandbox, apis["run"], files)
    assert source["cloudStorageSource"]["object"].endswith(".tar.gz")
    done, build = submit(sandbox, apis, source["cloudStorageSource"], f"{registry}/flows:v1")
    assert build["status"] == "SUCCESS", sandbox.control(f"builds/{build['id']}")["log"]
    assert done["response"]["id"] == build["id"]
    digest = build["results"]["images"][0]["digest"]
    assert digest.startswith("sha256:") and len(digest) == 71
    assert build["tags"] == ["bootstrap"] and build["logUrl"].startswith("https://console.cloud.google.com/cloud-build/builds")

    got = check("cloudbuild", "v1", "cloudbuild.projects.locations.builds.get",
                apis["cb"].projects().locations().builds().get(
                    name=f"projects/{sandbox.project}/locations/{REGION}/builds/{build['id']}").execute())
    assert got["status"] == "SUCCESS"

    images = apis["ar"].projects().locations().repositories().dockerImages()
    listed = check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.dockerImages.list",
                   images.list(parent=repo).execute())
    [image] = listed["dockerImages"]
    assert image["uri"] == f"{registry}/flows@{digest}" and image["tags"] == ["v1"]
    check("artifactregistry", "v1", "artifactregistry.projects.locations.repositories.dockerImages.get",
          images.get(name=image["name"]).execute())

    # The same source gives the same digest; the tag moves to it (still one image).
    again = upload(sandbox, apis["run"], files)
    _, build2 = submit(sandbox, apis, again["cloudStorageSource"], f"{registry}/flows:v2")
    assert build2["results"]["images"][0]["digest"] == digest
    [image] = images.list(parent=repo).execute()["dockerImages"]
    assert sorted(image["tags"]) == ["v1", "v2"]


def test_unsupported_run_fails_the_build_naming_the_line(sandbox, apis):
    repo = make_repo(sandbox, apis["ar"], unique("r"))
    registry = f"{REGION}-docker.pkg.dev/{sandbox.project}/{repo.rsplit('/', 1)[1]}"
    source = upload(sandbox, apis["run"], {
        "Dockerfile": "FROM prefecthq/prefect:3-python3.11\nCOPY . /app\nRUN apt-get update && apt-get install -y curl\n",
    })
    done, build = submit(sandbox, apis, source["cloudStorageSource"], f"{registry}/x:1")
    assert build["status"] == "FAILURE"
    assert build["failureInfo"]["type"] == "USER_BUILD_STEP"
    assert done["error"]["message"] == "Build failed; check build logs for details"
    log = "\n".join(sandbox.control(f"builds/{build['id']}")["log"])
    assert "Dockerfile line 3: RUN apt-get update && apt-get install -y curl" in log
    assert "dockerImages" not in apis["ar"].projects().locations().repositories().dockerImages().list(parent=repo).execute()


def test_a_builds_log_is_in_cloud_logging_and_gcloud_follows_it_by_build_id(sandbox, apis, serviceusage):
    """The log lines of a failed build are entries of resource type `build` (label
    `build_id`), as Cloud Build writes them; and the operation gcloud derives from the build
    (deployer.py `_SubmitBuild`: `projects/{projectId}/locations/{region}/operations/{id}`)
    is the build's."""
    op = serviceusage.services().enable(
        name=f"projects/{sandbox.project}/services/logging.googleapis.com").execute()
    if not op.get("done"):
        wait_operation(serviceusage.operations().get, op["name"])
    repo = make_repo(sandbox, apis["ar"], unique("r"))
    registry = f"{REGION}-docker.pkg.dev/{sandbox.project}/{repo.rsplit('/', 1)[1]}"
    source = upload(sandbox, apis["run"], {
        "Dockerfile": "FROM prefecthq/prefect:3-python3.11\nRUN apt-get install -y curl\n",
    })
    _, build = submit(sandbox, apis, source["cloudStorageSource"], f"{registry}/x:1")
    derived = f"projects/{build['projectId']}/locations/{REGION}/operations/{build['id']}"
    again = apis["cb"].projects().locations().operations().get(name=derived).execute()
    assert again["done"] and again["metadata"]["build"]["id"] == build["id"]

    logging_v2 = sandbox.client("logging", "v2")
    got = check("logging", "v2", "logging.entries.list", logging_v2.entries().list(body={
        "resourceNames": [f"projects/{sandbox.project}"],
        "filter": f'resource.type="build" AND resource.labels.build_id="{build["id"]}"',
        "orderBy": "timestamp desc", "pageSize": 5,
    }).execute())
    entries = got["entries"]
    assert entries and all(e["resource"]["type"] == "build" for e in entries)
    assert entries[0]["logName"] == f"projects/{sandbox.project}/logs/cloudbuild"
    assert entries[0]["textPayload"].startswith("ERROR: Build step failure")
    assert any("Dockerfile line 2: RUN apt-get install -y curl" in e["textPayload"] for e in entries)


def test_the_default_build_account(sandbox, apis):
    """What gcloud reads before a source deploy (build_util.py `_GetDefaultBuildServiceAccount`)."""
    name = f"projects/{sandbox.project}/locations/{REGION}/defaultServiceAccount"
    got = check("cloudbuild", "v1", "cloudbuild.projects.locations.getDefaultServiceAccount",
                apis["cb"].projects().locations().getDefaultServiceAccount(name=name).execute())
    assert got["name"] == name
    assert got["serviceAccountEmail"].startswith(f"projects/{sandbox.project}/serviceAccounts/")
    assert got["serviceAccountEmail"].endswith("-compute@developer.gserviceaccount.com")


def test_push_to_a_missing_repository_fails(sandbox, apis):
    source = upload(sandbox, apis["run"], {"Dockerfile": "FROM prefecthq/prefect:3-python3.11\n"})
    _, build = submit(sandbox, apis, source["cloudStorageSource"],
                      f"{REGION}-docker.pkg.dev/{sandbox.project}/no-such-repo/x:1")
    assert build["status"] == "FAILURE" and build["failureInfo"]["type"] == "PUSH_FAILED"
    assert 'Repository "no-such-repo" not found' in "\n".join(sandbox.control(f"builds/{build['id']}")["log"])


def test_submit_rejects_a_non_artifact_registry_uri(sandbox, apis):
    with pytest.raises(HttpError) as exc:
        apis["run"].projects().locations().builds().submit(
            parent=f"projects/{sandbox.project}/locations/{REGION}",
            body={"storageSource": {"bucket": "b", "object": "o"}, "imageUri": "gcr.io/p/x:1", "dockerBuild": {}},
        ).execute()
    assert exc.value.resp.status == 400
    assert json.loads(exc.value.content)["error"]["status"] == "INVALID_ARGUMENT"
