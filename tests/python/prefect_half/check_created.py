"""What Prefect's own Python SDK makes of the objects `bootstrap apply` created.

Run by tests/prefect_half_e2e.rs with the project's .venv and PREFECT_API_URL set:

    python check_created.py --block NAME --pool NAME

Prints one JSON object on stdout. It never prints key material: only the service account's
email, the project, and whether a private key is present.
"""

import argparse
import asyncio
import json
import sys

from prefect.client.orchestration import get_client
from prefect_gcp import GcpCredentials
from prefect_gcp.workers.cloud_run import CloudRunWorkerJobConfiguration
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerJobV2Configuration

CONFIGURATIONS = {
    "cloud-run": CloudRunWorkerJobConfiguration,
    "cloud-run-v2": CloudRunWorkerJobV2Configuration,
}


def describe_credentials(creds):
    """The public parts of a GcpCredentials block (email and project, never the key)."""
    info = creds.service_account_info
    if info is None:
        return {"client_email": None, "project": creds.project, "has_private_key": False}
    info = info.get_secret_value()
    return {
        "client_email": info.get("client_email"),
        "project": creds.project,
        "has_private_key": "PRIVATE KEY" in str(info.get("private_key", "")),
    }


def job_service_account(pool_type, job_body):
    """Where each Cloud Run API carries the job's service account."""
    if pool_type == "cloud-run-v2":
        return job_body["template"]["template"].get("serviceAccount")
    spec = job_body["spec"]["template"]["spec"]["template"]["spec"]
    return spec.get("serviceAccountName")


async def main(args):
    out = {}
    block = await GcpCredentials.aload(args.block)
    out["block"] = describe_credentials(block)

    async with get_client() as client:
        pool = await client.read_work_pool(args.pool)
    template = pool.base_job_template
    configuration = CONFIGURATIONS[pool.type]
    # The worker's own path from template (plus no job variables) to a job configuration,
    # including the resolution of the `{"$ref": {"block_document_id": ...}}` credentials.
    job = await configuration.from_template_and_values(template, {})
    credentials_default = (
        template["variables"]["properties"].get("credentials", {}).get("default")
    )
    out["pool"] = {
        "type": pool.type,
        "credentials_default_is_ref": isinstance(credentials_default, dict)
        and "$ref" in credentials_default,
    }
    out["job"] = {
        "region": job.region,
        "service_account": job_service_account(pool.type, job.job_body),
        "credentials": describe_credentials(job.credentials)
        if job.credentials is not None
        else None,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--block", required=True)
    parser.add_argument("--pool", required=True)
    asyncio.run(main(parser.parse_args()))
