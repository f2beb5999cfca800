"""The index's two databases as a fixture parameter: a test that takes ``settings`` (or
``indexer``, built from it) from here runs on SQLite and on PostgreSQL + pgvector.

PostgreSQL is one pgserver per test session (:mod:`tests.support.postgres`; about 3 s
to start, once) and a fresh database per test, dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_optimizer.config import Settings
from tests.support import postgres
from tests.support.shared import model_path

BACKENDS = ("sqlite", "postgresql")
#: Marks a test of what only SQLite has (the file: damaged pages, vec0 shadow tables, WAL,
#: moving a file aside); it runs on SQLite only, on purpose.
sqlite_only = pytest.mark.sqlite_only


@pytest.fixture(params=BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    backend = str(request.param)
    if backend != "sqlite" and request.node.get_closest_marker("sqlite_only") is not None:
        # Not a skip: the parameter is removed at collection (see pytest_collection_modifyitems).
        raise AssertionError("a sqlite_only test was collected for PostgreSQL")
    return backend


@pytest.fixture
def settings(tmp_path: Path, index_backend: str) -> Iterator[Settings]:
    base = Settings(db_path=tmp_path / "index.db", embedding_model_path=model_path())
    if index_backend == "sqlite":
        yield base
        return
    url = postgres.fresh_database("test")
    try:
        yield base.with_index(url)
    finally:
        postgres.drop_database(url)


def deselect_sqlite_only_on_postgres(items: list[pytest.Item]) -> list[pytest.Item]:
    """The items to keep: a ``sqlite_only`` test's PostgreSQL instance is not collected."""
    keep = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (callspec is not None and callspec.params.get("index_backend") == "postgresql"
                and item.get_closest_marker("sqlite_only") is not None):
            continue
        keep.append(item)
    return keep
