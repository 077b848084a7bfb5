"""Airflow plugin: the backup inventory page and its JSON endpoints, served by the API server.

- ``fastapi_apps``: a FastAPI app mounted at ``/backup-inventory`` (the page at ``/``, JSON under
  ``/api/``); every route needs a logged-in user allowed to read DAG runs (Airflow's own auth
  manager: the UI's ``_token`` cookie or an ``Authorization: Bearer`` token from ``POST /auth/token``).
- ``external_views``: the "Backup inventory" entry of the UI's navigation (Browse), which shows the
  page inside the UI.

The logic is in ``pg_backups.inventory`` (what to show), ``pg_backups.inventory_page`` (HTML) and
``pg_backups.airflow.inventory_store`` (the metadata queries); this file only wires them.
"""

from __future__ import annotations

import time

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from airflow.utils.session import create_session
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from pg_backups import inventory, inventory_page
from pg_backups.airflow.inventory_store import MetadataStore
from pg_backups.config import load_config
from pg_backups.times import now

URL_PREFIX = "/backup-inventory"

app = FastAPI(title="Backup inventory", description="Backups, WAL archiving, bucket and restore tests of every "
              "cluster, from what the backup DAGs publish.")
allowed = [Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))]


@app.exception_handler(HTTPException)
async def refused(request: Request, exc: HTTPException):
    """The page answers a browser with a page that says why and where to log in; the API with JSON."""
    if request.url.path.rstrip("/").endswith(URL_PREFIX) or request.url.path.endswith(f"{URL_PREFIX}/"):
        login = f"../auth/login/?next={request.url.path}"
        return HTMLResponse(inventory_page.refused(login, str(exc.detail), exc.status_code), status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _clusters():
    return load_config(strict=False).clusters


def _cluster(name: str):
    for cluster in _clusters():
        if cluster.name == name:
            return cluster
    raise HTTPException(status_code=404, detail=f"no cluster named {name!r} in the configuration")


def _s3_endpoints(clusters) -> dict[str, str | None]:
    """The endpoint of each cluster's AWS connection (S3-compatible stores), for the audit links;
    only the connection's ``endpoint_url`` extra is read, never its keys."""
    from airflow.models.connection import Connection

    endpoints = {}
    for conn_id in {c.s3.aws_conn_id for c in clusters if not c.s3.endpoint_url}:
        try:
            endpoints[conn_id] = Connection.get_connection_from_secrets(conn_id).extra_dejson.get("endpoint_url")
        except Exception:  # noqa: BLE001 - no connection: the links point at AWS's console
            endpoints[conn_id] = None
    return endpoints


def _timed(started: float, response):
    response.headers["Server-Timing"] = f"inventory;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@app.get("/", response_class=HTMLResponse, dependencies=allowed, summary="The inventory page")
def page(request: Request, cluster: str | None = Query(None, description="cluster whose trends are charted"),
         page: int = Query(1, ge=1, description="page of the table, red rows first (inventory_page.PAGE_ROWS a page)")):
    if not request.url.path.endswith("/"):  # the page's links are relative to .../backup-inventory/
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{request.url.path}/{query}", status_code=307)
    started, at = time.perf_counter(), now()
    clusters = _clusters()
    with create_session() as session:
        store = MetadataStore(session)
        rows = inventory_page.PAGE_ROWS
        data = inventory.build(clusters, store, at, s3_endpoints=_s3_endpoints(clusters), offset=(page - 1) * rows,
                               limit=rows)
        chosen = cluster or next((r["name"] for r in data["clusters"]), None)  # the worst one: rows are worst first
        hist = inventory.history(_cluster(chosen), store, at) if chosen else None
    return _timed(started, HTMLResponse(inventory_page.render(data, hist, at)))


@app.get("/api/inventory", dependencies=allowed, summary="Every cluster's row, with its 30-day timeline")
def api_inventory(days: int = Query(inventory.TIMELINE_DAYS, ge=1, le=366),
                  limit: int | None = Query(None, ge=1, description="one page of rows, red first, then amber, green "
                                                                     "(adds total, offset, limit); none: every row"),
                  offset: int = Query(0, ge=0)):
    started = time.perf_counter()
    clusters = _clusters()
    with create_session() as session:
        data = inventory.build(clusters, MetadataStore(session), timeline_days=days,
                               s3_endpoints=_s3_endpoints(clusters), offset=offset, limit=limit)
    return _timed(started, JSONResponse(data))


@app.get("/api/clusters/{name}", dependencies=allowed, summary="One cluster's row")
def api_cluster(name: str, days: int = Query(inventory.TIMELINE_DAYS, ge=1, le=366)):
    cluster = _cluster(name)
    with create_session() as session:
        data = inventory.build([cluster], MetadataStore(session), timeline_days=days,
                               s3_endpoints=_s3_endpoints([cluster]))
    return JSONResponse(data["clusters"][0])


@app.get("/api/clusters/{name}/history", dependencies=allowed,
         summary="Backup durations and sizes, restore RTOs: the trend chart's series")
def api_history(name: str, days: int = Query(inventory.HISTORY_DAYS, ge=1, le=3660)):
    cluster = _cluster(name)
    with create_session() as session:
        return JSONResponse(inventory.history(cluster, MetadataStore(session), days=days))


class BackupInventoryPlugin(AirflowPlugin):
    name = "backup_inventory"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Backup inventory"}]
    external_views = [{
        "name": "Backup inventory",
        "href": URL_PREFIX.lstrip("/") + "/",  # relative: works when Airflow is served under a path
        "destination": "nav",
        "category": "browse",
        "url_route": "backup-inventory",
    }]
