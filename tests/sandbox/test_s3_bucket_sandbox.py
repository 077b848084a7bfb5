"""Issue #3 against the sandbox's S3 endpoint (moto behind stunnel TLS): the real DAG (`airflow dags
test`) and the real configure_s3.sh leave the bucket in the desired state, read back (the unit
cases, bad settings and the policy merge, are in tests/unit/test_s3_bucket.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
import threading
import uuid
from pathlib import Path

import pytest

from pg_backups import s3_bucket
from pg_backups.config import S3Settings
from pg_backups.errors import BucketSettingsError
from pg_backups.s3_access import S3Access
from support import SECOPS, RecordingClient
from support import s3_settings as settings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "include" / "scripts" / "configure_s3.sh"
DAG_ID = "s3_bucket_config_asso"
RUN = uuid.uuid4().hex[:8]  # fresh bucket names: a kept sandbox (KEEP_SANDBOX=1) can run the tests again


# --------------------------------------------------------------------------------------------
# The real DAG against the sandbox's S3


def normal_lifecycle(rules) -> list:
    return sorted((s3_bucket._normal_rule(r) for r in rules), key=lambda r: r["ID"])


def assert_desired(client, bucket: str, s: S3Settings) -> None:
    """The bucket has exactly the desired configuration, read back through the S3 API."""
    want = s3_bucket.desired_state(s)
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert normal_lifecycle(rules) == normal_lifecycle(want["lifecycle"])
    assert {r["ID"] for r in rules} == {s3_bucket.RULE_CURRENT, s3_bucket.RULE_NONCURRENT, s3_bucket.RULE_MULTIPART}
    assert client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    sse = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert sse["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    location = client.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert location == s.region


def no_secrets(sandbox, text: str) -> None:
    for secret in sandbox.secrets():
        assert secret not in text


@pytest.mark.sandbox
def test_dag_leaves_the_bucket_in_the_desired_state(configured_bucket):
    sandbox = configured_bucket
    cluster = sandbox.cluster()
    assert_desired(sandbox.s3_client(), cluster.s3.bucket, cluster.s3)
    # The sandbox turns the TLS-only policy off (moto sees plain HTTP behind stunnel): no policy.
    assert s3_bucket.current_state(sandbox.s3_client(), cluster.s3.bucket)["policy"] is None


@pytest.mark.sandbox
def test_second_run_reports_no_drift_and_changes_nothing(configured_bucket):
    sandbox = configured_bucket
    bucket = sandbox.cluster().s3.bucket
    before = s3_bucket.current_state(sandbox.s3_client(), bucket)
    slack_before = len(sandbox.slack_messages())
    result = sandbox.dags_test(DAG_ID)
    assert result.state == "success", result.output[-3000:]
    report = result.xcoms["configure_bucket"]
    assert report["changed"] is False and report["created"] is False and report["drift"] == []
    assert report["summary"] == f"bucket {bucket}: no drift, nothing changed"
    assert "no drift, nothing changed" in result.output
    assert s3_bucket.current_state(sandbox.s3_client(), bucket) == before
    assert len(sandbox.slack_messages()) == slack_before  # nothing drifted: no Slack message
    no_secrets(sandbox, result.output)
    # The same code with a client that records every call: reads only, not one write.
    client = RecordingClient(sandbox.s3_client())
    assert s3_bucket.reconcile(client, sandbox.cluster().s3).changed is False
    assert client.writes == [] and "get_bucket_lifecycle_configuration" in client.calls


@pytest.mark.sandbox
def test_drift_made_by_hand_is_repaired_and_reported(configured_bucket):
    sandbox = configured_bucket
    s3 = sandbox.s3_client()
    cluster = sandbox.cluster()
    bucket = cluster.s3.bucket
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    try:
        # By hand: versioning suspended, the multipart rule removed, the tiering rule edited,
        # a foreign rule added, encryption changed, the public access block loosened.
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
        drifted = [copy.deepcopy(r) for r in rules if r["ID"] != s3_bucket.RULE_MULTIPART]
        for rule in drifted:
            if rule["ID"] == s3_bucket.RULE_CURRENT:
                rule["Transitions"] = [{"Days": 120, "StorageClass": "STANDARD_IA"},
                                       {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
        drifted.append({"ID": "ops-temp-expire-tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                        "Expiration": {"Days": 3}})
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": drifted})
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False, "RestrictPublicBuckets": False})
        s3.delete_bucket_encryption(Bucket=bucket)
        slack_before = len(sandbox.slack_messages())

        result = sandbox.dags_test(DAG_ID)
        assert result.state == "success", result.output[-3000:]
        report = result.xcoms["configure_bucket"]
        assert report["changed"] is True and report["created"] is False
        assert report["drifted_settings"] == ["public_access_block", "encryption", "versioning", "lifecycle"]
        assert report["removed_lifecycle_rules"] == ["ops-temp-expire-tmp"]
        drift = {d["setting"]: d for d in report["drift"]}
        assert drift["versioning"]["was"] == "Suspended" and drift["versioning"]["now"] == "Enabled"
        assert {r["ID"] for r in drift["lifecycle"]["was"]} == {
            s3_bucket.RULE_CURRENT, s3_bucket.RULE_NONCURRENT, "ops-temp-expire-tmp"}
        # The task log says what changed, from what to what.
        assert "versioning changed from \"Suspended\" to \"Enabled\"" in result.output
        assert "removing lifecycle rules this project does not manage: ops-temp-expire-tmp" in result.output
        no_secrets(sandbox, result.output)
        # Repaired, read back from S3.
        assert_desired(s3, bucket, cluster.s3)
        # And Ops hears about it on Slack.
        texts = sandbox.slack_texts_since(slack_before)
        assert len(texts) == 1, texts
        assert "drift repaired" in texts[0] and f"`{bucket}`" in texts[0]
        for word in ("versioning", "lifecycle", "public_access_block", "encryption", "ops-temp-expire-tmp"):
            assert word in texts[0]
    finally:
        s3_bucket.reconcile(sandbox.s3_client(), cluster.s3)  # leave the bucket right for later tests


# --------------------------------------------------------------------------------------------
# Separate buckets through s3_bucket.reconcile (the TLS-only policy, creation in a region)


def client_for(sandbox, region: str):
    env = sandbox.env
    return S3Access(region=region, access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                    endpoint_url=env["AWS_ENDPOINT_URL"], ca_file=env["AWS_CA_BUNDLE"]).boto3_client()


@pytest.mark.sandbox
def test_tls_only_policy_is_set_and_foreign_statements_are_kept(sandbox):
    s = settings(bucket=f"asso-policy-{RUN}")  # deny_insecure_transport defaults to true
    client = RecordingClient(sandbox.s3_client())
    report = s3_bucket.reconcile(client, s)
    assert report.created and "policy" in [d["setting"] for d in report.drift]
    assert "create_bucket" in client.calls
    policy = json.loads(sandbox.s3_client().get_bucket_policy(Bucket=s.bucket)["Policy"])
    assert policy["Statement"] == [s3_bucket.tls_statement(s.bucket)]
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert_desired(sandbox.s3_client(), s.bucket, s)  # bucket-configuration calls still work here

    again = RecordingClient(sandbox.s3_client())
    assert s3_bucket.reconcile(again, s).as_dict()["changed"] is False
    assert again.writes == []

    # SecOps replaces the policy with one of theirs: ours comes back, theirs stays.
    secops = dict(SECOPS, Resource=f"arn:aws:s3:::{s.bucket}")
    sandbox.s3_client().put_bucket_policy(Bucket=s.bucket, Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": [secops]}))
    report = s3_bucket.reconcile(sandbox.s3_client(), s)
    assert [d["setting"] for d in report.drift] == ["policy"]
    policy = json.loads(sandbox.s3_client().get_bucket_policy(Bucket=s.bucket)["Policy"])
    assert policy["Statement"] == [secops, s3_bucket.tls_statement(s.bucket)]
    # With both there, nothing to do.
    again = RecordingClient(sandbox.s3_client())
    assert s3_bucket.reconcile(again, s).changed is False and again.writes == []

    # Turned off: our statement is removed, SecOps' stays.
    off = dataclasses.replace(s, deny_insecure_transport=False)
    assert [d["setting"] for d in s3_bucket.reconcile(sandbox.s3_client(), off).drift] == ["policy"]
    policy = json.loads(sandbox.s3_client().get_bucket_policy(Bucket=s.bucket)["Policy"])
    assert policy["Statement"] == [secops]


@pytest.mark.sandbox
@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1"])
def test_bucket_is_created_in_its_region(sandbox, region):
    s = settings(bucket=f"asso-{region}-{RUN}", region=region, deny_insecure_transport=False)
    client = RecordingClient(client_for(sandbox, region))
    calls = []
    real_create = client._client.create_bucket
    client._client.create_bucket = lambda **kw: (calls.append(kw), real_create(**kw))[1]
    assert s3_bucket.reconcile(client, s).created
    # us-east-1 is the one region S3 refuses as a LocationConstraint.
    expected = {"Bucket": s.bucket} if region == "us-east-1" else {
        "Bucket": s.bucket, "CreateBucketConfiguration": {"LocationConstraint": region}}
    assert calls == [expected]
    assert (client_for(sandbox, region).get_bucket_location(Bucket=s.bucket)["LocationConstraint"] or "us-east-1") == region
    # A bucket that exists in another region is refused, not reconfigured.
    other = RecordingClient(client_for(sandbox, region))
    with pytest.raises(BucketSettingsError, match=f"exists in {region}, not in the configured region eu-west-3"):
        s3_bucket.reconcile(other, dataclasses.replace(s, region="eu-west-3"))
    assert other.writes == []


# --------------------------------------------------------------------------------------------
# include/scripts/configure_s3.sh: the runbook's cron script, the same code


class ConnectionCounter:
    """A TCP listener that counts connections: an S3 endpoint that must never be reached."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port, self.count, self._stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.count += 1
                conn.close()
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.sandbox
def test_script_configures_the_bucket_like_the_dag(configured_bucket):
    sandbox = configured_bucket
    bucket = f"asso-script-{RUN}"
    env = {"BUCKET_NAME": bucket, "REGION": "eu-west-3"}
    slack_before = len(sandbox.slack_messages())
    proc = sandbox.run(SCRIPT, env=env)
    report = json.loads(proc.stdout)
    assert report["bucket"] == bucket and report["created"] is True and report["changed"] is True
    texts = sandbox.slack_texts_since(slack_before)  # as the DAG, the script tells Ops what it changed
    assert len(texts) == 1 and "cron configure-s3" in texts[0] and "created and configured" in texts[0]
    no_secrets(sandbox, proc.stdout + proc.stderr)
    # The same resulting configuration as the DAG's bucket (same cluster file, other name).
    client = sandbox.s3_client()
    dag_state = s3_bucket.current_state(client, sandbox.cluster().s3.bucket)
    assert s3_bucket.current_state(client, bucket) == dag_state
    assert_desired(client, bucket, dataclasses.replace(sandbox.cluster().s3, bucket=bucket))
    # Run again: no drift, nothing changed, said in the JSON.
    proc = sandbox.run(SCRIPT, env=env)
    again = json.loads(proc.stdout)
    assert again["changed"] is False and again["drift"] == []
    assert again["summary"] == f"bucket {bucket}: no drift, nothing changed"
    assert len(sandbox.slack_messages()) == slack_before + 1  # nothing changed: no message


@pytest.mark.sandbox
@pytest.mark.parametrize("env,variable,setting", [
    ({"BUCKET_NAME": "asso-script-backups", "REGION": "eu-paris-1"}, "REGION", "s3.region"),
    ({"BUCKET_NAME": "Asso_Script", "REGION": "eu-west-3"}, "BUCKET_NAME", "s3.bucket"),
])
def test_script_refuses_bad_input_before_any_call(sandbox, env, variable, setting):
    endpoint = ConnectionCounter()
    try:
        proc = sandbox.run(SCRIPT, check=False, env={**env, "AWS_ENDPOINT_URL": f"https://127.0.0.1:{endpoint.port}",
                                                     "SLACK_WEBHOOK_URL": ""})
    finally:
        endpoint.close()
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert f"{variable} (setting {setting})" in proc.stderr and env[variable] in proc.stderr
    assert "nothing was changed" in proc.stderr and "Fix:" in proc.stderr
    assert endpoint.count == 0  # not one connection to S3
    no_secrets(sandbox, proc.stderr)


@pytest.mark.sandbox
@pytest.mark.parametrize("endpoint_from", ["connection", "setting"])
def test_dag_takes_credentials_from_the_configured_connection(sandbox, tmp_path, endpoint_from):
    """s3.aws_conn_id picks the Airflow connection; s3.endpoint_url overrides its endpoint. The
    default connection, the AWS_* variables and (for "setting") the connection's own endpoint all
    point at a listener that must never be reached."""
    import yaml

    dead = ConnectionCounter()
    dead_url = f"https://127.0.0.1:{dead.port}"
    good = json.loads(sandbox.env["AIRFLOW_CONN_AWS_BACKUPS"])
    alt = copy.deepcopy(good)
    config = yaml.safe_load(sandbox.layout.clusters_file.read_text())
    bucket = f"asso-conn-{endpoint_from}-{RUN}"
    s3 = config["clusters"][0].setdefault("s3", {})  # merged over the file's `defaults:`
    s3.update(bucket=bucket, aws_conn_id="aws_alt_backups")
    if endpoint_from == "setting":
        alt["extra"]["endpoint_url"] = dead_url
        s3.update(endpoint_url=sandbox.env["AWS_ENDPOINT_URL"],
                                           ca_file=sandbox.env["AWS_CA_BUNDLE"])
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(yaml.safe_dump(config))
    wrong = dict(good, extra=dict(good["extra"], endpoint_url=dead_url))
    env = {"PG_BACKUPS_CONFIG": str(clusters), "AIRFLOW_CONN_AWS_ALT_BACKUPS": json.dumps(alt),
           "AIRFLOW_CONN_AWS_BACKUPS": json.dumps(wrong), "AWS_ENDPOINT_URL": dead_url,
           "AWS_ACCESS_KEY_ID": "AKIANOTTHEKEY", "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    try:
        result = sandbox.dags_test(DAG_ID, env=env)
    finally:
        dead.close()  # (`airflow dags test` parses the DAG file anew: later runs see the sandbox's own config)
    assert result.state == "success", result.output[-3000:]
    assert result.xcoms["configure_bucket"]["created"] is True
    assert dead.count == 0
    assert sandbox.s3_client().get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    no_secrets(sandbox, result.output)
