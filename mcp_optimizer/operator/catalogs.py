"""Registry catalogs: ConfigMaps labelled ``mcp-optimizer.dev/registry-catalog: "true"``.

The catalog is the ``registry.json`` key; its name in the index is ``namespace/name``. ConfigMaps
are only watched (``kopf.on.event``), never patched: the operator needs no write access to them
and leaves no annotations on users' objects. That means kopf does not retry these handlers, so
:meth:`CatalogSync.load` retries transient failures itself, and a hash of the last loaded text
makes repeated events (re-lists, unrelated edits) cost nothing.

A catalog that fails to parse keeps its previous rows and gets a Warning Event. A deleted
ConfigMap, or one whose label was removed, deletes the catalog. Either way the workloads the
change affects are re-matched by the index and their MCPServers' status updated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from mcp_optimizer.catalog import CatalogParseError, parse_catalog
from mcp_optimizer.db.health import classify
from mcp_optimizer.embeddings.texts import text_hash
from mcp_optimizer.ingest import CatalogLoadResult, Indexer
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator.status import post_event
from mcp_optimizer.operator.workloads import IndexUnavailableError, WorkloadReconciler, backoff

logger = logging.getLogger(__name__)

CATALOG_LABEL = "mcp-optimizer.dev/registry-catalog"
CATALOG_KEY = "registry.json"
#: Attempts for a catalog write that fails for a reason other than the catalog itself.
LOAD_ATTEMPTS = 5


def catalog_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def is_catalog(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(CATALOG_LABEL) == "true"


class CatalogSync:
    """Loads catalog ConfigMaps into the index and remembers what is loaded."""

    def __init__(self, indexer: Indexer, reconciler: WorkloadReconciler) -> None:
        self.indexer = indexer
        self.reconciler = reconciler
        #: catalog -> hash of the registry.json text last loaded.
        self.loaded: dict[str, str] = {}
        #: Catalogs the index holds (seeded at startup), so a label removal is noticed.
        self.known: set[str] = set()

    def concerns(self, namespace: str, name: str, labels: Mapping[str, str] | None) -> bool:
        """Whether an event about this ConfigMap matters: a catalog, or one that was a catalog."""
        return is_catalog(labels) or catalog_name(namespace, name) in self.known

    async def seed(self) -> None:
        self.known |= await self.indexer.catalog_names()

    def forget_loaded(self) -> None:
        """The index lost (or may have lost) what was loaded: the next load writes every catalog."""
        self.loaded.clear()

    async def apply(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        """Level-triggered: make the index hold what this ConfigMap says now."""
        meta = body.get("metadata") or {}
        catalog = catalog_name(meta.get("namespace") or "", meta.get("name") or "")
        if deleted or not is_catalog(meta.get("labels")):
            await self.remove(catalog)
            return
        text = (body.get("data") or {}).get(CATALOG_KEY)
        if text is None:
            self._warn(body, "CatalogInvalid", f"ConfigMap has no {CATALOG_KEY} key; the catalog is not loaded")
            return
        await self.load(catalog, text, body=body)

    async def load(self, catalog: str, text: str, *, body: Mapping[str, Any] | None = None) -> bool:
        """Parse and load a catalog; on a parse error keep the previous rows. True when loaded."""
        digest = text_hash(text)
        if self.loaded.get(catalog) == digest:
            return True
        try:
            # A 1 MiB catalog takes ~0.5 s to parse and validate: not on the event loop.
            parsed = await asyncio.to_thread(parse_catalog, text)
        except CatalogParseError as exc:
            METRICS.catalog_parse_error(catalog)
            kept = "the previously loaded catalog is kept" if catalog in self.known else "nothing is loaded"
            if body is not None:
                self._warn(body, "CatalogInvalid", f"{exc}; {kept}")
            logger.warning("Catalog %s does not parse: %s; %s", catalog, exc, kept)
            return False
        with METRICS.reconcile("Catalog", catalog) as timer:
            for attempt in range(LOAD_ATTEMPTS):
                try:
                    result = await self.indexer.load_catalog(catalog, parsed.entries, parsed.warnings)
                    break
                except Exception as exc:
                    fault = classify(exc)
                    if fault is not None:
                        # The index repair loads every catalog again once the index works.
                        raise IndexUnavailableError(f"catalog {catalog}: the index could not be written: "
                                                    f"{fault.message}") from exc
                    if attempt + 1 >= LOAD_ATTEMPTS:
                        raise
                    logger.warning("Loading catalog %s failed (%s); retrying", catalog, exc)
                    await asyncio.sleep(backoff(attempt))
            timer.changes = (
                f"{len(result.added)} added, {len(result.updated)} updated, {len(result.renamed)} renamed, "
                f"{len(result.removed)} removed, {result.texts_embedded} texts embedded, "
                f"{len(result.rematched)} workloads re-matched"
            )
        self.loaded[catalog] = digest
        self.known.add(catalog)
        self._report(catalog, result, body)
        await self.reconciler.rematched(result.rematched)
        return True

    async def remove(self, catalog: str) -> None:
        if catalog not in self.known and catalog not in self.loaded:
            return
        with METRICS.reconcile("Catalog", catalog) as timer:
            try:
                result = await self.indexer.delete_catalog(catalog)
            except Exception as exc:
                fault = classify(exc)
                if fault is None:
                    raise
                # The index repair's pass removes it (the ConfigMap is gone from its listing).
                raise IndexUnavailableError(f"catalog {catalog}: the index could not be written: "
                                            f"{fault.message}") from exc
            timer.outcome = "deleted"
            timer.changes = f"{len(result.removed)} removed, {len(result.rematched)} workloads re-matched"
        METRICS.forget_catalog(catalog)
        self.known.discard(catalog)
        self.loaded.pop(catalog, None)
        logger.info("Catalog %s removed (%d servers)", catalog, len(result.removed))
        await self.reconciler.rematched(result.rematched)

    @staticmethod
    def _report(catalog: str, result: CatalogLoadResult, body: Mapping[str, Any] | None) -> None:
        changes = {
            "added": len(result.added),
            "updated": len(result.updated),
            "removed": len(result.removed),
            "renamed": len(result.renamed),
        }
        summary = ", ".join(f"{n} {what}" for what, n in changes.items() if n)
        logger.info("Catalog %s loaded: %s", catalog, summary or "no changes")
        if body is not None and summary:
            post_event(
                body,
                type_="Normal",
                reason="CatalogLoaded",
                message=f"{summary}; {len(result.rematched)} workloads re-matched",
            )
        if body is not None and result.warnings:
            post_event(body, type_="Normal", reason="CatalogWarnings", message="; ".join(result.warnings)[:1024])

    @staticmethod
    def _warn(body: Mapping[str, Any], reason: str, message: str) -> None:
        post_event(body, type_="Warning", reason=reason, message=message)


def concerns_catalog(*, namespace: str | None, name: str, labels: kopf.Labels, memo: Any, **_: Any) -> bool:
    """kopf ``when=`` filter: catalog ConfigMaps, and ConfigMaps that were catalogs."""
    catalogs: CatalogSync = memo.catalogs
    return catalogs.concerns(namespace or "", name, labels)


async def catalog_event(*, type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Any event of a (former) catalog ConfigMap, including the initial listing."""
    catalogs: CatalogSync = memo.catalogs
    try:
        await catalogs.apply(body, deleted=type == "DELETED")
    except IndexUnavailableError as exc:
        # Not retried here (kopf does not retry event handlers): the index repair reloads it.
        logger.warning("%s; it is loaded again once the index is repaired", exc)


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the ConfigMap handler in ``registry``."""
    kopf.on.event("", "v1", "configmaps", id="registry-catalog", when=concerns_catalog, registry=registry)(
        catalog_event
    )
