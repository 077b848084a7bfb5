"""Fixtures of the unit tests (no server: these run in the fast subset)."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_cluster():
    """Builds a cluster as its clusters.yaml entry would: ``{"name": "asso"}`` with the test's
    overrides on top (``make_cluster({"tools": ["walg"]})``; a nested setting is replaced whole)."""
    from pg_backups.config import build_cluster

    def make(overrides: dict | None = None):
        return build_cluster({"name": "asso", **(overrides or {})})

    return make
