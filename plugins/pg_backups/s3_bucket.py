"""The backup bucket as desired state (runbook 2.3): validate, read, compare, apply the difference.

:func:`reconcile` takes any boto3 S3 client (from the Airflow connection through ``S3Hook``, or
from the environment for cron) and returns a report of what had drifted and what it changed.
A second run in a row changes nothing and says so.

Ownership: versioning, public access block and encryption are set exactly. The lifecycle is set
exactly too (the issue asks for exactly the desired rules): rules with other IDs, added by hand,
are removed and named in the report (``removed_rules``), the log and Slack. The bucket policy is
merged instead: only the statement with Sid ``DenyInsecureTransport`` is ours; statements others
added (SecOps) are kept, since removing a security control silently is worse than a foreign one.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from pg_backups.errors import BucketSettingsError

log = logging.getLogger(__name__)

# Colder classes come later in a lifecycle; S3 refuses a transition to a warmer class.
STORAGE_CLASS_ORDER = ("STANDARD_IA", "INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
IA_CLASSES = ("STANDARD_IA", "ONEZONE_IA")
AWS_REGIONS = frozenset("""
af-south-1 ap-east-1 ap-east-2 ap-northeast-1 ap-northeast-2 ap-northeast-3 ap-south-1 ap-south-2
ap-southeast-1 ap-southeast-2 ap-southeast-3 ap-southeast-4 ap-southeast-5 ap-southeast-7
ca-central-1 ca-west-1 cn-north-1 cn-northwest-1 eu-central-1 eu-central-2 eu-north-1 eu-south-1
eu-south-2 eu-west-1 eu-west-2 eu-west-3 il-central-1 me-central-1 me-south-1 mx-central-1
sa-east-1 us-east-1 us-east-2 us-gov-east-1 us-gov-west-1 us-west-1 us-west-2
""".split())
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
RULE_CURRENT, RULE_NONCURRENT, RULE_MULTIPART = "backups-current-tiering", "backups-noncurrent-versions", "abort-incomplete-multipart"
POLICY_SID = "DenyInsecureTransport"  # the one bucket-policy statement this project manages


def validate(s) -> None:
    """Refuse settings that S3 would refuse or that make no sense, before any call to S3."""
    b = s.bucket
    if not BUCKET_RE.match(b) or ".." in b or re.match(r"^\d+\.\d+\.\d+\.\d+$", b) or b.startswith("xn--"):
        raise BucketSettingsError("bucket", f"{b!r} is not a valid S3 bucket name",
                                  "use 3-63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit")
    if s.region not in AWS_REGIONS:
        raise BucketSettingsError("region", f"{s.region!r} is not a known AWS region",
                                  "use a region code such as eu-west-3 (Paris)")
    if s.encryption not in ("AES256", "aws:kms"):
        raise BucketSettingsError("encryption", f"{s.encryption!r} is unknown", "use AES256 or aws:kms")
    if s.kms_key_id and s.encryption != "aws:kms":
        raise BucketSettingsError("kms_key_id", "a KMS key is set but encryption is not aws:kms",
                                  "set encryption: aws:kms, or remove kms_key_id")
    lc = s.lifecycle
    _validate_transitions("lifecycle.transitions", lc.transitions)
    _validate_transitions("lifecycle.noncurrent_transitions", lc.noncurrent_transitions)
    last = max([t.days for t in lc.noncurrent_transitions], default=0)
    if lc.noncurrent_expire_days is not None and lc.noncurrent_expire_days <= last:
        raise BucketSettingsError("lifecycle.noncurrent_expire_days",
                                  f"{lc.noncurrent_expire_days} days comes before the last noncurrent transition ({last} days)",
                                  "expire noncurrent versions after their last transition, or set null to keep them")
    if lc.abort_incomplete_multipart_days is not None and lc.abort_incomplete_multipart_days < 1:
        raise BucketSettingsError("lifecycle.abort_incomplete_multipart_days", "must be 1 day or more",
                                  "use a few days (default 7), or null to keep incomplete uploads")


def _validate_transitions(key: str, transitions) -> None:
    previous = None
    for i, t in enumerate(transitions):
        where = f"{key}[{i}]"
        if t.storage_class not in STORAGE_CLASS_ORDER:
            raise BucketSettingsError(f"{where}.storage_class", f"{t.storage_class!r} is not an S3 storage class for transitions",
                                      f"use one of {', '.join(STORAGE_CLASS_ORDER)}")
        minimum = 30 if t.storage_class in IA_CLASSES else 0  # S3: 0 = at the next midnight for the others
        if t.days < minimum:
            raise BucketSettingsError(f"{where}.days", f"{t.days} days is below what S3 accepts for {t.storage_class} ({minimum})",
                                      f"use {minimum} days or more")
        if previous is not None:
            order = STORAGE_CLASS_ORDER.index
            if order(t.storage_class) <= order(previous.storage_class) or t.days <= previous.days:
                raise BucketSettingsError(f"{where}", f"{t.storage_class} at {t.days} days is out of order after "
                                          f"{previous.storage_class} at {previous.days} days",
                                          "list transitions from warm to cold with increasing days (STANDARD_IA before DEEP_ARCHIVE)")
            if previous.storage_class in IA_CLASSES and t.days - previous.days < 30:
                raise BucketSettingsError(f"{where}.days", f"objects must stay 30 days in {previous.storage_class} before moving on",
                                          f"use {previous.days + 30} days or more")
        previous = t


# --------------------------------------------------------------------------------------------
# Desired state


def desired_state(s) -> dict:
    lc = s.lifecycle
    rules = []
    if lc.transitions:
        rules.append({"ID": RULE_CURRENT, "Status": "Enabled", "Filter": {"Prefix": ""},
                      "Transitions": [{"Days": t.days, "StorageClass": t.storage_class} for t in lc.transitions]})
    noncurrent: dict = {}
    if lc.noncurrent_transitions:
        noncurrent["NoncurrentVersionTransitions"] = [
            {"NoncurrentDays": t.days, "StorageClass": t.storage_class} for t in lc.noncurrent_transitions]
    if lc.noncurrent_expire_days is not None:
        noncurrent["NoncurrentVersionExpiration"] = {"NoncurrentDays": lc.noncurrent_expire_days}
    if noncurrent:
        rules.append({"ID": RULE_NONCURRENT, "Status": "Enabled", "Filter": {"Prefix": ""}, **noncurrent})
    if lc.abort_incomplete_multipart_days is not None:
        rules.append({"ID": RULE_MULTIPART, "Status": "Enabled", "Filter": {"Prefix": ""},
                      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": lc.abort_incomplete_multipart_days}})
    sse = {"SSEAlgorithm": s.encryption}
    if s.kms_key_id:
        sse["KMSMasterKeyID"] = s.kms_key_id
    policy = None
    if s.deny_insecure_transport:
        policy = {"Version": "2012-10-17", "Statement": [tls_statement(s.bucket)]}
    return {
        "versioning": "Enabled",
        "lifecycle": rules,
        "public_access_block": dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"),
            s.block_public_access) if s.block_public_access else None,
        "encryption": sse,
        "policy": policy,
    }


def tls_statement(bucket: str) -> dict:
    return {"Sid": POLICY_SID, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def merged_policy(s, current: dict | None) -> dict | None:
    """The bucket policy we want: every statement someone else added (SecOps) kept as it is and
    where it is; only the statement with our Sid is managed (added, corrected, or removed when
    deny_insecure_transport is off). No statement left: no policy."""
    statements = (current or {}).get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else list(statements)
    ours = tls_statement(s.bucket) if s.deny_insecure_transport else None
    out, placed = [], False
    for st in statements:
        if st.get("Sid") != POLICY_SID:
            out.append(st)
        elif ours and not placed:
            out.append(st if _normal_statement(st) == _normal_statement(ours) else ours)
            placed = True
    if ours and not placed:
        out.append(ours)
    if not out:
        return None
    base = {k: v for k, v in (current or {}).items() if k != "Statement"} or {"Version": "2012-10-17"}
    return {**base, "Statement": out}


def _normal_statement(st: dict) -> dict:
    """Policies come back with single values unwrapped and lists reordered: compare in one form."""
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in sorted(v.items())}
        if isinstance(v, list):
            return sorted((norm(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
        return v
    out = {}
    for k, v in st.items():
        if k in ("Action", "NotAction", "Resource", "NotResource") and isinstance(v, str):
            v = [v]
        out[k] = norm(v)
    return out


def _normal_policy(policy: dict | None):
    if not policy:
        return None
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    return {**{k: v for k, v in policy.items() if k != "Statement"},
            "Statement": [_normal_statement(st) for st in statements]}


# --------------------------------------------------------------------------------------------
# Reading what the bucket has, in the same normal form


def _error_code(exc) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _absent(call, *codes):
    try:
        return call()
    except Exception as exc:  # botocore ClientError; imported lazily by callers' clients
        if _error_code(exc) in codes:
            return None
        raise


def _normal_rule(rule: dict) -> dict:
    filt = dict(rule.get("Filter") or {})
    filt["Prefix"] = filt.get("Prefix", rule.get("Prefix", ""))  # no Filter, {} and {"Prefix": ""} mean all
    out = {"ID": rule.get("ID"), "Status": rule.get("Status"), "Filter": filt}
    if rule.get("Transitions"):
        out["Transitions"] = sorted(({"Days": t.get("Days"), "StorageClass": t["StorageClass"]} for t in rule["Transitions"]),
                                    key=lambda t: t["Days"] or 0)
    if rule.get("NoncurrentVersionTransitions"):
        out["NoncurrentVersionTransitions"] = sorted(
            ({"NoncurrentDays": t.get("NoncurrentDays"), "StorageClass": t["StorageClass"]}
             for t in rule["NoncurrentVersionTransitions"]), key=lambda t: t["NoncurrentDays"] or 0)
    if rule.get("NoncurrentVersionExpiration"):
        out["NoncurrentVersionExpiration"] = {k: v for k, v in rule["NoncurrentVersionExpiration"].items()
                                              if k in ("NoncurrentDays", "NewerNoncurrentVersions")}
    if rule.get("AbortIncompleteMultipartUpload"):
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")}
    if rule.get("Expiration"):
        out["Expiration"] = rule["Expiration"]
    return out


def current_state(client, bucket: str) -> dict:
    versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "Off")
    lifecycle = _absent(lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"],
                        "NoSuchLifecycleConfiguration")
    pab = _absent(lambda: client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"],
                  "NoSuchPublicAccessBlockConfiguration")
    enc = _absent(lambda: client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"],
                  "ServerSideEncryptionConfigurationNotFoundError")
    policy = _absent(lambda: client.get_bucket_policy(Bucket=bucket)["Policy"], "NoSuchBucketPolicy")
    sse = None
    if enc and enc.get("Rules"):
        default = enc["Rules"][0].get("ApplyServerSideEncryptionByDefault", {})
        sse = {k: default[k] for k in ("SSEAlgorithm", "KMSMasterKeyID") if default.get(k)}
    return {
        "versioning": versioning,
        "lifecycle": sorted((_normal_rule(r) for r in lifecycle or []), key=lambda r: r["ID"] or ""),
        "public_access_block": {k: pab[k] for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                                    "RestrictPublicBuckets")} if pab else None,
        "encryption": sse,
        "policy": json.loads(policy) if policy else None,
    }


def _normal_desired(desired: dict) -> dict:
    return {**desired, "lifecycle": sorted((_normal_rule(r) for r in desired["lifecycle"]), key=lambda r: r["ID"])}


# --------------------------------------------------------------------------------------------
# Applying the difference


@dataclass
class Report:
    bucket: str
    created: bool = False
    drift: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.created or bool(self.drift)

    def as_dict(self) -> dict:
        return {"bucket": self.bucket, "created": self.created, "changed": self.changed,
                "drift": self.drift, "drifted_settings": [d["setting"] for d in self.drift],
                "removed_lifecycle_rules": self.removed_rules, "summary": self.summary()}

    @property
    def removed_rules(self) -> list:
        return [rule for d in self.drift for rule in d.get("removed_rules", [])]

    def summary(self) -> str:
        if self.created:
            return f"bucket {self.bucket}: created and configured ({', '.join(d['setting'] for d in self.drift)})"
        if self.drift:
            removed = f" (removed foreign lifecycle rules: {', '.join(map(str, self.removed_rules))})" \
                if self.removed_rules else ""
            return f"bucket {self.bucket}: drift repaired in {', '.join(d['setting'] for d in self.drift)}{removed}"
        return f"bucket {self.bucket}: no drift, nothing changed"


def ensure_bucket(client, s) -> bool:
    """Create the bucket in its region if missing; refuse one that lives in another region."""
    try:
        client.head_bucket(Bucket=s.bucket)
    except Exception as exc:
        if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        kwargs = {"Bucket": s.bucket}
        if s.region != "us-east-1":  # us-east-1 is the one region S3 refuses as a constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": s.region}
        client.create_bucket(**kwargs)
        log.info("created bucket %s in %s", s.bucket, s.region)
        return True
    location = client.get_bucket_location(Bucket=s.bucket).get("LocationConstraint") or "us-east-1"
    location = "eu-west-1" if location == "EU" else location  # the legacy name of eu-west-1
    if location != s.region:
        raise BucketSettingsError("region", f"bucket {s.bucket} exists in {location}, not in the configured region "
                                  f"{s.region}; nothing was changed", f"set s3.region to {location} or choose "
                                  "another bucket name")
    return False


def reconcile(client, s) -> Report:
    validate(s)
    report = Report(bucket=s.bucket, created=ensure_bucket(client, s))
    want = _normal_desired(desired_state(s))
    have = current_state(client, s.bucket)
    want["policy"] = merged_policy(s, have["policy"])
    bucket = s.bucket
    appliers = {
        # Public access first: nothing may be exposed while the rest is being set.
        "public_access_block": lambda v: client.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=v) if v else client.delete_public_access_block(Bucket=bucket),
        "encryption": lambda v: client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": v, "BucketKeyEnabled": v["SSEAlgorithm"] == "aws:kms"}]}),
        "versioning": lambda v: client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": v}),
        "lifecycle": lambda v: client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": v}) if v else client.delete_bucket_lifecycle(Bucket=bucket),
        "policy": lambda v: client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(v))
        if v else client.delete_bucket_policy(Bucket=bucket),
    }
    same = {"policy": lambda a, b: _normal_policy(a) == _normal_policy(b)}
    for setting, apply in appliers.items():
        if not same.get(setting, lambda a, b: a == b)(have[setting], want[setting]):
            entry = {"setting": setting, "was": have[setting], "now": want[setting]}
            if setting == "lifecycle":
                # Exactly the desired lifecycle: rules with other IDs (added by hand) go, and say so.
                ours = {r["ID"] for r in want["lifecycle"]}
                entry["removed_rules"] = [r["ID"] for r in have["lifecycle"] if r["ID"] not in ours]
                if entry["removed_rules"]:
                    log.warning("bucket %s: removing lifecycle rules this project does not manage: %s",
                                bucket, ", ".join(map(str, entry["removed_rules"])))
            report.drift.append(entry)
            apply(want[setting])
            log.info("bucket %s: %s changed from %s to %s", bucket, setting,
                     json.dumps(have[setting], sort_keys=True), json.dumps(want[setting], sort_keys=True))
    log.info(report.summary())
    return report
