"""The backup inventory's reads of Airflow's metadata database (asset events, DAG runs, XComs),
for :mod:`pg_backups.inventory`: a handful of indexed queries for all clusters at once, whatever
their number (see benchmarks/bench_inventory.py).

This is Airflow's own database, through its models and the API server's session: no connection
to a cluster's database is ever opened here.
"""

from __future__ import annotations

import json
from datetime import datetime

from airflow.models.asset import AssetEvent, AssetModel
from airflow.models.dagrun import DagRun
from airflow.models.xcom import XComModel
from sqlalchemy import func, select

CHUNK = 500  # names per IN (...): well below every database's limit on bound parameters


def _chunks(items: list) -> list[list]:
    items = list(dict.fromkeys(items))
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def _json(value):
    """XCom values may come back once or twice encoded, depending on who wrote them."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class MetadataStore:
    """``pg_backups.inventory.Store`` over a SQLAlchemy session on Airflow's metadata database."""

    def __init__(self, session):
        self.session = session

    def _asset_ids(self, names: list[str]) -> dict[int, str]:
        ids = {}
        for chunk in _chunks(names):
            for asset_id, name in self.session.execute(
                    select(AssetModel.id, AssetModel.name).where(AssetModel.name.in_(chunk))):
                ids[asset_id] = name
        return ids

    @staticmethod
    def _event(row, names: dict[int, str]) -> dict:
        return {"asset": names[row.asset_id], "timestamp": row.timestamp, "extra": _json(row.extra) or {},
                "dag_id": row.source_dag_id, "run_id": row.source_run_id}

    _EVENT_COLUMNS = (AssetEvent.id, AssetEvent.asset_id, AssetEvent.timestamp, AssetEvent.extra,
                      AssetEvent.source_dag_id, AssetEvent.source_run_id)

    def newest_backup_events(self, asset_names: list[str]) -> dict[str, dict]:
        names = self._asset_ids(asset_names)
        out: dict[str, dict] = {}
        for chunk in _chunks(list(names)):
            newest = (select(func.max(AssetEvent.id).label("id")).where(AssetEvent.asset_id.in_(chunk))
                      .group_by(AssetEvent.asset_id).subquery())
            query = select(*self._EVENT_COLUMNS).join(newest, AssetEvent.id == newest.c.id)
            for row in self.session.execute(query):
                event = self._event(row, names)
                if event["asset"] not in out or out[event["asset"]]["timestamp"] < event["timestamp"]:
                    out[event["asset"]] = event
        return out

    def backup_events(self, asset_names: list[str], since: datetime) -> list[dict]:
        names = self._asset_ids(asset_names)
        events = []
        for chunk in _chunks(list(names)):
            query = (select(*self._EVENT_COLUMNS).where(AssetEvent.asset_id.in_(chunk), AssetEvent.timestamp >= since)
                     .order_by(AssetEvent.timestamp))
            events += [self._event(row, names) for row in self.session.execute(query)]
        events.sort(key=lambda e: e["timestamp"])
        return events

    @staticmethod
    def _run(row) -> dict:
        return {"dag_id": row.dag_id, "run_id": row.run_id, "state": row.state, "start_date": row.start_date,
                "end_date": row.end_date, "run_after": row.run_after}

    def _run_columns(self):
        return (DagRun.id, DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date,
                DagRun.run_after)

    def failed_runs(self, dag_ids: list[str], since: datetime) -> list[dict]:
        runs = []
        for chunk in _chunks(dag_ids):
            query = select(*self._run_columns()).where(DagRun.dag_id.in_(chunk), DagRun.state == "failed",
                                                       DagRun.run_after >= since)
            runs += [self._run(row) for row in self.session.execute(query)]
        return runs

    def _recent_runs(self, since: datetime) -> list:
        """Every run since ``since``, through the index on run_after (the other filters are applied
        here: with a dag_id IN (...), SQLite picks the dag_id index and reads a year of hourly runs)."""
        if getattr(self, "_recent", (None, None))[0] != since:
            self._recent = (since, self.session.execute(
                select(*self._run_columns()).where(DagRun.run_after >= since)).all())
        return self._recent[1]

    def last_runs(self, dag_ids: list[str], since: datetime | None = None) -> dict[str, dict]:
        out: dict[str, dict] = {}
        if since is not None:  # the newest run within a recent window (hourly DAGs)
            wanted = set(dag_ids)
            for row in self._recent_runs(since):
                if row.dag_id in wanted and (row.dag_id not in out or out[row.dag_id]["id"] < row.id):
                    out[row.dag_id] = {**self._run(row), "id": row.id}
            return out
        for chunk in _chunks(dag_ids):
            newest = (select(func.max(DagRun.id).label("id")).where(DagRun.dag_id.in_(chunk))
                      .group_by(DagRun.dag_id).subquery())
            for row in self.session.execute(select(*self._run_columns()).join(newest, DagRun.id == newest.c.id)):
                out[row.dag_id] = self._run(row)
        return out

    def latest_xcoms(self, dag_ids: list[str], task_id: str, key: str, since: datetime) -> dict[str, dict]:
        """Through the recent runs, then the XCom primary key (never a scan of a year of hourly
        XComs); only the newest value of each DAG is read and decoded."""
        wanted = set(dag_ids)
        run_pks = [row.id for row in self._recent_runs(since) if row.dag_id in wanted]
        newest: dict[str, int] = {}
        for chunk in _chunks(run_pks):
            # The newest run of each DAG that has one (run ids grow with time), picked by the database:
            # 48 hourly XComs a cluster no longer come back to Python to be compared.
            query = select(XComModel.dag_id, func.max(XComModel.dag_run_id)).where(
                XComModel.dag_run_id.in_(chunk), XComModel.task_id == task_id, XComModel.key == key,
                XComModel.map_index == -1).group_by(XComModel.dag_id)
            for dag_id, pk in self.session.execute(query):
                newest[dag_id] = max(pk, newest.get(dag_id, pk))
        out: dict[str, dict] = {}
        for chunk in _chunks(list(newest.values())):
            query = select(XComModel.dag_id, XComModel.run_id, XComModel.value, XComModel.timestamp).where(
                XComModel.dag_run_id.in_(chunk), XComModel.task_id == task_id, XComModel.key == key,
                XComModel.map_index == -1)
            for row in self.session.execute(query):
                out[row.dag_id] = {"value": _json(row.value), "timestamp": row.timestamp, "run_id": row.run_id}
        return out

    def all_xcoms(self, dag_ids: list[str], task_id: str, key: str) -> list[dict]:
        """Through the (dag_id, task_id, ...) index: for the quarterly restore test, a few rows a year."""
        out = []
        for chunk in _chunks(dag_ids):
            query = select(XComModel.dag_id, XComModel.run_id, XComModel.value, XComModel.timestamp).where(
                XComModel.dag_id.in_(chunk), XComModel.task_id == task_id, XComModel.key == key)
            out += [{"dag_id": row.dag_id, "run_id": row.run_id, "value": _json(row.value), "timestamp": row.timestamp}
                    for row in self.session.execute(query)]
        return out

    def xcoms_since(self, dag_ids: list[str], task_id: str, key: str, since: datetime) -> list[dict]:
        """Through the (dag_id, task_id, ...) index, the time filtered by the database: for the daily
        drills, a few hundred small rows a cluster a year, of which only the window's come back."""
        out = []
        for chunk in _chunks(dag_ids):
            query = select(XComModel.dag_id, XComModel.run_id, XComModel.value, XComModel.timestamp).where(
                XComModel.dag_id.in_(chunk), XComModel.task_id == task_id, XComModel.key == key,
                XComModel.timestamp >= since)
            out += [{"dag_id": row.dag_id, "run_id": row.run_id, "value": _json(row.value), "timestamp": row.timestamp}
                    for row in self.session.execute(query)]
        return out
