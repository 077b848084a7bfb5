"""Issue #3: the backup bucket as desired state (runbook 2.3), by the DAG and by configure_s3.sh.

These unit tests prove that bad settings are refused before any call to S3 and that the policy
merge keeps foreign statements. tests/sandbox/test_s3_bucket_sandbox.py runs the real DAG (`airflow
dags test`) and the real script against the sandbox's S3 endpoint (moto behind stunnel TLS) and
reads the bucket back.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from pg_backups import s3_bucket
from pg_backups.config import ConfigError, S3Settings, Transition, parse_config
from pg_backups.errors import BucketSettingsError
from support import SECOPS, RecordingClient
from support import s3_settings as settings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "include" / "scripts" / "configure_s3.sh"


def lifecycle(*pairs) -> list[Transition]:
    return [Transition(days, storage_class) for days, storage_class in pairs]


# --------------------------------------------------------------------------------------------
# Bad input: refused with a clear error naming the setting, before any call to S3

DEFAULT = S3Settings()
DEFAULT_LC = DEFAULT.lifecycle
BAD = [
    (dict(bucket="Asso_Backups"), "bucket", "not a valid S3 bucket name"),
    (dict(bucket="ab"), "bucket", "not a valid S3 bucket name"),
    (dict(bucket="a" * 64), "bucket", "not a valid S3 bucket name"),
    (dict(bucket="asso..backups"), "bucket", "not a valid S3 bucket name"),
    (dict(bucket="192.168.10.1"), "bucket", "not a valid S3 bucket name"),
    (dict(bucket="-asso-backups"), "bucket", "not a valid S3 bucket name"),
    (dict(region="eu-paris-1"), "region", "not a known AWS region"),
    (dict(region="EU"), "region", "not a known AWS region"),
    (dict(encryption="DES"), "encryption", "unknown"),
    (dict(kms_key_id="alias/backups"), "kms_key_id", "not aws:kms"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, transitions=lifecycle((90, "COLD")))),
     "lifecycle.transitions[0].storage_class", "not an S3 storage class"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, noncurrent_transitions=lifecycle((90, "GLACIER_DEEP")))),
     "lifecycle.noncurrent_transitions[0].storage_class", "not an S3 storage class"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, transitions=lifecycle((365, "DEEP_ARCHIVE"), (90, "STANDARD_IA")))),
     "lifecycle.transitions[1]", "out of order"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, transitions=lifecycle((400, "STANDARD_IA"), (365, "DEEP_ARCHIVE")))),
     "lifecycle.transitions[1]", "out of order"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, transitions=lifecycle((10, "STANDARD_IA")))),
     "lifecycle.transitions[0].days", "below what S3 accepts"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, transitions=lifecycle((-1, "DEEP_ARCHIVE")))),
     "lifecycle.transitions[0].days", "below what S3 accepts"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, noncurrent_transitions=lifecycle((20, "STANDARD_IA")))),
     "lifecycle.noncurrent_transitions[0].days", "below what S3 accepts"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, transitions=lifecycle((90, "STANDARD_IA"), (100, "DEEP_ARCHIVE")))),
     "lifecycle.transitions[1].days", "30 days in STANDARD_IA"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, noncurrent_expire_days=60)),
     "lifecycle.noncurrent_expire_days", "before the last noncurrent transition"),
    (dict(lifecycle=dataclasses.replace(DEFAULT_LC, abort_incomplete_multipart_days=0)),
     "lifecycle.abort_incomplete_multipart_days", "1 day or more"),
]


@pytest.mark.parametrize("change,key,problem", BAD, ids=[f"{k}:{i}" for i, (_, k, _) in enumerate(BAD)])
def test_bad_settings_are_refused_before_any_call(change, key, problem):
    client = RecordingClient()  # fails the test on any use
    with pytest.raises(BucketSettingsError) as err:
        s3_bucket.reconcile(client, dataclasses.replace(DEFAULT, **change))
    assert client.calls == []
    assert err.value.setting == key and problem in str(err.value)
    assert str(err.value).startswith(f"s3.{key}:") and "Fix:" in str(err.value)


@pytest.mark.parametrize("s3,key", [
    ({"bucket": "Asso_Backups"}, "clusters[0].s3.bucket"),
    ({"region": "mars-1"}, "clusters[0].s3.region"),
    ({"lifecycle": {"transitions": [{"days": 90, "storage_class": "GLACIER_FAST"}]}},
     "clusters[0].s3.lifecycle.transitions[0].storage_class"),
    ({"lifecycle": {"noncurrent_transitions": [{"days": -5, "storage_class": "DEEP_ARCHIVE"}]}},
     "clusters[0].s3.lifecycle.noncurrent_transitions[0].days"),
])
def test_bad_settings_in_the_file_are_refused_when_loaded(s3, key):
    """DAG files load the configuration at parse time: a bad bucket setting is an import error."""
    with pytest.raises(ConfigError) as err:
        parse_config({"clusters": [{"name": "asso", "s3": s3}]})
    assert err.value.setting == key


def test_desired_lifecycle_is_the_runbooks_plus_the_caps():
    rules = {r["ID"]: r for r in s3_bucket.desired_state(settings())["lifecycle"]}
    assert rules[s3_bucket.RULE_CURRENT]["Transitions"] == [
        {"Days": 90, "StorageClass": "STANDARD_IA"}, {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    assert rules[s3_bucket.RULE_NONCURRENT]["NoncurrentVersionTransitions"] == [
        {"NoncurrentDays": 90, "StorageClass": "DEEP_ARCHIVE"}]
    assert rules[s3_bucket.RULE_NONCURRENT]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 730}
    assert rules[s3_bucket.RULE_MULTIPART]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    # Each cap can be turned off (null) without touching the runbook's rules.
    off = settings(lifecycle={"noncurrent_expire_days": None, "abort_incomplete_multipart_days": None})
    rules = {r["ID"]: r for r in s3_bucket.desired_state(off)["lifecycle"]}
    assert set(rules) == {s3_bucket.RULE_CURRENT, s3_bucket.RULE_NONCURRENT}
    assert "NoncurrentVersionExpiration" not in rules[s3_bucket.RULE_NONCURRENT]


def test_policy_merge_keeps_foreign_statements_and_manages_only_ours():
    on, off = settings(), settings(deny_insecure_transport=False)
    ours = s3_bucket.tls_statement("asso-prod-backups")
    assert s3_bucket.merged_policy(on, None)["Statement"] == [ours]
    assert s3_bucket.merged_policy(off, None) is None
    # A foreign statement is kept, in place; ours is added after it.
    foreign_only = {"Version": "2012-10-17", "Id": "secops", "Statement": SECOPS}
    merged = s3_bucket.merged_policy(on, foreign_only)
    assert merged == {"Version": "2012-10-17", "Id": "secops", "Statement": [SECOPS, ours]}
    # Ours, edited by hand, is corrected; foreign statements around it stay where they are.
    edited = dict(ours, Resource=["arn:aws:s3:::asso-prod-backups"])
    merged = s3_bucket.merged_policy(on, {"Version": "2012-10-17", "Statement": [edited, SECOPS]})
    assert merged["Statement"] == [ours, SECOPS]
    # Ours, written differently but meaning the same (reordered list), is left alone.
    same = dict(ours, Resource=list(reversed(ours["Resource"])), Action=["s3:*"])
    assert s3_bucket.merged_policy(on, {"Version": "2012-10-17", "Statement": [same]})["Statement"] == [same]
    # Turned off: ours goes, foreign statements stay.
    assert s3_bucket.merged_policy(off, {"Version": "2012-10-17", "Statement": [ours, SECOPS]})["Statement"] == [SECOPS]
    assert s3_bucket.merged_policy(off, {"Version": "2012-10-17", "Statement": [ours]}) is None


# --------------------------------------------------------------------------------------------
# include/scripts/configure_s3.sh: the runbook's cron script, the same code (its runs are in
# tests/sandbox/test_s3_bucket_sandbox.py)


def test_script_help_names_its_variables():
    import subprocess

    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 0 and "BUCKET_NAME" in proc.stdout and "REGION" in proc.stdout
