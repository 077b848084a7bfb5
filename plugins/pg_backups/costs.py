"""What the backup bucket costs a month, estimated from what the freshness DAG measures (runbook 4:
"surveiller la taille du bucket S3 et les coûts associés").

Input: the bytes and objects by storage class and version state (current, noncurrent) of
:func:`pg_backups.metrics.bucket_usage`. Output, per class and version, three charges:

* ``storage``: bytes / 2^30 x the class's price per GB-month (``s3.prices``, or the default table of
  the bucket's region, ``config.REGION_PRICES``);
* ``archive_overhead``: S3 keeps 40 KiB per object archived in GLACIER or DEEP_ARCHIVE: 32 KiB billed
  at the archive's price, 8 KiB at STANDARD's;
* ``early_deletion``: STANDARD_IA and ONEZONE_IA bill at least 30 days, GLACIER_IR and GLACIER 90,
  DEEP_ARCHIVE 180. From the retention and the lifecycle the life of a backup object is known
  (:func:`stays`): current while the tool keeps the backup, then noncurrent (versioning) until the
  noncurrent expiration; the lifecycle moves it between classes on the way. A class it leaves after
  ``d`` days, ``d`` below the minimum ``m``, bills ``m - d`` more days for every object. In a steady
  state the bytes measured in that class are ``d`` days of arrivals, and as many leave each 30 days
  as arrive, so the charge a month is ``bytes x price x (m - d) / d``.

Not counted: requests, lifecycle transition requests, retrievals, data transfer, STANDARD_IA's
128 KiB minimum object size, volume tiers. It is an estimate for a trend and a lifecycle decision,
not the bill. Nothing here imports Airflow or calls AWS.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from pg_backups.config import REGION_PRICES
from pg_backups.s3_bucket import STORAGE_CLASS_ORDER

if TYPE_CHECKING:
    from pg_backups.config import Cluster

GIB = 2 ** 30
DAYS_PER_MONTH = 30  # AWS prorates by the day; a month is 30 days here
# S3's minimum storage durations (https://aws.amazon.com/s3/pricing/, "minimum storage duration charge").
MINIMUM_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
ARCHIVE_INDEX_BYTES, ARCHIVE_METADATA_BYTES = 32 * 1024, 8 * 1024  # at the archive's price, at STANDARD's
WARM_TO_COLD = ("STANDARD", *STORAGE_CLASS_ORDER)


def price_field(storage_class: str) -> str:
    return storage_class.lower()


def prices(cluster: Cluster) -> tuple[dict[str, float], str]:
    """Price per GB-month of each class: ``s3.prices`` over the default table of the bucket's region."""
    given = {k: v for k, v in dataclasses.asdict(cluster.s3.prices).items() if k != "currency" and v is not None}
    region = REGION_PRICES.get(cluster.s3.region, {})
    source = [*(["s3.prices"] if given else []), *([f"default for {cluster.s3.region}"] if region else [])]
    return {**region, **given}, ", ".join(source) or "none"


def current_days(cluster: Cluster) -> int:
    """How long a backup's objects stay current: until the tool that keeps backups longest deletes them.
    pgBackRest (time retention) keeps the newest full backup older than the retention, so up to one
    full-backup interval more; WAL-G deletes what is older than its retention."""
    days = []
    if "pgbackrest" in cluster.tools:
        interval = math.ceil(7 / max(1, len(set(cluster.pgbackrest.full_backup_days))))
        days.append(cluster.pgbackrest.retention_full_days + interval)
    if "walg" in cluster.tools:
        days.append(cluster.walg.retention_days)
    return max(days)


def stays(cluster: Cluster) -> list[dict]:
    """The classes a backup object passes through, in order: {storage_class, start, end, days, left_as}
    (days since it was written; ``end`` None: kept forever; ``left_as`` the version state it leaves in)."""
    lifecycle = cluster.s3.lifecycle
    current = current_days(cluster)
    moves = [(t.days, t.storage_class) for t in sorted(lifecycle.transitions, key=lambda t: t.days) if t.days < current]
    moves += [(current + t.days, t.storage_class)
              for t in sorted(lifecycle.noncurrent_transitions, key=lambda t: t.days)]
    end = current + lifecycle.noncurrent_expire_days if lifecycle.noncurrent_expire_days is not None else None
    out, storage_class, start = [], "STANDARD", 0
    for day, target in moves:
        if end is not None and day >= end:
            break
        if WARM_TO_COLD.index(target) <= WARM_TO_COLD.index(storage_class):
            continue  # S3 moves objects only to colder classes
        out.append(_stay(storage_class, start, day, current))
        storage_class, start = target, day
    out.append(_stay(storage_class, start, end, current))
    return out


def _stay(storage_class: str, start: int, end: int | None, current: int) -> dict:
    days = None if end is None else end - start
    return {"storage_class": storage_class, "start": start, "end": end, "days": days,
            "left_as": None if end is None else ("current" if end <= current else "noncurrent"),
            "minimum_days": MINIMUM_DAYS.get(storage_class, 0)}


def estimate(cluster: Cluster, usage: dict) -> dict:
    """The monthly estimate of a bucket usage (``metrics.bucket_usage``'s shape): rows of
    {storage_class, version, charge, monthly}, totals, and what it could not price."""
    table, source = prices(cluster)
    currency = cluster.s3.prices.currency
    rows, missing = [], set()
    by_class: dict[str, float] = {}
    for row in usage.get("by_class") or []:
        by_class[row["storage_class"]] = by_class.get(row["storage_class"], 0) + float(row.get("bytes") or 0)
    for row in usage.get("by_class") or []:
        storage_class, version = row["storage_class"], row["version"]
        price = table.get(price_field(storage_class))
        if price is None:
            missing.add(f"s3.prices.{price_field(storage_class)}")
            continue
        labels = {"storage_class": storage_class, "version": version}
        rows.append({**labels, "charge": "storage", "monthly": float(row.get("bytes") or 0) / GIB * price})
        if storage_class in ARCHIVE_CLASSES and row.get("objects"):
            standard = table.get("standard")
            if standard is None:
                missing.add("s3.prices.standard")
            else:
                overhead = row["objects"] * (ARCHIVE_INDEX_BYTES * price + ARCHIVE_METADATA_BYTES * standard) / GIB
                rows.append({**labels, "charge": "archive_overhead", "monthly": overhead})
    life = stays(cluster)
    for stay in life:
        c, days, minimum = stay["storage_class"], stay["days"], stay["minimum_days"]
        price = table.get(price_field(c))
        if days is None or days >= minimum or price is None or not by_class.get(c):
            continue
        monthly = by_class[c] / GIB * price * (minimum - days) / max(days, 1)
        rows.append({"storage_class": c, "version": stay["left_as"], "charge": "early_deletion", "monthly": monthly})
    if missing and not rows:
        total = noncurrent = None
    else:
        total = sum(r["monthly"] for r in rows)
        noncurrent = sum(r["monthly"] for r in rows if r["version"] == "noncurrent")
    text = (f"{money(total, currency)} a month" if total is not None else "not estimated")
    if missing:
        text += (f" (no price for {cluster.s3.region} of {', '.join(sorted(missing))}: set them in the cluster's "
                 f"s3.prices)")
    return {"bucket": usage.get("bucket") or cluster.s3.bucket, "currency": currency, "prices": source,
            "rows": rows, "total_monthly": total, "noncurrent_monthly": noncurrent, "missing": sorted(missing),
            "stays": life, "text": text}


def money(value: float | None, currency: str = "USD") -> str:
    return "-" if value is None else f"{currency} {value:,.2f}"


def samples(cluster: Cluster, usage: dict) -> list[tuple[str, dict, float]]:
    """The estimate as Prometheus samples: pg_backups_s3_bucket_monthly_cost_estimate{cluster, bucket,
    storage_class, version, charge, currency}."""
    result = estimate(cluster, usage)
    base = {"cluster": cluster.name, "bucket": result["bucket"], "currency": result["currency"]}
    return [("s3_bucket_monthly_cost_estimate", {**base, "storage_class": r["storage_class"], "version": r["version"],
                                                  "charge": r["charge"]}, r["monthly"]) for r in result["rows"]]
