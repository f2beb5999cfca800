"""A real PostgreSQL with pgvector for tests and benchmarks, without Docker: PyPI ``pgserver``
(PostgreSQL 16 and pgvector in a wheel; ``pip install -e .[dev]``), on a Unix socket.

One server per process (:func:`server`, started on first use and stopped at exit), a fresh
database per index (:func:`fresh_database`), dropped by :func:`drop_database`.
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
import warnings
from typing import Any

#: The driver the index's URLs use here (``postgresql+asyncpg`` works too).
DRIVER = "postgresql+psycopg"
_NAMES = itertools.count()


@functools.cache
def server() -> Any:
    """The process's PostgreSQL server (started once; stopped and deleted at exit)."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise RuntimeError("PostgreSQL tests need pgserver: pip install -e '.[dev]'") from exc
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp.
        warnings.simplefilter("ignore")
        directory = tempfile.mkdtemp(prefix="mcp-pg-")
        return pgserver.get_server(directory, cleanup_mode="delete")  # type: ignore[attr-defined]


def fresh_database(prefix: str = "index", driver: str = DRIVER) -> str:
    """Create an empty database and return its SQLAlchemy URL."""
    name = f"{prefix}_{os.getpid()}_{next(_NAMES)}"
    server().psql(f"CREATE DATABASE {name};")
    return url_of(name, driver)


def url_of(name: str, driver: str = DRIVER) -> str:
    return str(server().get_uri(name)).replace("postgresql://", f"{driver}://", 1)


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (its connections must be closed)."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    server().psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
