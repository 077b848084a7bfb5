"""The error family against the real sandbox: the cron script's exit code for a bucket in another
region (the unit cases are in tests/unit/test_errors.py)."""

from __future__ import annotations

import uuid

import pytest

from pg_backups.errors import EXIT_REFUSED


@pytest.mark.sandbox
def test_cron_script_exits_2_for_a_bucket_in_another_region_and_changes_nothing(sandbox):
    """The real configure_s3.sh on a bucket that lives in another region: refused (exit 2), not touched."""
    from pg_backups.s3_access import S3Access

    bucket = f"asso-elsewhere-{uuid.uuid4().hex[:8]}"
    client = S3Access(region="us-west-2", access_key=sandbox.env["AWS_ACCESS_KEY_ID"],
                      secret_key=sandbox.env["AWS_SECRET_ACCESS_KEY"], endpoint_url=sandbox.env["AWS_ENDPOINT_URL"],
                      ca_file=sandbox.env["AWS_CA_BUNDLE"]).boto3_client()
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    proc = sandbox.run("include/scripts/configure_s3.sh", check=False,
                       env={"BUCKET_NAME": bucket, "REGION": "eu-west-3", "SLACK_WEBHOOK_URL": ""})
    assert proc.returncode == EXIT_REFUSED, proc.stdout + proc.stderr
    assert "exists in us-west-2, not in the configured region eu-west-3" in proc.stderr and "Fix:" in proc.stderr
    assert client.get_bucket_versioning(Bucket=bucket).get("Status") is None  # not reconfigured
