"""Registry catalogs: ConfigMaps labelled ``mcp-optimizer.dev/registry-catalog: "true"``.

The catalog is the ``registry.json`` key; its name in the index is ``namespace/name``.

Catalogs are trusted input: a catalog entry decides which registry server a workload links to,
and two entries matching one workload put that workload in ERROR. So they are read only from
the operator's own namespace and an explicit list (``MCP_OPTIMIZER_CATALOG_NAMESPACES``); a
labelled ConfigMap anywhere else is never read (the operator has no RBAC to read it either). kopf
watches with one namespace scope for the whole operator, and MCPServers are often watched
cluster-wide, so catalogs are watched beside kopf: one namespaced list + watch per trusted
namespace (:class:`CatalogWatch`), over the operator's own aiohttp client.

ConfigMaps are only read, never patched: the operator needs no write access to them and leaves
no annotations on users' objects. :meth:`CatalogSync.load` retries transient failures itself,
and a hash of the last loaded text makes repeated events (re-lists, unrelated edits) cost nothing.

A catalog that fails to parse keeps its previous rows and gets a Warning Event. A deleted
ConfigMap, or one whose label was removed, deletes the catalog. Either way the workloads the
change affects are re-matched by the index and their MCPServers' status updated.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Collection, Mapping
from typing import Any

from mcp_optimizer.catalog import CatalogParseError, parse_catalog
from mcp_optimizer.embeddings.texts import text_hash
from mcp_optimizer.ingest import CatalogLoadResult, Indexer, classify
from mcp_optimizer.kubeapi import KubeApi, KubeApiError
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator.status import post_event
from mcp_optimizer.operator.workloads import IndexUnavailableError, WorkloadReconciler, backoff

logger = logging.getLogger(__name__)

CATALOG_LABEL = "mcp-optimizer.dev/registry-catalog"
CATALOG_KEY = "registry.json"
#: Attempts for a catalog write that fails for a reason other than the catalog itself.
LOAD_ATTEMPTS = 5
#: Seconds one catalog watch request lasts before it is renewed (kopf's own watches: 600).
WATCH_SECONDS = 300
#: Longest wait between attempts to list or watch a namespace that fails (no RBAC, no namespace).
MAX_RETRY_DELAY = 60.0


def catalog_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def catalog_namespace(catalog: str) -> str:
    return catalog.partition("/")[0]


def is_catalog(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(CATALOG_LABEL) == "true"


class CatalogSync:
    """Loads catalog ConfigMaps of the trusted namespaces into the index and remembers what is loaded."""

    def __init__(
        self,
        indexer: Indexer,
        reconciler: WorkloadReconciler,
        *,
        trusted_namespaces: Collection[str],
    ) -> None:
        self.indexer = indexer
        self.reconciler = reconciler
        self.trusted = frozenset(trusted_namespaces)
        #: catalog -> hash of the registry.json text last loaded.
        self.loaded: dict[str, str] = {}
        #: Catalogs the index holds (seeded at startup), so a label removal is noticed.
        self.known: set[str] = set()
        #: Untrusted ConfigMaps already logged about (once each).
        self._ignored: set[str] = set()

    def is_trusted(self, catalog: str) -> bool:
        return catalog_namespace(catalog) in self.trusted

    async def seed(self) -> None:
        self.known |= await self.indexer.catalog_names()

    def forget_loaded(self) -> None:
        """The index lost (or may have lost) what was loaded: the next load writes every catalog."""
        self.loaded.clear()

    async def apply(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        """Level-triggered: make the index hold what this ConfigMap says now."""
        meta = body.get("metadata") or {}
        catalog = catalog_name(meta.get("namespace") or "", meta.get("name") or "")
        if not self.is_trusted(catalog):
            # Never reached through the watches (they cover trusted namespaces only); a guard
            # for any other path. Logged once, no Event: the namespace's owner did nothing wrong.
            if catalog not in self._ignored:
                self._ignored.add(catalog)
                logger.info("Ignoring ConfigMap %s: not in a trusted catalog namespace", catalog)
            return
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


class CatalogWatch:
    """List, then watch, the catalog ConfigMaps of one trusted namespace, for ever.

    Level-triggered like kopf: every list applies each catalog and removes the namespace's
    catalogs that are gone, then one watch request (``WATCH_SECONDS``) follows from the list's
    resourceVersion; when it ends (or its version is too old: 410 Gone) the namespace is listed
    again, so a change whose loading failed is retried at the latest then (unchanged catalogs
    cost a hash). Failures (no RBAC for the namespace, API server away) are logged and retried
    with backoff; the catalogs already loaded stay.
    """

    def __init__(self, sync: CatalogSync, api: KubeApi, namespace: str) -> None:
        self.sync = sync
        self.api = api
        self.namespace = namespace
        self.path = f"/api/v1/namespaces/{namespace}/configmaps"
        self.selector = f"{CATALOG_LABEL}=true"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._relist()
                failures = 0
                await self._watch(version)
            except KubeApiError as exc:
                failures += 1
                delay = min(MAX_RETRY_DELAY, 2.0 ** min(failures, 6)) * random.uniform(0.8, 1.2)
                hint = " (has the operator a Role to list and watch ConfigMaps there?)" if exc.status == 403 else ""
                logger.warning(
                    "Catalog watch in namespace %s failed: %s%s; retrying in %.0fs", self.namespace, exc, hint, delay
                )
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        """Apply every catalog of the namespace; return the resourceVersion to watch from."""
        items: list[dict[str, Any]] = []
        params = {"labelSelector": self.selector, "limit": "500"}
        while True:
            page = await self.api.get(self.path, params)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            params = {**params, "continue": str(meta["continue"])}
        present = set()
        for item in items:
            # List items carry no apiVersion/kind (watch events do); Events about them need both.
            item.setdefault("apiVersion", "v1")
            item.setdefault("kind", "ConfigMap")
            item.setdefault("metadata", {}).setdefault("namespace", self.namespace)
            present.add(catalog_name(self.namespace, item["metadata"].get("name") or ""))
            await self._apply(item, deleted=False)
        for catalog in sorted(self.sync.known - present):
            if catalog_namespace(catalog) == self.namespace:
                logger.info("Removing catalog %s: its ConfigMap is gone or no longer labelled", catalog)
                await self.sync.remove(catalog)
        return str(meta.get("resourceVersion") or "")

    async def _watch(self, version: str) -> None:
        """One watch request, until the API server ends it or says the version is too old."""
        params = {"labelSelector": self.selector, "resourceVersion": version, "allowWatchBookmarks": "true"}
        try:
            async for event in self.api.watch(self.path, params, timeout_seconds=WATCH_SECONDS):
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if body.get("code") == 410:
                        return  # the version is too old: list again
                    raise KubeApiError(body.get("code"), str(body.get("message") or body)[:300])
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    # A ConfigMap whose label is removed leaves the selector: the watch says DELETED.
                    await self._apply(body, deleted=kind == "DELETED")
        except KubeApiError as exc:
            if exc.status != 410:
                raise

    async def _apply(self, body: dict[str, Any], *, deleted: bool) -> None:
        try:
            await self.sync.apply(body, deleted=deleted)
        except IndexUnavailableError as exc:
            # The index repair reloads every catalog once the index works again.
            logger.warning("%s; it is loaded again once the index is repaired", exc)
        except Exception:
            # The next list (after WATCH_SECONDS at the latest) tries again.
            meta = body.get("metadata") or {}
            logger.exception("Applying catalog %s/%s failed", meta.get("namespace"), meta.get("name"))
