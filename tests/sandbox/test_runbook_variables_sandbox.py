"""The runbook's variables are used or refused, never silently ignored; an error names the variable
the operator set; a hand-written pgbackrest.conf is checked before anything runs (real cron scripts
against the sandbox)."""

from __future__ import annotations

import json

import pytest

import sandbox as sandbox_module
from pg_backups import pgbackrest

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

BACKUP = "include/scripts/pgbackrest_backup.sh"


def backup_labels(sandbox) -> list[str]:
    return [b["label"] for b in pgbackrest.info(sandbox.cluster()).get("backup", [])]


def markers(sandbox) -> int:
    return int(sandbox.psql("SELECT count(*) FROM pg_backups_marker", db="postgres") or 0)


@pytest.mark.parametrize("variables,exit_code,says", [
    # The configured socket used to win over PGHOST: this backed up successfully.
    ({"PGHOST": "127.0.0.2", "PGPASSWORD": "wrong-password-zz9"}, 1, "is not accepting connections"),
    ({"PGHOST": "127.0.0.1", "PGPASSWORD": "wrong-password-zz9"}, 2, "password authentication failed"),
    ({"PGUSER": "nosuchuser"}, 2, "refused the login"),  # it ended in pgBackRest's "[027]: no database found"
])
def test_a_database_variable_is_used_and_a_bad_one_named(first_backup, sandbox, variables, exit_code, says):
    labels, marked = backup_labels(sandbox), markers(sandbox)
    proc = sandbox.run(BACKUP, env={**variables, "SLACK_WEBHOOK_URL": ""}, check=False, timeout=300)
    assert proc.returncode == exit_code, proc.stderr[-3000:]
    assert says in proc.stderr and "Fix:" in proc.stderr
    for name, value in variables.items():  # the variables the operator set, by name (a password never)
        assert (f"{name}=(set)" if name == "PGPASSWORD" else f"{name}={value}") in proc.stderr
    assert "wrong-password-zz9" not in proc.stdout + proc.stderr
    assert backup_labels(sandbox) == labels and markers(sandbox) == marked  # nothing was backed up or written


def test_pg_backrest_config_naming_the_generated_file_works(first_backup, sandbox):
    """The variable used to drop the credentials include: [037] ... requires option: repo1-s3-key."""
    cluster = sandbox.cluster()
    proc = sandbox.run(BACKUP, env={"PG_BACKREST_CONFIG": cluster.pgbackrest.config_path}, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["label"] == backup_labels(sandbox)[-1]


def test_the_runbooks_hand_written_configuration_is_refused_before_anything_runs(first_backup, sandbox):
    """The runbook's own pgbackrest.conf line: refused with the file, the line and the fix, exit 2,
    before stanza-create, check or the marker row in production."""
    cluster = sandbox.cluster()
    directory = sandbox.layout.root / "test-configs"  # where postgres (pgBackRest's user) can read it
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    handwritten = directory / "runbook-pgbackrest.conf"
    text = open(cluster.pgbackrest.config_path).read().replace(
        "repo1-retention-full=30", "repo1-retention-full=30\nrepo1-retention-archive-type=time")
    handwritten.write_text(text)
    handwritten.chmod(0o644)
    line = text.splitlines().index("repo1-retention-archive-type=time") + 1
    labels, marked = backup_labels(sandbox), markers(sandbox)
    proc = sandbox.run(BACKUP, env={"PG_BACKREST_CONFIG": str(handwritten), "SLACK_WEBHOOK_URL": ""}, check=False,
                       timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{handwritten}: line {line}: repo1-retention-archive-type=time" in proc.stderr
    assert "'time' is not allowed" in proc.stderr and "Fix: use full, diff or incr" in proc.stderr
    assert " stanza-create" not in proc.stderr and " check" not in proc.stderr  # nothing ran
    assert backup_labels(sandbox) == labels and markers(sandbox) == marked
    handwritten.chmod(0o600)  # owned by root: pgBackRest, as postgres, cannot read it
    proc = sandbox.run(BACKUP, env={"PG_BACKREST_CONFIG": str(handwritten), "SLACK_WEBHOOK_URL": ""}, check=False,
                       timeout=300)
    assert proc.returncode == 2 and "pgBackRest cannot read it as user postgres" in proc.stderr, proc.stderr[-2000:]


def test_a_refused_staging_path_names_the_variable(first_backup, sandbox, tmp_path):
    """STAGING_PGDATA: a link inside the staging root that resolves to production is refused by
    the guard, and the error names STAGING_PGDATA, not only restore_test.staging_data_directory."""
    L = sandbox.layout
    link = L.staging_root / "link-to-production"
    link.symlink_to(L.pgdata)
    try:
        proc = sandbox.run("include/scripts/quarterly_restore_test.sh", check=False, timeout=300, env={
            "STAGING_PGDATA": str(link), "SLACK_WEBHOOK_URL": "",
            "STAGING_CONNECTION_URI": f"postgresql://postgres:x@127.0.0.1:{L.staging_port}/app"})
    finally:
        link.unlink()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "STAGING_PGDATA (setting restore_test.staging_data_directory)" in proc.stderr
    assert (L.pgdata / "PG_VERSION").exists()


def runbook_tcp_variables(sandbox) -> dict:
    """Runbook 2.1's variables exactly (PGHOST PGPORT PGUSER PGPASSWORD), pointing at the sandbox's
    production over TCP, with the right password."""
    password = json.loads(sandbox.layout.credentials_file.read_text())["pg_password"]
    return {"PGHOST": "127.0.0.1", "PGPORT": str(sandbox.layout.pg_port), "PGUSER": "postgres", "PGPASSWORD": password}


def assert_password_only_over_tcp(sandbox) -> None:
    """The sandbox's pg_hba.conf asks a password (scram-sha-256) of every TCP login: a path to
    production that forgets PGPASSWORD cannot pass here by luck."""
    rules = sandbox.psql("SELECT type, auth_method FROM pg_hba_file_rules WHERE type <> 'local'", db="postgres")
    assert rules and {line.split("|")[1] for line in rules.splitlines()} == {"scram-sha-256"}, rules


@pytest.mark.parametrize("script,tool", [(BACKUP, "pgbackrest"), ("include/scripts/wal_g_backup.sh", "walg")])
def test_the_runbooks_call_over_tcp_with_the_right_password_backs_up(first_backup, sandbox, script, tool):
    """Every query of the run to production (login check, archiving pre-check, marker row, the
    archiving watchdog) goes over TCP with PGPASSWORD: the archiving pre-check's used to go without
    it and failed with ``fe_sendauth: no password supplied`` after the login check had passed."""
    if tool not in sandbox.cluster().tools:
        pytest.skip(sandbox_module.WALG_MISSING)
    assert_password_only_over_tcp(sandbox)
    variables = runbook_tcp_variables(sandbox)
    marked = markers(sandbox)
    proc = sandbox.run(script, env={**variables, "SLACK_WEBHOOK_URL": ""}, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no password supplied" not in proc.stderr
    record = json.loads(proc.stdout)
    if tool == "pgbackrest":
        assert record["label"] == backup_labels(sandbox)[-1]
    assert markers(sandbox) == marked + 1  # the marker row went over TCP too
    assert variables["PGPASSWORD"] not in proc.stdout + proc.stderr


def test_the_runbooks_call_over_tcp_with_a_wrong_password_exits_2_naming_pgpassword(first_backup, sandbox):
    variables = {**runbook_tcp_variables(sandbox), "PGPASSWORD": "wrong-password-zz9"}
    labels, marked = backup_labels(sandbox), markers(sandbox)
    proc = sandbox.run(BACKUP, env={**variables, "SLACK_WEBHOOK_URL": ""}, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "password authentication failed" in proc.stderr and "PGPASSWORD" in proc.stderr
    assert "PGPASSWORD=(set)" in proc.stderr and "wrong-password-zz9" not in proc.stdout + proc.stderr
    assert backup_labels(sandbox) == labels and markers(sandbox) == marked
