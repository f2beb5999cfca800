"""Every index test that takes ``settings`` or ``indexer`` runs on both databases (tests/backends.py)."""

from __future__ import annotations

from tests.backends import index_backend, settings

__all__ = ["index_backend", "settings"]
