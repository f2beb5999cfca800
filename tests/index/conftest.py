"""Every index test that takes ``settings`` or ``indexer`` runs on both databases (tests/support/backends.py)."""

from __future__ import annotations

from tests.support.backends import index_backend, settings

__all__ = ["index_backend", "settings"]
