"""Command line for cron (``include/scripts/*.sh``): the runbook's variables in, the same
operations as the DAGs out.

    python -m pg_backups.cli configure-s3        # BUCKET_NAME, REGION
    python -m pg_backups.cli pgbackrest-backup   # PG_BACKREST_STANZA, PG_BACKREST_CONFIG, PGHOST, PGPORT, PGUSER
    python -m pg_backups.cli walg-backup         # PGHOST, PGPORT, PGUSER, PGDATA, WALG_S3_PREFIX
    python -m pg_backups.cli archive-command     # the archive_command to put in postgresql.conf
    python -m pg_backups.cli write-configs       # pgbackrest.conf + walg.json for the database host
    python -m pg_backups.cli pgbackrest-verify   # whole-repository `pgbackrest verify` (weekly)
    python -m pg_backups.cli verify-backup       # the verification drill: VERIFY_TOOL, VERIFY_LABEL (default: newest)
    python -m pg_backups.cli verify-pitr         # the random-point PITR drill: VERIFY_TOOL, VERIFY_TARGET_TIME
                                                 # (default: drawn from the recovery window)
    python -m pg_backups.cli heartbeat           # one heartbeat row into production (cron: every 15 min)
    python -m pg_backups.cli list-pools          # the Airflow pools to create: name, slots, description
    python -m pg_backups.cli check-config [FILE] # every problem of the file (pre-commit, CI); exit 0 or 2
    python -m pg_backups.cli restore-test        # RESTORE_TOOL, STAGING_PGDATA, STAGING_CONNECTION_URI,
                                                 # PG_BACKREST_STANZA, PG_BACKREST_CONFIG (runbook 3)

The cluster comes from the cluster configuration (``$PG_BACKUPS_CONFIG``), chosen by --cluster or
PG_BACKREST_STANZA (or the only one configured); the runbook's variables override its values.
S3 credentials come from the standard AWS variables (or an instance role), never from code.
On failure the script exits non-zero and, when SLACK_WEBHOOK_URL is set, alerts Slack.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pg_backups import alerts, operations, pitr, runner, verification
from pg_backups.config import build_cluster, check_file, load_config, with_overrides
from pg_backups.errors import EXIT_FAILED, EXIT_REFUSED, ConfigError, PgBackupsError, RestoreRefused, config_problem
from pg_backups.s3_access import access_from_env
from pg_backups.staging import StagingConnection

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger("pg_backups")

COMMANDS = ("configure-s3", "pgbackrest-backup", "walg-backup", "archive-command", "write-configs", "restore-test",
            "list-pools", "check-config", "pgbackrest-verify", "verify-backup", "verify-pitr", "heartbeat")


def runbook_overrides(env) -> dict:
    """The runbook's environment variables, as overrides of the cluster configuration."""
    over: dict = {}
    if env.get("PGHOST"):
        # A directory is a Unix socket (as libpq reads PGHOST); anything else is a host name, and
        # then the tools connect to it over TCP (with PGPASSWORD), not to the configured socket.
        if env["PGHOST"].startswith("/"):
            over["socket_directory"] = env["PGHOST"]
        else:
            over["host"], over["socket_directory"] = env["PGHOST"], None
    if env.get("PGPORT"):
        over["port"] = _int(env["PGPORT"], "PGPORT")
    if env.get("PGUSER"):
        over["user"] = env["PGUSER"]
    if env.get("PGDATA"):
        over["data_directory"] = env["PGDATA"]
    if env.get("PG_BACKREST_CONFIG"):
        # The runbook's hand-written pgbackrest.conf: read it, never overwrite it.
        over["pgbackrest"] = {"config_path": env["PG_BACKREST_CONFIG"], "manage_config": False}
    s3: dict = {}
    if env.get("BUCKET_NAME"):
        s3["bucket"] = env["BUCKET_NAME"]
    if env.get("REGION"):
        s3["region"] = env["REGION"]
    if env.get("WALG_S3_PREFIX"):
        prefix = env["WALG_S3_PREFIX"]
        if not prefix.startswith("s3://") or "/" not in prefix[5:]:
            raise ConfigError("WALG_S3_PREFIX", "WALG_S3_PREFIX", f"{prefix!r} is not s3://<bucket>/<path>",
                              "write it as in the runbook: s3://asso-prod-backups/postgres")
        bucket, _, path = prefix[5:].partition("/")
        s3["bucket"] = bucket
        over["walg"] = {"prefix": path}
    if s3:
        over["s3"] = s3
    restore_test: dict = {}
    if env.get("RESTORE_TOOL"):
        restore_test["tool"] = env["RESTORE_TOOL"]
    if env.get("STAGING_PGDATA"):
        restore_test["staging_data_directory"] = env["STAGING_PGDATA"]
    if restore_test:
        over["restore_test"] = restore_test
    return over


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(name, name, f"{value!r} is not a number", f"set {name} to a port number") from None


def running_config():
    """The configuration as the DAGs run it; what runs on the last good copy is said on stderr."""
    config = load_config(strict=False)  # another cluster's mistake does not stop this one's backup
    if config.last_good:
        log.warning("the cluster configuration has problems; running on the last good configuration of %s for %s: %s",
                    config.last_good_time, ", ".join(config.last_good), "; ".join(str(e) for e in config.errors))
    return config


def check_config(path: str | None) -> int:
    """Every problem of the file (file, key, fix) on stderr and exit 2, or a summary and exit 0.
    Reads the file only: no copy is written or used."""
    config = check_file(path)
    for error in config.errors:
        print(error, file=sys.stderr)
    if config.errors:
        print(f"{config.source}: {len(config.errors)} problem(s); valid clusters: "
              f"{', '.join(c.name for c in config.clusters) or 'none'}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{config.source}: valid, clusters: {', '.join(c.name for c in config.clusters)}")
    return 0


def resolve_cluster(name: str | None, env=os.environ):
    config = running_config()
    name = name or env.get("PG_BACKREST_STANZA")
    if name is None:
        if config.errors and not config.clusters:
            raise config_problem(config.errors)
        if len(config.clusters) != 1:
            raise ConfigError(config.source, "clusters", "several clusters are configured",
                              "choose one with --cluster or PG_BACKREST_STANZA")
        cluster = config.clusters[0]
    elif any(c.name == name for c in config.clusters):
        cluster = config.cluster(name)
    elif env.get("PG_BACKREST_CONFIG"):
        cluster = build_cluster({"name": name}, "PG_BACKREST_STANZA")  # a stanza known only to the hand-written file
    else:
        cluster = config.cluster(name)  # raises: names the configured ones
    over = runbook_overrides(env)
    if not over:
        return cluster
    try:
        return with_overrides(cluster, over, "environment (runbook variables)")
    except ConfigError as exc:  # name the variable the operator set, not only the setting
        key = exc.setting.removeprefix("cluster.")
        var = next((v for v in RUNBOOK_VARIABLES.get(key, ()) if env.get(v)), None)
        if var is None:
            raise
        raise ConfigError(exc.source, f"{var} (setting {key})", exc.problem, exc.fix) from None


# Which runbook variable sets which setting, so that a refused value is reported by its variable.
RUNBOOK_VARIABLES = {
    "s3.region": ("REGION",), "s3.bucket": ("BUCKET_NAME", "WALG_S3_PREFIX"), "walg.prefix": ("WALG_S3_PREFIX",),
    "host": ("PGHOST",), "socket_directory": ("PGHOST",), "port": ("PGPORT",), "user": ("PGUSER",),
    "data_directory": ("PGDATA",), "pgbackrest.config_path": ("PG_BACKREST_CONFIG",),
    "restore_test.tool": ("RESTORE_TOOL",), "restore_test.staging_data_directory": ("STAGING_PGDATA",),
}


def alert_slack(text: str, env=os.environ) -> None:
    url = env.get("SLACK_WEBHOOK_URL")
    if not url:
        return
    try:
        alerts.send(alerts.webhook_client(url), text)
    except Exception as exc:  # noqa: BLE001 - an unreachable Slack must not hide the failure being reported
        log.warning("could not alert Slack: %s", type(exc).__name__)


def restore_test(cluster: Cluster, access, run_id: str, env=os.environ) -> dict:
    """Runbook 3 for cron: the whole drill, its audit line with the sign-off "pending"."""
    if not env.get("STAGING_CONNECTION_URI"):
        # The checks need staging's database; without it they would look in `postgres` and fail late.
        raise ConfigError("environment", "STAGING_CONNECTION_URI", "missing",
                          "export it as in the runbook: postgresql://<user>:<password>@<staging host>:<port>/app")
    staging = StagingConnection.from_uri(env["STAGING_CONNECTION_URI"])
    tool = cluster.restore_test.tool
    try:
        return operations.restore_test(cluster, tool, access, access.boto3_client(), run_id,
                                       label=env.get("RESTORE_BACKUP_LABEL") or None,
                                       target_time=env.get("RESTORE_TARGET_TIME") or None, staging_conn=staging,
                                       dbname=staging.dbname if staging else None)
    except RestoreRefused as exc:  # name the variable the operator set, not only the setting
        var = next((v for v in RUNBOOK_VARIABLES.get(exc.setting, ()) if env.get(v)), None)
        if var is None:
            raise
        raise RestoreRefused(f"{var} (setting {exc.setting})", exc.problem, exc.fix) from None


def variables_in_effect(env=os.environ) -> str:
    """The runbook variables this run was given, for a failure message (a password only as 'set')."""
    names = sorted({v for names in RUNBOOK_VARIABLES.values() for v in names} | {"PGPASSWORD"})
    return ", ".join(f"{n}=(set)" if n == "PGPASSWORD" else f"{n}={env[n]}" for n in names if env.get(n))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pg_backups.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("file", nargs="?", help="check-config only: the file to check (default: $PG_BACKUPS_CONFIG)")
    parser.add_argument("--cluster", help="cluster name (default: PG_BACKREST_STANZA, or the only one)")
    args = parser.parse_args(argv)
    if args.file and args.command != "check-config":
        parser.error("a FILE is taken by check-config only")
    if args.command == "check-config":
        return check_config(args.file)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    run_id = "cron__" + datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster = None
    if args.command == "list-pools":  # for deployment: `airflow pools set NAME SLOTS DESCRIPTION` each line
        seen = set()
        for configured in running_config().clusters:
            for pool in configured.pools:
                if pool.name not in seen:  # clusters on one database host share its pool
                    seen.add(pool.name)
                    print(f"{pool.name} {pool.slots} {pool.description}")
        return 0
    try:
        cluster = resolve_cluster(args.cluster)
        access = access_from_env(cluster.s3)
        if args.command == "configure-s3":
            result = operations.configure_bucket(cluster, access.boto3_client())
            if result["changed"]:  # as the DAG does: drift is news for Ops
                alert_slack(f":wrench: cron configure-s3, cluster `{cluster.name}`: {result['summary']}")
        elif args.command == "pgbackrest-backup":
            result = operations.pgbackrest_daily(cluster, access, run_id)
        elif args.command == "walg-backup":
            result = operations.walg_daily(cluster, access, run_id)
        elif args.command == "restore-test":
            result = restore_test(cluster, access, run_id)
        elif args.command == "pgbackrest-verify":
            result = {"verify": operations.pgbackrest_verify(cluster)}
        elif args.command == "verify-backup":
            uri = os.environ.get("STAGING_CONNECTION_URI")  # the checks' database, as the restore test's
            result = verification.run_drill(cluster, os.environ.get("VERIFY_TOOL") or cluster.restore_test.tool,
                                            access, access.boto3_client(), run_id, os.environ.get("VERIFY_LABEL") or None,
                                            StagingConnection.from_uri(uri).dbname if uri else None)
        elif args.command == "verify-pitr":
            uri = os.environ.get("STAGING_CONNECTION_URI")
            result = pitr.run_drill(cluster, os.environ.get("VERIFY_TOOL") or cluster.restore_test.tool, access,
                                    access.boto3_client(), run_id, os.environ.get("VERIFY_TARGET_TIME") or None,
                                    StagingConnection.from_uri(uri).dbname if uri else None)
        elif args.command == "heartbeat":
            result = pitr.write_heartbeat(cluster)
        elif args.command == "archive-command":
            print(operations.archive_command(cluster))
            return 0
        else:
            result = {"written": operations.write_tool_configs(cluster, access)}
    except Exception as exc:  # report every failure loudly, with a non-zero exit
        code = exc.exit_code if isinstance(exc, PgBackupsError) else EXIT_FAILED
        given = variables_in_effect()
        message = runner.redact(f"{type(exc).__name__}: {exc}" + (f" [runbook variables in effect: {given}]"
                                                                    if given else ""),
                                runner.secrets_of(dict(os.environ)))
        if code == EXIT_FAILED:
            log.error("%s failed: %s", args.command, message)
            alert_slack(f":red_circle: cron {args.command} failed on cluster "
                        f"`{cluster.name if cluster else '?'}`: {message}")
        else:  # refused before anything ran: the configuration, the guard, a setting S3 would refuse
            log.error("configuration refused, nothing was changed: %s", message)
            alert_slack(f":red_circle: {args.command} refused its configuration: {message}")
        return code
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
