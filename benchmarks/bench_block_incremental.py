"""Block incremental (pgBackRest `repo1-block=y`) against file-level diff backups, on the compose
stack's newer pair (Debian 13 image: PostgreSQL 17, pgBackRest 2.55.1), to the stack's S3 (moto
behind stunnel TLS), in one run:

1. a pgbench database in the db-asso container (`pgbench -i -s 60`: about 0.9 GB);
2. two repositories in the same bucket, alike but for block incremental: repo1 is the project's
   own (`pgbackrest.conf` as the project writes it, `repo1-block=y`, the default on 2.55), repo2 a
   copy of its settings under another path with `repo2-block=n` (a conf.d include of this script);
   the cluster's archive_command pushes every WAL segment to both;
3. a full backup into each (the same data), then 1% of `pgbench_accounts`'s rows updated in one
   contiguous range (`aid <= rows/100`) and a checkpoint, then a diff into each (the same change);
4. stored bytes of each diff (`pgbackrest info --output=json`: `info.repository.delta`), its time,
   and the time to restore it (`pgbackrest restore --set=<diff>` into an empty scratch directory in
   the container; the restore reads the full and the diff), restores alternated, medians compared;
5. what each restore asks of the S3 endpoint: moto's request log (one line per HTTP request, from
   `docker logs` of the moto container, the lines added during the restore, counted by method and
   206 for ranged GETs), stunnel's accepted TLS connections (its log's lines), the bytes moto sent
   (its container's eth0 tx_bytes: it talks only to stunnel), and the CPU seconds of moto's and
   stunnel's containers (their cgroup's cpuacct.usage, or cpu.stat on cgroup v2).

The bundle limit: repo1 gets the project's `repo1-bundle-limit` (the sandbox's `bundle_limit_kib:
8`), repo2 a copy of it; `--bundle-limit-kib N` sets both to N KiB on the backup command lines
(pgBackRest's default is 2048, what a deployment gets when it sets none).

Goals (issue 21): the block-incremental diff stores at least 10x less than the file-level one, and
its restore is not slower than 1.2x the file-level restore.

    python3 benchmarks/bench_block_incremental.py [--scale 60] [--restores 5] [--bundle-limit-kib 2048] [--keep]

Run as root (it starts the Docker engine and the stack with sandbox/compose.py: project
pg-backups-bench, files in /var/tmp/pg-backups-compose-bench, API port 28480; override with
COMPOSE_PROJECT, COMPOSE_SANDBOX_DIR, AIRFLOW_API_PORT). It starts only db-asso, the S3 endpoint and
what they depend on (no scheduler or API server), and takes the stack down (volumes too) at the end
unless --keep. Only the standard library: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sandbox"))

import compose  # noqa: E402  (sandbox/compose.py)

SECTION, RECORD = "block-incremental-against-file-level-diffs", "docs/benchmarks-versions.md"
BENCH_ENV = {"COMPOSE_SANDBOX_DIR": "/var/tmp/pg-backups-compose-bench", "COMPOSE_PROJECT": "pg-backups-bench",
             "AIRFLOW_API_PORT": "28480"}
HOST, STANZA = "db-asso", "asso"
CONF = f"/etc/pgbackrest/{STANZA}"
FILE_LEVEL_PATH = "/bench-file-level"
SCRATCH = "/var/tmp/bench-restore"
REPOS = {1: "block incremental", 2: "file level"}
# werkzeug's request line in moto's log: ... "GET /bucket/key?query HTTP/1.1" 200 - (some in ANSI colours:
# 206, a ranged GET's answer, is).
REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Host:
    def __init__(self, S: compose.Settings):
        self.S = S

    def run(self, *argv: str, user: str | None = "postgres", timeout: float = 3600) -> tuple[float, str]:
        """A command in the db-asso container; the seconds it took, measured inside the container
        (bash's EPOCHREALTIME), so docker exec's own start is not counted. self.cpu: the command's
        CPU seconds (user + system, bash's `times` for its children; not moto's or stunnel's)."""
        inner = ["runuser", "-u", user, "--", *argv] if user else list(argv)
        # `times` itself, not in $(...) or a pipe: a subshell's `times` would count its own children.
        script = 's=$EPOCHREALTIME; "$@"; e=$EPOCHREALTIME; echo "[elapsed] $s $e" >&2; times >&2'
        proc = compose.sh(*self.S.compose(), "exec", "-T", HOST, "bash", "-c", script, "_", *inner,
                          check=False, timeout=timeout)
        lines = proc.stderr.splitlines()
        marks = [i for i, line in enumerate(lines) if line.startswith("[elapsed] ")]
        if proc.returncode != 0 or not marks or len(lines) < marks[-1] + 3:
            raise SystemExit(f"{shlex.join(inner)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}")
        start, end = lines[marks[-1]].split()[1:]
        children = lines[marks[-1] + 2].split()  # `times`: the shell's line, then its children's (user, system)
        self.cpu = sum(int(m) * 60 + float(sec) for m, sec in (re.fullmatch(r"(\d+)m([\d.]+)s", t).groups()
                                                             for t in children))
        return float(end) - float(start), proc.stdout

    def psql(self, sql: str, db: str = "bench") -> str:
        return self.run("psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)[1].strip()

    def pgbackrest(self, *args: str) -> tuple[float, str]:
        return self.run("pgbackrest", f"--config={CONF}/pgbackrest.conf", f"--config-include-path={CONF}/conf.d",
                        f"--stanza={STANZA}", *args)


class Endpoint:
    """What the S3 stand-in did between two marks: moto's request log lines, the bytes moto sent
    (to stunnel, its only peer), and the CPU of moto's and stunnel's containers."""

    def __init__(self, S: compose.Settings):
        self.ids = {service: compose.sh(*S.compose(), "ps", "-q", service).stdout.strip() for service in ("moto", "s3")}

    def log_lines(self, service: str = "moto") -> list[str]:
        # One stream, in the order written (werkzeug logs to stderr): the line count is the mark.
        proc = subprocess.run(["docker", "logs", self.ids[service]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=300, check=True)
        return proc.stdout.splitlines()

    def tls_connections(self) -> int:
        """stunnel's log: one "accepted connection" line for each TLS connection a client opened."""
        return sum("accepted connection" in line for line in self.log_lines("s3"))

    def cat(self, service: str, path: str) -> str:
        return compose.sh("docker", "exec", self.ids[service], "cat", path).stdout

    def cpu_seconds(self, service: str) -> float:
        """The container's CPU (all its processes): cgroup v1's cpuacct.usage (ns) or v2's cpu.stat."""
        proc = compose.sh("docker", "exec", self.ids[service], "sh", "-c",
                          "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null || cat /sys/fs/cgroup/cpu.stat")
        if "usage_usec" not in proc.stdout:
            return int(proc.stdout) / 1e9
        return int(dict(line.split() for line in proc.stdout.splitlines())["usage_usec"]) / 1e6

    def tx_bytes(self) -> int:
        for line in self.cat("moto", "/proc/net/dev").splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == "eth0":
                return int(counters.split()[8])
        raise SystemExit("[bench] moto's container has no eth0 in /proc/net/dev")

    def mark(self) -> dict:
        return {"lines": len(self.log_lines()), "tx": self.tx_bytes(), "connections": self.tls_connections(),
                "cpu": {service: self.cpu_seconds(service) for service in self.ids}}

    def since(self, mark: dict, bucket: str, path: str) -> dict:
        """Requests since the mark, by method: those for the repository's keys (the object's key, or
        a listing's prefix, under its path), and the others (the other repository's, WAL pushes)."""
        lines = self.log_lines()[mark["lines"]:]
        methods, others, errors, ranged = {}, 0, 0, 0
        for line in lines:
            match = REQUEST_LINE.search(ANSI.sub("", line))
            if not match:
                continue
            method, target, status = match.groups()
            url = urllib.parse.urlsplit(target)
            key = urllib.parse.unquote(url.path).removeprefix(f"/{bucket}").lstrip("/")
            key = key or urllib.parse.parse_qs(url.query).get("prefix", [""])[0]
            if not key.startswith(path.strip("/") + "/") and key != path.strip("/"):
                others += 1
                continue
            methods[method] = methods.get(method, 0) + 1
            errors += not status.startswith("2")
            ranged += status == "206"
        return {"requests": sum(methods.values()), "methods": methods, "ranged": ranged, "other_requests": others,
                "non_2xx": errors, "tx_bytes": self.tx_bytes() - mark["tx"],
                "tls_connections": self.tls_connections() - mark["connections"],
                "cpu": {service: round(self.cpu_seconds(service) - mark["cpu"][service], 2) for service in self.ids}}


def start(S: compose.Settings) -> dict:
    """Engine, image, and only db-asso and s3 (with what they depend on): the benchmark needs no
    scheduler, API server or staging host."""
    times = {**compose.ensure_engine(), **compose.build(S)}
    started = time.monotonic()
    proc = compose.sh(*S.compose(), "up", "-d", "--wait", "--wait-timeout", "900", HOST, "s3", check=False,
                      timeout=1200, env={"DOCKER_BUILDKIT": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"[bench] docker compose up failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    times["stack_start_seconds"] = round(time.monotonic() - started, 1)
    return times


def repo2_include(conf: str) -> str:
    """repo2: every repo1-* option of the project's pgbackrest.conf (and its credentials include)
    under repo2-*, another path, block incremental off. Only that differs between the two."""
    lines = ["# Written by benchmarks/bench_block_incremental.py: repo1's settings, file-level diffs.", "[global]"]
    for line in conf.splitlines():
        if line.startswith("repo1-") and not line.startswith(("repo1-path=", "repo1-block=")):
            lines.append("repo2-" + line[len("repo1-"):])
    lines += [f"repo2-path={FILE_LEVEL_PATH}", "repo2-block=n"]
    return "\n".join(lines) + "\n"


def write_file(host: Host, path: str, text: str) -> None:
    script = f"umask 077 && cat > {shlex.quote(path)} && chown postgres:postgres {shlex.quote(path)}"
    proc = compose.sh(*host.S.compose(), "exec", "-T", HOST, "bash", "-c", script, input=text, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"writing {path} failed: {proc.stderr[-2000:]}")


def read_file(host: Host, path: str) -> str:
    return host.run("cat", path, user=None)[1]


def create_bucket(host: Host, bucket: str) -> None:
    """The bucket, as the s3_bucket DAG would make it (not started here): boto3 in the container,
    with the keys of the container's environment."""
    code = ("import boto3, sys; s3 = boto3.client('s3', region_name='eu-west-3'); b = sys.argv[1]\n"
            "if b not in [x['Name'] for x in s3.list_buckets()['Buckets']]:\n"
            "    s3.create_bucket(Bucket=b, CreateBucketConfiguration={'LocationConstraint': 'eu-west-3'})")
    host.run("python", "-c", code, bucket, user=None)


def newest(info: list, repo: int) -> dict:
    backups = [b for b in info[0]["backup"] if b["database"]["repo-key"] == repo]
    return backups[-1]


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=60, help="pgbench scale (60 is about 0.9 GB)")
    parser.add_argument("--changed-percent", type=float, default=1.0,
                        help="share of pgbench_accounts's rows updated, one contiguous aid range (default 1)")
    parser.add_argument("--restores", type=int, default=5, help="restores of each diff, alternated (default 5)")
    parser.add_argument("--bundle-limit-kib", type=int, default=None,
                        help="repo1-/repo2-bundle-limit in KiB for the backups (default: the project's, the "
                             "sandbox's 8; pgBackRest's own default is 2048)")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("[bench] run as root (the Docker engine and the stack, as sandbox/compose.py)")
    machine.print_context(SECTION, RECORD)
    S = compose.Settings({**os.environ, **{k: os.environ.get(k, v) for k, v in BENCH_ENV.items()}})
    times = start(S)
    print(f"[bench] image: {times['release']} / PostgreSQL {times['pg_major']} (engine {times['engine_seconds']} s, "
          f"base {times['base']} {times['base_seconds']} s, image build {times['image_seconds']} s); db-asso and s3 "
          f"started and healthy in {times['stack_start_seconds']} s", flush=True)
    host = Host(S)
    try:
        figures = measure(host, args)
    finally:
        if not args.keep:
            compose.down(S, stop_daemon=bool(times.get("started_dockerd")))
    report(figures, args)
    machine.print_context(SECTION, RECORD)
    return 0 if figures["goals_met"] else 1


def measure(host: Host, args) -> dict:
    print(f"[bench] {host.run('pgbackrest', 'version')[1].strip()}, "
          f"{host.psql('SHOW server_version', db='postgres')}", flush=True)
    conf = read_file(host, f"{CONF}/pgbackrest.conf")
    credentials = read_file(host, f"{CONF}/conf.d/s3-credentials.conf")
    if "repo1-block=y" not in conf.splitlines():
        raise SystemExit(f"[bench] the project's {CONF}/pgbackrest.conf has no repo1-block=y:\n{conf}")
    setting = {k: v for k, _, v in (line.partition("=") for line in conf.splitlines()) if k.startswith("repo1-")}
    bucket, paths = setting["repo1-s3-bucket"], {1: setting["repo1-path"], 2: FILE_LEVEL_PATH}
    project_limit = setting.get("repo1-bundle-limit", "2MiB (pgBackRest's default: not in the file)")
    limit = f"{args.bundle_limit_kib}KiB" if args.bundle_limit_kib else None
    # On the backup command line: it overrides the file for that command only (the option is the backup's).
    bundle_limit = {repo: [f"--repo{repo}-bundle-limit={limit}"] if limit else [] for repo in REPOS}
    print(f"[bench] bundle limit: the project's pgbackrest.conf has repo1-bundle-limit={project_limit}; "
          f"used for both repositories: {limit or project_limit}", flush=True)
    write_file(host, f"{CONF}/conf.d/bench-repo2.conf", repo2_include(conf + credentials))
    create_bucket(host, bucket)
    host.pgbackrest("stanza-create")
    # The WAL that waited while there was no bucket: archived to both repositories before timing.
    host.psql("SELECT pg_switch_wal()", db="postgres")
    host.pgbackrest("check")

    if host.psql("SELECT count(*) FROM pg_database WHERE datname = 'bench'", db="postgres") != "1":
        print(f"[bench] pgbench -i -s {args.scale} ...", flush=True)
        host.psql("CREATE DATABASE bench", db="postgres")
        seconds, _ = host.run(f"/usr/lib/postgresql/{host.S.pg_major}/bin/pgbench", "-i", "-q",
                              "-s", str(args.scale), "bench")
        print(f"[bench] pgbench data in {seconds:.0f} s", flush=True)
    host.psql("CHECKPOINT")
    size = int(host.psql("SELECT sum(pg_database_size(datname)) FROM pg_database", db="postgres"))
    accounts_pages = int(host.psql("SELECT pg_relation_size('pgbench_accounts') / 8192"))
    rows = int(host.psql("SELECT count(*) FROM pgbench_accounts"))
    print(f"[bench] databases {mb(size)}; pgbench_accounts {rows} rows, {accounts_pages} pages", flush=True)

    figures = {"bundle_limit": limit or project_limit, "size": size, "rows": rows, "accounts_pages": accounts_pages, "full": {}, "diff": {}, "restore": {},
               "restore_cpu": {}}
    for repo in REPOS:
        seconds, _ = host.pgbackrest(f"--repo={repo}", "--type=full", *bundle_limit[repo], "backup")
        full = newest(json.loads(host.pgbackrest("info", "--output=json")[1]), repo)
        figures["full"][repo] = {"seconds": seconds, "stored": full["info"]["repository"]["delta"],
                                 "label": full["label"]}
        print(f"[bench] full repo{repo} ({REPOS[repo]}): {seconds:.1f} s, stored {mb(figures['full'][repo]['stored'])}",
              flush=True)

    # ~1% of the table's pages: one contiguous range of rows, so the pages that hold them (the first
    # 1% of the heap) get a dead version each, and their new versions fill new pages at the end of
    # the heap (pgbench's fillfactor 100 leaves no room for HOT updates), plus the primary key's
    # leaf pages for the new entries.
    changed = int(rows * args.changed_percent / 100)
    host.psql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {changed}")
    host.psql("CHECKPOINT")
    after_pages = int(host.psql("SELECT pg_relation_size('pgbench_accounts') / 8192"))
    figures.update(changed_rows=changed, new_pages=after_pages - accounts_pages)
    print(f"[bench] updated aid <= {changed} ({args.changed_percent}% of the rows), checkpoint; heap "
          f"{accounts_pages} -> {after_pages} pages", flush=True)

    for repo in REPOS:
        seconds, _ = host.pgbackrest(f"--repo={repo}", "--type=diff", *bundle_limit[repo], "backup")
        cpu = host.cpu  # before `info` runs
        diff = newest(json.loads(host.pgbackrest("info", "--output=json")[1]), repo)
        assert diff["type"] == "diff", diff
        repository = diff["info"]["repository"]
        figures["diff"][repo] = {"seconds": seconds, "cpu": cpu, "stored": repository["delta"], "label": diff["label"],
                                 "repository": repository, "size": diff["info"]["size"],
                                 "delta": diff["info"]["delta"]}
        print(f"[bench] diff repo{repo} ({REPOS[repo]}): {seconds:.1f} s (CPU {cpu:.1f} s), stored {mb(repository['delta'])} "
              f"(info.repository {repository})", flush=True)

    # Restores alternated (repo1, repo2, repo1, ...) so that the machine's drift hits both alike.
    endpoint = Endpoint(host.S)
    figures["s3"] = {}
    for _ in range(args.restores):
        for repo in REPOS:
            host.run("rm", "-rf", SCRATCH, user=None)
            host.run("install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", SCRATCH, user=None)
            mark = endpoint.mark()
            seconds, _ = host.pgbackrest(f"--repo={repo}", f"--set={figures['diff'][repo]['label']}",
                                         f"--pg1-path={SCRATCH}", "--type=immediate", "restore")
            cpu = host.cpu
            s3 = endpoint.since(mark, bucket, paths[repo])
            figures["restore"].setdefault(repo, []).append(seconds)
            figures["restore_cpu"].setdefault(repo, []).append(cpu)
            figures["s3"].setdefault(repo, []).append(s3)
            print(f"[bench] restore of the repo{repo} diff ({REPOS[repo]}): {seconds:.1f} s, pgBackRest CPU {cpu:.1f} s; "
                  f"S3: {s3['requests']} requests {s3['methods']} ({s3['ranged']} ranged: 206; {s3['non_2xx']} not 2xx, {s3['other_requests']} "
                  f"for other keys), {s3['tls_connections']} TLS connections to stunnel, moto sent {mb(s3['tx_bytes'])}, CPU moto {s3['cpu']['moto']:.1f} s, "
                  f"stunnel {s3['cpu']['s3']:.1f} s", flush=True)
    host.run("rm", "-rf", SCRATCH, user=None)

    block, file_level = figures["diff"][1], figures["diff"][2]
    figures["stored_ratio"] = file_level["stored"] / max(block["stored"], 1)
    median = {repo: statistics.median(figures["restore"][repo]) for repo in REPOS}
    figures["restore_median"] = median
    figures["restore_ratio"] = median[1] / median[2]
    figures["restore_best_ratio"] = min(figures["restore"][1]) / min(figures["restore"][2])
    figures["restore_pair_ratios"] = [a / b for a, b in zip(figures["restore"][1], figures["restore"][2], strict=True)]
    figures["restore_cpu_ratio"] = (statistics.median(figures["restore_cpu"][1])
                                    / max(statistics.median(figures["restore_cpu"][2]), 0.01))
    figures["goals_met"] = figures["stored_ratio"] >= 10 and figures["restore_ratio"] <= 1.2
    return figures


def report(f: dict, args) -> None:
    print(f"\n[bench] pgbench scale {args.scale}: databases {mb(f['size'])}; {f['changed_rows']} of {f['rows']} "
          f"rows updated (aid <= {f['changed_rows']}), {f['new_pages']} new heap pages of {f['accounts_pages']}; "
          f"bundle limit {f['bundle_limit']}")
    print(f"| | full: time, stored | diff: time (CPU) | diff: stored (info.repository.delta) | restore of the diff: "
          f"median (each, of {args.restores}) | restore: pgBackRest CPU, median | restore: S3 requests (median; "
          "GET) | TLS connections (median) | moto sent (median) | moto / stunnel CPU (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for repo, name in REPOS.items():
        full, diff, s3 = f["full"][repo], f["diff"][repo], f["s3"][repo]
        restores = ", ".join(f"{s:.1f}" for s in f["restore"][repo])
        gets = statistics.median(x["methods"].get("GET", 0) for x in s3)
        print(f"| repo{repo}, {name} | {full['seconds']:.1f} s, {mb(full['stored'])} | {diff['seconds']:.1f} s "
              f"({diff['cpu']:.1f} s) | {mb(diff['stored'])} | {f['restore_median'][repo]:.1f} s ({restores}) | "
              f"{statistics.median(f['restore_cpu'][repo]):.1f} s | {statistics.median(x['requests'] for x in s3):.0f} "
              f"({gets:.0f}) | {statistics.median(x['tls_connections'] for x in s3):.0f} | {mb(statistics.median(x['tx_bytes'] for x in s3))} | "
              f"{statistics.median(x['cpu']['moto'] for x in s3):.1f} s / {statistics.median(x['cpu']['s3'] for x in s3):.1f} s |")
    pairs = ", ".join(f"{r:.2f}" for r in f["restore_pair_ratios"])
    print(f"[bench] stored: file level / block incremental = {f['stored_ratio']:.1f}x (goal >= 10x: "
          f"{'met' if f['stored_ratio'] >= 10 else 'NOT met'}); restore: block / file level = "
          f"{f['restore_ratio']:.2f}, medians (goal <= 1.2: {'met' if f['restore_ratio'] <= 1.2 else 'NOT met'}; "
          f"best / best {f['restore_best_ratio']:.2f}, pairs in the order run {pairs}); restore pgBackRest CPU: "
          f"block / file level = {f['restore_cpu_ratio']:.2f}, medians")


if __name__ == "__main__":
    sys.exit(main())
