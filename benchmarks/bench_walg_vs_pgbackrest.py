"""pgBackRest and WAL-G side by side, on the same pgbench database, to the sandbox's S3, in one run.

For each: a full backup and a restore of it, wall and CPU seconds, bytes and objects the backup
stored; once through the code the DAG tasks run (``operations.pgbackrest_backup`` /
``operations.walg_backup``, ``operations.restore_latest_backup`` into staging) and once directly
(``pgbackrest backup`` / ``wal-g backup-push``, ``pgbackrest restore`` / ``wal-g backup-fetch``).
Then pgBackRest's settings that close the gap: file bundling (``repo1-bundle``, 2.39+),
compression type, process-max; and ``pgbackrest verify`` on the bundled repository (verify is
kept). Goal: pgBackRest's backup and restore within 1.5x of WAL-G's.

    WALG_BIN=/path/to/wal-g SANDBOX_PORT_BASE=27900 SANDBOX_DIR=/var/tmp/pg-backups-bench \\
        nice .venv/bin/python benchmarks/bench_walg_vs_pgbackrest.py [--scale 35]

It brings the sandbox up (SANDBOX_DIR, SANDBOX_PORT_BASE), adds a `bench` database (pgbench,
scale 35 is about 530 MB, 68 about 1 GB) and leaves it up: `sandbox.py destroy` removes it all.
Needs a WAL-G binary (found as the sandbox finds it: WALG_BIN, .tools/bin/wal-g, PATH).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sandbox"))

import sandbox as sb  # noqa: E402
from pg_backups import operations, pgbackrest, runner, walg  # noqa: E402
from pg_backups.config import load_config  # noqa: E402


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(fn) -> dict:
    """Wall and CPU seconds (of the child processes: the tools and their workers) of ``fn()``."""
    cpu, started = cpu_children(), time.monotonic()
    result = fn()
    return {"wall": round(time.monotonic() - started, 2), "cpu": round(cpu_children() - cpu, 2), "result": result}


def stored(s3, bucket: str, prefix: str) -> tuple[int, int]:
    """Bytes and objects under ``prefix``."""
    size = count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            size, count = size + obj["Size"], count + 1
    return size, count


def scratch(L, name: str) -> Path:
    path = L.root / "bench-restore" / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    shutil.chown(path.parent, "postgres", "postgres")
    shutil.chown(path, "postgres", "postgres")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=35, help="pgbench scale (35 is about 530 MB, 68 about 1 GB)")
    args = parser.parse_args()
    machine.print_context("wal-g-vs-pgbackrest")
    if sb.find_walg() is None:
        raise SystemExit(sb.WALG_MISSING)
    L, _ = sb.up_for_scripts()
    cluster = load_config(L.clusters_file).cluster(sb.STANZA)
    access = sb.access(L, sb.credentials(L))
    s3 = access.boto3_client()
    bucket = cluster.s3.bucket
    operations.configure_bucket(cluster, s3)
    operations.pgbackrest_preflight(cluster, access)  # the stanza: the two-tool archive_command works
    sb.ensure_pgbench(L, args.scale)
    sb.psql(L, "CHECKPOINT", db="postgres")
    size = int(sb.psql(L, "SELECT sum(pg_database_size(datname)) FROM pg_database", db="postgres"))
    print(f"databases: {size / 1e6:.0f} MB; WAL-G {cluster.walg.binary} ({cluster.walg.compression}); "
          f"pgBackRest {cluster.pgbackrest.compress_type} level {cluster.pgbackrest.compress_level}, process-max "
          f"{cluster.pgbackrest.process_max}, bundle {cluster.pgbackrest.bundle}", flush=True)
    runuser = ["runuser", "-u", cluster.os_user, "--"]
    pb_prefix = f"{cluster.pgbackrest.repo_path.strip('/')}/backup/{cluster.stanza}/"
    wg_prefix = f"{cluster.walg.prefix.strip('/')}/basebackups_005/"
    rows: dict[str, dict] = {}

    def pgbackrest_direct(*options: str) -> dict:
        m = measure(lambda: runner.run([*runuser, *pgbackrest.command(cluster, "backup", "--type=full", *options)]))
        label = pgbackrest.latest_backup(cluster)["label"]
        m["bytes"], m["objects"] = stored(s3, bucket, pb_prefix + label + "/")
        m["label"] = label
        return m

    def pgbackrest_restore(label: str, *options: str) -> dict:
        target = scratch(L, "pgbackrest")
        return measure(lambda: runner.run([*runuser, *pgbackrest.command(
            cluster, "restore", f"--pg1-path={target}", "--archive-mode=off", f"--set={label}", *options)]))

    def walg_direct() -> dict:
        m = measure(lambda: walg.run(cluster, access, "backup-push", cluster.data_directory))
        name = walg.newest(walg.backup_list(cluster, access))["backup_name"]
        m["bytes"], m["objects"] = stored(s3, bucket, wg_prefix + name)
        m["label"] = name
        return m

    def walg_restore(name: str) -> dict:
        target = scratch(L, "walg")
        return measure(lambda: walg.run(cluster, access, "backup-fetch", str(target), name))

    def task_restore(tool: str, label: str) -> dict:
        m = measure(lambda: operations.restore_latest_backup(cluster, tool, access, label))
        m["result"] = m["result"]["restore_seconds"]
        return m

    # Through the code the DAG tasks run (backup, then restore into staging), then directly.
    print("\n== each tool: full backup and restore ==", flush=True)
    task = measure(lambda: operations.pgbackrest_backup(cluster, "full", "bench-task-pgbackrest"))
    label = pgbackrest.latest_backup(cluster)["label"]
    task["bytes"], task["objects"] = stored(s3, bucket, pb_prefix + label + "/")
    rows["pgbackrest task"] = {**task, "restore": task_restore("pgbackrest", label)}
    task = measure(lambda: operations.walg_backup(cluster, access, "bench-task-walg"))
    name = task["result"]["label"]
    task["bytes"], task["objects"] = stored(s3, bucket, wg_prefix + name)
    rows["walg task"] = {**task, "restore": task_restore("walg", name)}
    operations.restore_stop_staging(cluster)

    direct = walg_direct()
    rows["walg direct"] = {**direct, "restore": walg_restore(direct["label"])}
    configured = "y" if cluster.pgbackrest.bundle else "n"
    pb = cluster.pgbackrest
    variants = {
        f"pgbackrest direct (as configured: bundle={configured}, {pb.compress_type} level {pb.compress_level})": [],
        "pgbackrest direct, no bundle, zst level 3": ["--no-repo1-bundle", "--compress-type=zst", "--compress-level=3"],
        "pgbackrest direct, bundle, zst level 3": ["--repo1-bundle", "--compress-type=zst", "--compress-level=3"],
        "pgbackrest direct, bundle, lz4 level 1": ["--repo1-bundle", "--compress-type=lz4", "--compress-level=1"],
        "pgbackrest direct, bundle, zst level 1, process-max 1": ["--repo1-bundle", "--compress-type=zst",
                                                                  "--compress-level=1", "--process-max=1"],
    }
    for name_, options in variants.items():
        m = pgbackrest_direct(*options)
        rows[name_] = {**m, "restore": pgbackrest_restore(m["label"])}
        print(f"  {name_}: backup {m['wall']} s", flush=True)
    verify = measure(lambda: pgbackrest.verify(cluster))

    print(f"\n{'':64} {'backup s':>8} {'CPU s':>7} {'MB':>7} {'objects':>7} {'restore s':>9} {'CPU s':>7}")
    for key, row in rows.items():
        restore = row["restore"]
        print(f"{key:64} {row['wall']:8.1f} {row['cpu']:7.1f} {row['bytes'] / 1e6:7.1f} {row['objects']:7d} "
              f"{restore['wall']:9.1f} {restore['cpu']:7.1f}")
    print(f"pgbackrest verify (whole repository, bundles included): {verify['wall']:.1f} s, {verify['result']}")
    base = rows["walg direct"]
    print("\npgBackRest / WAL-G (direct; goal <= 1.5 for backup and restore):")
    for key, row in rows.items():
        if key.startswith("pgbackrest direct"):
            print(f"  {key}: backup {row['wall'] / base['wall']:.2f}x, restore "
                  f"{row['restore']['wall'] / base['restore']['wall']:.2f}x, objects {row['objects']} vs {base['objects']}")
    shutil.rmtree(L.root / "bench-restore", ignore_errors=True)
    print(json.dumps({k: {**{f: v for f, v in r.items() if f not in ("result", "restore")},
                          "restore_wall": r["restore"]["wall"], "restore_cpu": r["restore"]["cpu"]}
                      for k, r in rows.items()} | {"verify_seconds": verify["wall"], "database_bytes": size}))


if __name__ == "__main__":
    main()
    machine.print_context("wal-g-vs-pgbackrest")
