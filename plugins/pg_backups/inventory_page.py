"""The backup inventory's HTML page: one table row per cluster, a 30-day timeline per cluster, a
trend chart (backup duration and size, restore RTO) for one cluster. Server-side HTML and SVG,
no script and nothing loaded from elsewhere: it works in the Airflow UI's sandboxed iframe, offline,
and in any browser. Nothing here imports Airflow.

Links are relative to the page (``<api-server>/backup-inventory/``), so they work behind a proxy
that serves Airflow under a path.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from html import escape
from urllib.parse import quote

from pg_backups.costs import money
from pg_backups.inventory import age_text, size_text
from pg_backups.times import utc

COLOURS = {"green": "#2e7d32", "amber": "#ef8f00", "red": "#c62828"}
TOOL_COLOURS = {"pgbackrest": "#1565c0", "walg": "#6a1b9a"}
ROOT = ".."  # from <prefix>/backup-inventory/ to Airflow's root

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.summary{margin:0 0 12px;color:#555} .summary b{color:#1f2328}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:6px 8px;vertical-align:top;
text-align:left} th{background:#f6f8fa;font-weight:600;position:sticky;top:0}
.status{white-space:nowrap} .dot{display:inline-block;width:12px;height:12px;border-radius:6px;margin-right:6px;
vertical-align:-1px} .reason{display:block;color:#444;font-size:12px;max-width:260px;white-space:normal}
.tool{margin-bottom:6px} .tool b{text-transform:none} .muted{color:#777} .bad{color:#c62828;font-weight:600}
.warn{color:#ef8f00;font-weight:600} .ok{color:#2e7d32;font-weight:600} small{color:#555}
a{color:#0b57d0} td.name a{font-weight:600} .legend span{margin-right:14px} svg text{font-size:10px;fill:#444}
"""


def _a(href: str | None, text: str, cls: str = "") -> str:
    if not href:
        return escape(text)
    return f'<a class="{cls}" href="{escape(href)}">{escape(text)}</a>'


def _run_href(path: str | None) -> str | None:
    return f"{ROOT}{path}" if path else None


def _when(value: str | None) -> str:
    dt = utc(value) if value else None
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "-"


def _stamp(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch)) if epoch is not None else "-"


def _backup_cell(row: dict) -> str:
    parts = []
    for tool in row["tools"]:
        b = row["backups"].get(tool)
        run = (row.get("last_backup_runs") or {}).get(tool)
        failed = ""
        if run and run["state"] == "failed":
            failed = (f'<div class="last-run failed bad" data-run-id="{escape(run["run_id"])}">last run FAILED: '
                      f'{_a(_run_href(run["run_link"]), run["run_id"], "run")}</div>')
        if not b:
            parts.append(f'<div class="tool" data-tool="{escape(tool)}"><b>{escape(tool)}</b>: '
                         f'<span class="bad none">no good backup</span>{failed}</div>')
            continue
        parts.append(
            f'<div class="tool" data-tool="{escape(tool)}"><b>{escape(tool)}</b>: '
            f'<span class="label">{escape(str(b["label"]))}</span> '
            f'<span class="type">{escape(str(b["type"]))}</span>, '
            f'<span class="age" title="{escape(_when(b["stop_time"]))}">{escape(b["age"])}</span> old, '
            f'<span class="size" title="database size">{escape(b["size"])}</span> '
            f'(<span class="stored" title="added to the repository">{escape(b["stored"])} stored</span>)'
            f'<br><small>run {_a(_run_href(b["run_link"]), str(b["run_id"] or "-"), "run")}</small>'
            f'{_verification_html(b.get("verification"), ((row.get("verification") or {}).get(tool) or {}))}'
            f'{_pitr_html((row.get("pitr") or {}).get(tool))}'
            f'{failed}</div>')
    return "".join(parts)


VERIFICATION_CLASSES = {"verified": "ok", "failed": "bad", "overdue": "warn", "pending": "muted"}


def _verification_html(state: dict | None, tool_drills: dict) -> str:
    """The newest backup's drill (verified, failed, pending, overdue) and, when that is not a
    success, the tool's last verified backup with its RTO."""
    if not state:
        return ""
    drill = state.get("drill") or {}
    out = (f'<br><small class="verification" data-state="{escape(state["state"])}">drill: '
           f'{_a(_run_href(drill.get("run_link")), state["state"], "verification-state " + VERIFICATION_CLASSES.get(state["state"], ""))}'
           f' <span class="verification-text">{escape(state["text"])}</span></small>')
    last = tool_drills.get("last_verified")
    if state["state"] != "verified":
        out += ('<br><small class="last-verified">last verified: ' + (
            f'<span class="label">{escape(str(last["backup_label"]))}</span>, RTO '
            f'<span class="rto">{escape(str(last["rto_seconds"]))} s</span>, {escape(_when(last["time"]))}'
            if last else '<span class="muted">none in the window</span>') + '</small>')
    return out


def _pitr_html(drills: dict | None) -> str:
    """The tool's recovery window and its last PITR drill (target, the point reached, its gap)."""
    if not drills:
        return ""
    out = ""
    w = drills.get("window")
    if w and w.get("start"):
        out += (f'<br><small class="window" title="measured {escape(_when(w.get("measured_at")))} '
                f'(end: {escape(str(w.get("end_source")))})">recoverable <span class="window-start">'
                f'{escape(_when(w["start"]))}</span> to <span class="window-end">{escape(_when(w.get("end")))}</span>'
                '</small>')
    last = drills.get("last_drill")
    if last:
        ok = last.get("outcome") == "success"
        what = (f'to {_when(last.get("target_time"))}, reached {_when(last.get("recovered_to"))} '
                f'(gap {last.get("rpo_gap_seconds")} s, RTO {last.get("rto_seconds")} s)' if ok else
                f'to {_when(last.get("target_time"))} failed at {last.get("failed_step")}: {last.get("cause") or "-"}')
        out += (f'<br><small class="pitr-drill" data-outcome="{escape(str(last.get("outcome")))}">PITR drill '
                f'{_a(_run_href(last.get("run_link")), "ok" if ok else "FAILED", "ok" if ok else "bad")} '
                f'{escape(what)}</small>')
    return out


def _wal_cell(wal: dict) -> str:
    state = wal["state"]
    cls = {"ok": "ok", "failing": "bad", "lagging": "warn"}.get(state, "muted")
    if state == "unknown":
        return f'<span class="wal-state muted">{escape(wal["text"])}</span>'
    failed = wal.get("failed_count")
    return (f'<span class="wal-state {cls}">{escape(state)}</span><br>'
            f'<small>last archived <span class="wal-last">{escape(_when(wal.get("last_archived_time")))}</span><br>'
            f'waiting <span class="wal-ready">{escape(str(wal.get("ready_count", "-")))}</span>, '
            f'failures <span class="wal-failed">{escape(str(failed if failed is not None else "-"))}</span>'
            + (f' (last {escape(_when(wal.get("last_failed_time")))})' if wal.get("last_failed_time") else "")
            + f'<br>measured {escape(_when(wal.get("measured_at")))}</small>')


def _bucket_cell(bucket: dict) -> str:
    if not bucket.get("source"):
        return f'<span class="muted">{escape(bucket["bucket"])}: not measured yet</span>'
    classes = "".join(f'<div class="class" data-class="{escape(c)}">{escape(c)}: {escape(size_text(n))}</div>'
                      for c, n in sorted(bucket["classes"].items()))
    return (f'<b>{escape(bucket["bucket"])}</b>: <span class="bucket-total">{escape(size_text(bucket["total_bytes"]))}'
            f'</span>{classes}<small>measured {escape(_when(bucket.get("measured_at")))}</small>')


def _cost_cell(bucket: dict) -> str:
    """The bucket's monthly estimate (pg_backups.costs): total, noncurrent share, by class."""
    cost = bucket.get("cost")
    if not cost:
        return '<span class="muted">not measured yet</span>'
    currency = cost["currency"]
    by_class: dict[str, float] = {}
    for row in cost["rows"]:
        by_class[row["storage_class"]] = by_class.get(row["storage_class"], 0) + row["monthly"]
    early = sum(r["monthly"] for r in cost["rows"] if r["charge"] == "early_deletion")
    classes = "".join(f'<div class="class" data-class="{escape(c)}">{escape(c)}: {escape(money(v, currency))}</div>'
                      for c, v in sorted(by_class.items()))
    return (f'<span class="cost-total">{escape(money(cost["total_monthly"], currency))}</span> a month'
            f'<br><small>noncurrent {escape(money(cost["noncurrent_monthly"], currency))}'
            + (f', early deletion <span class="cost-early">{escape(money(early, currency))}</span>' if early else "")
            + f'</small>{classes}'
            + (f'<div><small class="warn">{escape(cost["text"])}</small></div>' if cost["missing"] else "")
            + f'<div><small>prices: {escape(cost["prices"])}</small></div>')


def _restore_cell(r: dict | None) -> str:
    if not r:
        return '<span class="muted restore-none">no restore test recorded</span>'
    cls = "ok" if r["outcome"] == "success" else "bad"
    signoff = r["signoff"]
    who = f'{signoff.get("status") or "-"}' + (f' by {signoff["by"]}' if signoff.get("by") else "")
    rto = f'{r["rto_seconds"]} s' if r["rto_seconds"] is not None else "-"
    checks = ", ".join(f'{c.get("check")} {c.get("result")}' for c in r["checks"])
    return (f'<span class="restore-outcome {cls}">{escape(str(r["outcome"]))}</span> '
            f'<span class="restore-time">{escape(_when(r["time"]))}</span> ({escape(r["age"])} ago)<br>'
            f'<small>backup <span class="restore-backup">{escape(str(r["backup_label"] or "-"))}</span> '
            f'({escape(str(r["tool"]))}), target <span class="restore-target">'
            f'{escape(str(r["target_time"] or "latest"))}</span><br>'
            f'RTO <span class="restore-rto">{escape(rto)}</span>, checks <span class="restore-checks" '
            f'title="{escape(checks)}">{escape(r["checks_text"])}</span><br>'
            f'sign-off <span class="restore-signoff">{escape(who)}</span><br>'
            f'{_a(_run_href(r["run_link"]), "run", "run")} · '
            f'<a class="audit" href="{escape(r["audit"]["url"])}" title="{escape(r["audit"]["uri"])}">audit in S3</a>'
            f'</small>')


def timeline_svg(row: dict, at: datetime, days: int, width: int = 300) -> str:
    """Lanes: one per tool (full backups big, others small), restore tests, failures."""
    lanes = [*row["tools"], "restore", "failure"]
    lane_h, left = 14, 56
    height = lane_h * len(lanes) + 14
    start = at - timedelta(days=days)
    span = (at - start).total_seconds()

    first = start.timestamp()

    def x(epoch: float | None) -> float:
        seconds = (epoch if epoch is not None else at.timestamp()) - first
        return left + max(0.0, min(1.0, seconds / span)) * (width - left - 4)

    out = [f'<svg class="timeline" width="{width}" height="{height}" role="img" '
           f'aria-label="last {days} days of {escape(row["name"])}">']
    for i, lane in enumerate(lanes):
        y = 8 + i * lane_h
        out.append(f'<text x="0" y="{y + 4}">{escape(lane)}</text>'
                   f'<line x1="{left}" x2="{width - 4}" y1="{y}" y2="{y}" stroke="#eee"/>')
    for item in row["timeline"]:
        title = f'<title>{escape(_stamp(item["epoch"]))}: {escape(item["text"])}</title>'
        if item["kind"] == "backup" and item["tool"] in lanes:
            y = 8 + lanes.index(item["tool"]) * lane_h
            r = 5 if item["type"] == "full" else 3
            verified = item.get("verification")
            ring = {"failed": COLOURS["red"], "overdue": COLOURS["amber"]}.get(verified)
            out.append(f'<circle class="ev backup {escape(str(item["type"]))}" cx="{x(item["epoch"]):.1f}" cy="{y}" '
                       f'r="{r}" fill="{TOOL_COLOURS.get(item["tool"], "#555")}"'
                       + (f' data-verification="{escape(verified)}"' if verified else "")
                       + (f' stroke="{ring}" stroke-width="2"' if ring else "") + f'>{title}</circle>')
        elif item["kind"] == "restore_test":
            y = 8 + lanes.index("restore") * lane_h
            colour = COLOURS["green"] if item.get("outcome") == "success" else COLOURS["red"]
            cx = x(item["epoch"])
            out.append(f'<path class="ev restore" d="M{cx:.1f} {y - 5} l5 5 l-5 5 l-5 -5 z" fill="{colour}">'
                       f'{title}</path>')
        elif item["kind"] == "failure":
            y = 8 + lanes.index("failure") * lane_h
            cx = x(item["epoch"])
            out.append(f'<rect class="ev failure" x="{cx - 3:.1f}" y="{y - 4}" width="6" height="8" '
                       f'fill="{COLOURS["red"]}">{title}</rect>')
    axis_y = height - 2
    out.append(f'<text x="{left}" y="{axis_y}">-{days} d</text><text x="{width - 30}" y="{axis_y}">now</text></svg>')
    return "".join(out)


def _series_svg(title: str, points: dict[str, list[tuple[datetime, float]]], unit: str, start: datetime,
                end: datetime, fmt, width: int = 900, height: int = 160) -> str:
    left, right, top, bottom = 70, 10, 18, 20
    values = [v for series in points.values() for _, v in series]
    out = [f'<svg class="chart" data-chart="{escape(title)}" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}"><text x="0" y="12" style="font-weight:600;font-size:12px">'
           f'{escape(title)}</text>']
    if not values:
        out.append(f'<text x="{left}" y="{height / 2}">no data</text></svg>')
        return "".join(out)
    top_value = max(values) * 1.1 or 1
    span = max((end - start).total_seconds(), 1)

    def xy(when: datetime, value: float) -> tuple[float, float]:
        return (left + (when - start).total_seconds() / span * (width - left - right),
                height - bottom - value / top_value * (height - top - bottom))

    for frac in (0, 0.5, 1):
        y = height - bottom - frac * (height - top - bottom)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="0" y="{y + 3:.1f}">{escape(fmt(top_value * frac))}</text>')
    fmt_day = "%Y-%m-%d %H:%M" if end - start < timedelta(days=3) else "%Y-%m-%d"
    out.append(f'<text x="{left}" y="{height - 4}">{start.strftime(fmt_day)}</text>'
               f'<text x="{width - right - 90}" y="{height - 4}">{end.strftime(fmt_day)}</text>')
    palette = ["#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#2e7d32", "#ad1457"]
    for i, (name, series) in enumerate(sorted(points.items())):
        colour = palette[i % len(palette)]
        coords = [xy(t, v) for t, v in sorted(series)]
        if len(coords) > 1:
            path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        for (cx, cy), (t, v) in zip(coords, sorted(series), strict=True):
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{colour}"><title>{escape(name)} '
                       f'{t:%Y-%m-%d %H:%M}: {escape(fmt(v))}</title></circle>')
        out.append(f'<text x="{left + 250 + i * 170}" y="12" fill="{colour}" style="fill:{colour}">'
                   f'&#9679; {escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def charts(hist: dict, at: datetime) -> str:
    """From the first point shown (at most ``hist["days"]`` ago), so a young history is not a dot."""
    times = [utc(b["time"]) for b in hist["backups"]] + [utc(r["time"]) for r in hist["restore_tests"]]
    start = at - timedelta(days=hist["days"])
    if times:
        first = min(times)
        start = max(start, first - max((at - first) * 0.05, timedelta(minutes=5)))
    duration: dict[str, list] = {}
    size: dict[str, list] = {}
    stored: dict[str, list] = {}
    for b in hist["backups"]:
        when = utc(b["time"])
        name = f'{b["tool"]} {b["type"]}'
        if b.get("duration_seconds") is not None:
            duration.setdefault(name, []).append((when, float(b["duration_seconds"])))
        if b.get("database_size_bytes") is not None:
            size.setdefault(f'{b["tool"]} database', []).append((when, float(b["database_size_bytes"])))
        if b.get("repo_size_bytes") is not None:
            stored.setdefault(name, []).append((when, float(b["repo_size_bytes"])))
    rto: dict[str, list] = {}
    for r in hist["restore_tests"]:
        if r.get("rto_seconds") is not None:
            rto.setdefault(f'{r["tool"]} ({r["outcome"]})', []).append((utc(r["time"]), float(r["rto_seconds"])))

    def secs(v):
        return age_text(v) if v >= 3600 else f"{v:.0f} s"

    return (_series_svg("Backup duration", duration, "s", start, at, secs)
            + _series_svg("Database size per backup", size, "B", start, at, size_text)
            + _series_svg("Stored in the repository per backup", stored, "B", start, at, size_text)
            + _series_svg("Restore test RTO", rto, "s", start, at, secs))


# Rows a page: a fleet of 1,000 clusters is 20 pages, the red and amber ones on the first.
PAGE_ROWS = 50


def _pages(inventory: dict) -> str:
    """Where this page's rows sit among every cluster's, and the links to the others."""
    total, offset, limit = inventory.get("total"), inventory.get("offset", 0), inventory.get("limit")
    if not limit or total is None or total <= limit:
        return ""
    page, last = offset // limit + 1, (total + limit - 1) // limit
    links = [f'<a href="?page={page - 1}">previous</a>'] if page > 1 else []
    links += [f'<a href="?page={page + 1}">next</a>'] if page < last else []
    return (f'<p class="pages">rows {offset + 1}-{min(offset + limit, total)} of {total} (red first, then amber, '
            f'green), page {page} of {last} · {" · ".join(links)}</p>')


def render(inventory: dict, hist: dict | None, at: datetime) -> str:
    counts = inventory["counts"]
    rows = []
    for row in inventory["clusters"]:
        status = row["status"]
        colour = COLOURS[status["colour"]]
        rows.append(
            f'<tr class="cluster" data-cluster="{escape(row["name"])}" data-status="{status["colour"]}">'
            f'<td class="status"><span class="dot" style="background:{colour}"></span>'
            f'<b class="colour">{status["colour"]}</b><span class="reason">{escape(status["text"])}</span></td>'
            f'<td class="name"><a href="?cluster={quote(row["name"])}#chart">{escape(row["name"])}</a><br>'
            f'<small>stanza {escape(row["stanza"])}</small></td>'
            f'<td class="backups">{_backup_cell(row)}</td>'
            f'<td class="wal">{_wal_cell(row["wal"])}</td>'
            f'<td class="bucket">{_bucket_cell(row["bucket"])}</td>'
            f'<td class="cost">{_cost_cell(row["bucket"])}</td>'
            f'<td class="restore">{_restore_cell(row["restore_test"])}</td>'
            f'<td class="timeline">{timeline_svg(row, at, inventory["timeline_days"])}</td></tr>')
    chart = ""
    if hist:
        chart = (f'<h2 id="chart">Trends of cluster <span class="chart-cluster">{escape(hist["cluster"])}</span>, '
                 f'last {hist["days"]} days</h2>'
                 f'<p class="muted">{len(hist["backups"])} backups, {len(hist["restore_tests"])} restore tests. '
                 f'JSON: <a href="api/clusters/{quote(hist["cluster"])}/history">api/clusters/'
                 f'{escape(hist["cluster"])}/history</a></p>{charts(hist, at)}')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Backup inventory</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>Backup inventory</h1>
<p class="summary">{inventory.get("total", len(inventory["clusters"]))} clusters: <b style="color:{COLOURS["green"]}">{counts["green"]} green</b>,
<b style="color:{COLOURS["amber"]}">{counts["amber"]} amber</b>, <b style="color:{COLOURS["red"]}">{counts["red"]} red</b>
· generated {escape(_when(inventory["generated_at"]))} from what the DAGs published (asset events, XComs, the
restore audit logs, the metrics files) · JSON: <a href="api/inventory">api/inventory</a></p>
<p class="legend muted"><span>timeline: last {inventory["timeline_days"]} days</span><span style="color:#1565c0">
&#9679; pgBackRest (big: full)</span><span style="color:#6a1b9a">&#9679; WAL-G</span>
<span>&#9670; restore test (green passed, red failed)</span><span style="color:#c62828">&#9632; failed run</span></p>
<table id="inventory"><thead><tr><th>Status</th><th>Cluster</th><th>Newest good backups</th><th>WAL archiving</th>
<th>Bucket</th><th>Monthly S3 cost (est.)</th><th>Last restore test</th><th>Last {inventory["timeline_days"]} days</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{_pages(inventory)}
{chart}
</body></html>"""


def refused(login_href: str, detail: str, status: int = 401) -> str:
    """The page's answer to an error: why, and where to log in when that is the problem."""
    if status in (401, 403):
        what, hint = "Not allowed", f'<p>Log in to Airflow first: <a href="{escape(login_href)}">log in</a>.</p>'
    else:
        what, hint = "Error", '<p><a href="./">Back to the inventory</a>.</p>'
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Backup inventory: {what}</title>
<style>{CSS}</style></head><body><h1>Backup inventory</h1>
<p class="refused bad">{what}: {escape(detail)}.</p>
{hint}</body></html>"""
