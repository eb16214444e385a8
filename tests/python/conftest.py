"""Fixtures for the sandbox's wire-format tests: one sandbox process per session (the real
`bootstrap sandbox` binary, `--port 0`), Google's own discovery clients pointed at it with the
operator's key, and helpers for the `/_sandbox` control surface."""

import base64
import json
import os
import pathlib
import selectors
import subprocess
import tempfile
import time
import urllib.request
import uuid

import pytest
from google.oauth2 import service_account
from googleapiclient.discovery import build

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECT = "sandbox-project"
OTHER_PROJECT = "other-project"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class Sandbox:
    """A running sandbox: its URL, directory, operator key and control helpers."""

    def __init__(self, url, directory, key_path, process):
        self.url = url
        self.dir = directory
        self.key_path = key_path
        self.process = process
        self.project = PROJECT
        self.other_project = OTHER_PROJECT
        self.operator_email = json.loads(pathlib.Path(key_path).read_text())["client_email"]

    def control(self, path, body=None):
        """GET (no body) or POST (JSON body) a `/_sandbox/...` control route."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/_sandbox/{path}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def credentials(self, info=None):
        """Credentials from the operator key, or from a key file's parsed JSON."""
        if info is None:
            return service_account.Credentials.from_service_account_file(self.key_path, scopes=SCOPES)
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)

    def client(self, api, version, credentials=None):
        """Google's own discovery client for `api` `version`, aimed at the sandbox."""
        return build(
            api,
            version,
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": self.url},
            credentials=credentials or self.credentials(),
        )

    def bearer(self, credentials=None):
        """An access token (for raw HTTP calls)."""
        import google.auth.transport.requests

        creds = credentials or self.credentials()
        creds.refresh(google.auth.transport.requests.Request())
        return creds.token


def _binary():
    path = os.environ.get("BOOTSTRAP_BIN") or str(ROOT / "target" / "debug" / "bootstrap")
    if not os.path.exists(path):
        pytest.fail(f"sandbox binary {path} not found: run `cargo build -p bootstrap -p gcp-sandbox --bins` or set BOOTSTRAP_BIN")
    return path


@pytest.fixture(scope="session")
def sandbox():
    directory = tempfile.mkdtemp(prefix="sandbox-pytest-")
    started = time.monotonic()
    process = subprocess.Popen(
        [
            _binary(), "sandbox", "--port", "0", "--dir", directory,
            "--project", PROJECT, "--project", OTHER_PROJECT,
            "--enable-api", "run.googleapis.com", "--enable-api", "secretmanager.googleapis.com",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    line = ""
    if selector.select(timeout=30):
        line = process.stdout.readline()
    if not line.startswith("sandbox ready: "):
        process.kill()
        pytest.fail(f"sandbox did not start: {line!r} {process.stderr.read() if process.poll() is not None else ''}")
    url = line.split()[2]
    sb = Sandbox(url, directory, os.path.join(directory, "operator-key.json"), process)
    sb.startup_seconds = time.monotonic() - started
    yield sb
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(autouse=True)
def _reset_faults(sandbox):
    """Every test starts and ends without faults."""
    sandbox.control("faults", {"spec": ""})
    yield
    sandbox.control("faults", {"spec": ""})


def _client_fixture(name, api, version):
    """A session fixture `name`: the discovery client of `api` `version` on the sandbox."""

    @pytest.fixture(scope="session", name=name)
    def client(sandbox):
        return sandbox.client(api, version)

    return client


iam = _client_fixture("iam", "iam", "v1")
crm = _client_fixture("crm", "cloudresourcemanager", "v1")
serviceusage = _client_fixture("serviceusage", "serviceusage", "v1")
secretmanager = _client_fixture("secretmanager", "secretmanager", "v1")
run_v2 = _client_fixture("run_v2", "run", "v2")
run_v1 = _client_fixture("run_v1", "run", "v1")


def unique(prefix="t"):
    """A fresh 6-30 char id."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_operation(get, name, timeout=30):
    """Polls an Operation until done, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        op = get(name=name).execute()
        if op.get("done"):
            return op
        if time.monotonic() > deadline:
            raise AssertionError(f"operation {name} not done after {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def new_sa(sandbox, iam):
    """Creates a service account, waits out the visibility delay; returns (email, key info)
    when called with key=True, else the email."""

    def make(key=False, wait=True):
        account_id = unique("sa")
        sa = iam.projects().serviceAccounts().create(
            name=f"projects/{sandbox.project}", body={"accountId": account_id}
        ).execute()
        if wait:
            time.sleep(sandbox.control("settings")["saVisibilityMs"] / 1000 + 0.1)
        if not key:
            return sa["email"]
        created = iam.projects().serviceAccounts().keys().create(
            name=f"projects/{sandbox.project}/serviceAccounts/{sa['email']}", body={}
        ).execute()
        return sa["email"], json.loads(base64.b64decode(created["privateKeyData"]))

    return make
