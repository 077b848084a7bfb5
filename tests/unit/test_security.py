"""Security pass: secrets never leave where they belong, files holding them are owner-only, the cron
scripts treat every variable as data, and the restore guard sees through symlinks and ``..``.

The unit tests (no marker) need no sandbox; the ``sandbox`` ones read what a real session wrote.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from pg_backups import operations, pgbackrest, staging
from pg_backups.config import ConfigError, build_cluster
from pg_backups.errors import RestoreRefused
from pg_backups.s3_access import S3Access
from support import file_mode as mode

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "include" / "scripts"
FAKE_SECRET = "s3cr3t-" + uuid.uuid4().hex
FAKE_KEY_ID = "AKIA" + uuid.uuid4().hex[:16].upper()


# --------------------------------------------------------------------------------------------
# Files that hold secrets


def tmp_cluster(tmp_path, **over):
    return build_cluster({
        "name": "asso", "host": "127.0.0.1", "port": 5432, "data_directory": str(tmp_path / "pgdata"),
        "tools": ["pgbackrest", "walg"],
        "pgbackrest": {"config_path": str(tmp_path / "etc" / "pgbackrest" / "pgbackrest.conf"),
                       "spool_path": str(tmp_path / "spool"), "log_path": str(tmp_path / "log"),
                       "lock_path": str(tmp_path / "lock")},
        "walg": {"binary": "/opt/wal-g", "config_path": str(tmp_path / "etc" / "wal-g" / "walg.json")},
        **over})


def access() -> S3Access:
    return S3Access(region="eu-west-3", access_key=FAKE_KEY_ID, secret_key=FAKE_SECRET,
                    endpoint_url="https://localhost:9443", ca_file="/etc/ssl/ca.pem")


def test_tool_configs_holding_keys_are_owner_only_and_the_main_file_has_none(tmp_path):
    c = tmp_cluster(tmp_path)
    written = operations.write_tool_configs(c, access())
    conf, creds = Path(c.pgbackrest.config_path), Path(pgbackrest.include_path(c)) / "s3-credentials.conf"
    walg_json = Path(c.walg.config_path)
    assert {str(conf), str(creds), str(walg_json)} <= set(written)
    assert mode(creds) == 0o600 and FAKE_SECRET in creds.read_text()
    assert mode(walg_json) == 0o600 and FAKE_SECRET in walg_json.read_text()
    assert mode(conf) & 0o007 == 0  # 0640: readable by the tool's group, never by others
    assert FAKE_SECRET not in conf.read_text() and FAKE_KEY_ID not in conf.read_text()


def test_private_write_ignores_a_leftover_world_readable_temp_file_and_a_planted_symlink(tmp_path):
    c = tmp_cluster(tmp_path)
    creds = Path(pgbackrest.include_path(c)) / "s3-credentials.conf"
    creds.parent.mkdir(parents=True)
    leftover = creds.with_name(f".{creds.name}.tmp")
    leftover.write_text("old")
    leftover.chmod(0o644)  # O_TRUNC would keep this mode while the secrets are written
    walg_json = Path(c.walg.config_path)
    walg_json.parent.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    walg_json.with_name(f".{walg_json.name}.tmp").symlink_to(victim)  # would make root write the keys there

    operations.write_tool_configs(c, access())

    assert mode(creds) == 0o600 and not os.path.islink(creds)
    assert mode(walg_json) == 0o600 and not os.path.islink(walg_json)
    assert victim.read_text() == "precious\n" and mode(victim) == 0o644
    assert not leftover.exists()


# --------------------------------------------------------------------------------------------
# Scripts: every variable is data


def _script(*argv, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AWS_", "SLACK_"))}
    # Any S3 call would go to a closed port: these runs must refuse before reaching it.
    base.update({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
                 "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "PG_BACKUPS_CONFIG": str(REPO / "include/config/clusters.yaml")})
    return subprocess.run([str(a) for a in argv], env={**base, **env}, cwd=cwd, text=True, capture_output=True,
                          timeout=120)


def test_config_path_with_spaces_and_command_substitution_is_just_a_path(tmp_path):
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    weird = tmp_path / f"dir with spaces $(touch {pwned}) ; `touch {pwned}` && echo" / "clusters.yaml"
    weird.parent.mkdir(parents=True)
    shutil.copy(REPO / "include/config/clusters.yaml", weird)
    proc = _script(SCRIPTS / "pg_backups_cli.sh", "archive-command", env={"PG_BACKUPS_CONFIG": str(weird)},
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pgbackrest" in proc.stdout and "archive-push %p" in proc.stdout
    assert not pwned.exists() and not list(tmp_path.glob("*pwned*"))


@pytest.mark.parametrize("variable, value", [
    ("BUCKET_NAME", "asso-prod-backups;touch {pwned}"),
    ("BUCKET_NAME", "$(touch {pwned})"),
    ("REGION", "eu-west-3 `touch {pwned}`"),
])
def test_configure_s3_refuses_shell_metacharacters_cleanly(tmp_path, variable, value):
    pwned = tmp_path / "pwned"
    proc = _script(SCRIPTS / "configure_s3.sh", env={variable: value.format(pwned=pwned)}, cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert variable in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not pwned.exists()


@pytest.mark.parametrize("variable, value, refused", [
    ("PGPORT", "5432; touch {pwned}", True),
    ("PGPORT", "$(touch {pwned})", True),
    ("WALG_S3_PREFIX", "s3://asso;touch {pwned}/postgres", True),
    ("PGHOST", "db.internal`touch {pwned}`", False),  # a host name is passed as data, never to a shell
    ("PGUSER", "postgres$(touch {pwned})", False),
])
def test_runbook_variables_with_shell_metacharacters_run_nothing(tmp_path, variable, value, refused):
    pwned = tmp_path / "pwned"
    proc = _script(SCRIPTS / "pg_backups_cli.sh", "archive-command", env={variable: value.format(pwned=pwned)},
                   cwd=tmp_path)
    assert proc.returncode == (2 if refused else 0), (proc.returncode, proc.stderr[-2000:])
    if refused:
        assert variable in proc.stderr and "Traceback" not in proc.stderr
    assert not pwned.exists()


def test_python_path_with_spaces_and_metacharacters(tmp_path):
    pwned = tmp_path / "pwned"
    odd = tmp_path / f"py thon $(touch {pwned}) ;" / "python"
    odd.parent.mkdir(parents=True)
    # (a symlink would lose the venv: Python finds pyvenv.cfg beside the path it was started by)
    odd.write_text(f'#!/bin/sh\nexec {shlex.quote(str(REPO / ".venv" / "bin" / "python"))} "$@"\n')
    odd.chmod(0o755)
    proc = _script(SCRIPTS / "pg_backups_cli.sh", "archive-command", env={"PG_BACKUPS_PYTHON": str(odd)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "archive-push %p" in proc.stdout and not pwned.exists()


def test_stanza_with_shell_metacharacters_is_refused(tmp_path):
    pwned = tmp_path / "pwned"
    hand_written = tmp_path / "pgbackrest.conf"
    hand_written.write_text("[global]\n")
    for env in ({"PG_BACKREST_STANZA": f"asso; touch {pwned}"},
                {"PG_BACKREST_STANZA": f"asso$(touch {pwned})", "PG_BACKREST_CONFIG": str(hand_written)}):
        proc = _script(SCRIPTS / "pg_backups_cli.sh", "archive-command", env=env, cwd=tmp_path)
        assert proc.returncode == 2, (env, proc.stdout, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert not pwned.exists()


def test_archive_command_quotes_paths_for_the_shell_postgresql_runs_it_with(tmp_path):
    """PostgreSQL runs archive_command through /bin/sh: a config path with spaces, quotes and
    command substitution must reach pgBackRest as one argument, and run nothing."""
    pwned = tmp_path / "pwned"
    odd = tmp_path / f"etc it's $(touch {pwned}) `touch {pwned}`;" / "pgbackrest.conf"
    c = tmp_cluster(tmp_path, pgbackrest={"config_path": str(odd)}, tools=["pgbackrest"])
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "argv"
    (fake_bin / "pgbackrest").write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {shlex.quote(str(calls))}\n')
    (fake_bin / "pgbackrest").chmod(0o755)
    command = operations.archive_command(c).replace("%p", "pg_wal/000000010000000000000001")
    subprocess.run(["/bin/sh", "-c", command], env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"},
                   check=True, cwd=tmp_path)
    argv = calls.read_text().splitlines()
    assert f"--config={odd}" in argv
    assert argv[-2:] == ["archive-push", "pg_wal/000000010000000000000001"]
    assert not pwned.exists()


# --------------------------------------------------------------------------------------------
# The restore guard cannot be walked around


def guard_cluster(tmp_path, staging_data: str, staging_root: Path | None = None):
    root = staging_root or tmp_path / "staging"
    return build_cluster({"name": "asso", "host": "127.0.0.1", "port": 5432, "data_directory": str(tmp_path / "prod"),
                          "tools": ["pgbackrest"],
                          "restore_test": {"staging_root": str(root), "staging_data_directory": staging_data,
                                           "staging_port": 6543, "staging_socket_directory": str(tmp_path)}})


def unchecked_staging(cluster, staging_data: str):
    """The cluster with a staging path the configuration check never saw (set in code, by a later
    override, or by a DAG param): the guard alone must refuse it."""
    import dataclasses

    return dataclasses.replace(cluster, restore_test=dataclasses.replace(cluster.restore_test,
                                                                         staging_data_directory=staging_data))


def _production(tmp_path) -> list[Path]:
    files = [tmp_path / "prod" / "PG_VERSION", tmp_path / "prod" / "base" / "1" / "1259"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    return files


def _refused_and_intact(c, files):
    for step in (staging.guard, staging.purge_staging):
        with pytest.raises(RestoreRefused) as err:
            step(c)
        assert "nothing was deleted" in str(err.value) and "Fix:" in str(err.value)
    assert all(f.read_text() == "x" for f in files)


def test_guard_sees_through_dotdot_to_production(tmp_path):
    files = _production(tmp_path)
    (tmp_path / "staging" / "data").mkdir(parents=True)
    dotdot = str(tmp_path / "staging" / ".." / "prod")
    with pytest.raises(ConfigError, match="staging_data_directory"):  # the configuration refuses it first
        guard_cluster(tmp_path, dotdot)
    c = unchecked_staging(guard_cluster(tmp_path, str(tmp_path / "staging" / "data")), dotdot)
    _refused_and_intact(c, files)
    outside = unchecked_staging(c, str(tmp_path / "staging" / ".." / "elsewhere"))
    with pytest.raises(RestoreRefused, match="outside restore_test.staging_root"):
        staging.guard(outside)


def test_guard_sees_through_a_symlinked_parent_inside_staging_root(tmp_path):
    files = _production(tmp_path)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "sub").symlink_to(tmp_path)  # staging/sub/prod is production
    _refused_and_intact(guard_cluster(tmp_path, str(tmp_path / "staging" / "sub" / "prod")), files)


def test_guard_sees_through_a_symlinked_staging_root(tmp_path):
    files = _production(tmp_path)
    (tmp_path / "staging").symlink_to(tmp_path)  # the root itself leads to production's parent
    _refused_and_intact(guard_cluster(tmp_path, str(tmp_path / "staging" / "prod")), files)


def test_guard_sees_through_a_symlink_swapped_in_after_configuration(tmp_path):
    """The configuration was fine; later someone replaced staging's data directory by a link to
    production: refused, naming the setting, and nothing deleted (the one test of this case)."""
    files = _production(tmp_path)
    data = tmp_path / "staging" / "data"
    data.mkdir(parents=True)
    c = guard_cluster(tmp_path, str(data))
    staging.guard(c)
    data.rmdir()
    data.symlink_to(Path("..") / "prod")  # relative link: staging/../prod
    _refused_and_intact(c, files)
    with pytest.raises(RestoreRefused, match="restore_test.staging_data_directory"):
        staging.purge_staging(c)
