"""The operator heals its index: a fault is reported, the file repaired, and the index filled again.

The index is a cache of the cluster, so no fault of its file is fatal (see
:mod:`mcp_optimizer.db.health` for how faults are recognised). :class:`IndexDoctor` runs beside
the handlers for the operator's lifetime:

* it learns of a fault from :class:`~mcp_optimizer.db.health.IndexHealth` (every SQLite error
  through the engine is classified there: reads from the MCP endpoint as well as writes) or by
  noticing, every ``index_heal_interval``, that the file was deleted or replaced under it;
* ``/readyz`` fails from the first report until the repair is done
  (:class:`~mcp_optimizer.operator.readiness.Readiness`);
* a damaged or replaced file (``corrupt``, ``replaced``) is moved aside and a new one created
  (:meth:`~mcp_optimizer.ingest.Indexer.rebuild`); a full disk or an I/O error is waited out
  (for ``full``: until the file system, or the ``index_max_bytes`` cap, has room again);
* then one full pass makes the index match the cluster again: every catalog loaded, every
  MCPServer synced with its tools read (what a restart would do, without the restart). The
  repair is done when a pass completes with no new fault; until then it retries, waiting
  ``index_heal_interval`` doubled each time up to a minute.

Each step is a log line, a metric (``mcp_optimizer_index_faults_total{kind}``,
``_index_rebuilds_total{kind}``, ``_index_healthy``) and, when the operator knows its own Pod
(``MCP_OPTIMIZER_POD_NAME``/``_NAMESPACE``/``_UID``, from the downward API), an Event on that Pod:
``IndexUnhealthy`` and ``IndexRebuilt`` (Warning), ``IndexRecovered`` (Normal).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.ingest import FaultKind, Indexer, IndexFault, describe
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator.callbacks import FullPassFn, IndexReplacedFn

logger = logging.getLogger(__name__)

#: The longest wait between two repair attempts.
MAX_RETRY_DELAY = 60.0
#: A full index is retried once the file system has at least this much room again.
MIN_FREE_BYTES = 1024 * 1024


class PodEvents:
    """Kubernetes Events about the operator itself, on its own Pod; logged only when the Pod is
    unknown (not running in a cluster) or the Event cannot be created (RBAC)."""

    def __init__(self, api_client: client.ApiClient | None, settings: Settings) -> None:
        self._core = client.CoreV1Api(api_client) if api_client is not None else None
        self.pod = (settings.pod_namespace, settings.pod_name, settings.pod_uid)
        self._warned = False

    @property
    def enabled(self) -> bool:
        namespace, name, _ = self.pod
        return self._core is not None and bool(namespace and name)

    async def post(self, type_: str, reason: str, message: str) -> None:
        namespace, name, uid = self.pod
        if self._core is None or not namespace or not name:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name,
                               **({"uid": uid} if uid else {})},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "mcp-optimizer"},
            "reportingComponent": "mcp-optimizer",
            "reportingInstance": name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await asyncio.to_thread(self._core.create_namespaced_event, namespace, cast(Any, body))
        except Exception as exc:
            if not self._warned:
                self._warned = True
                logger.warning("Cannot post Events on the operator's Pod %s/%s (%s); index repairs are "
                               "logged only", namespace, name, getattr(exc, "reason", None) or exc)


class IndexDoctor:
    """Watches the index and repairs it (see the module docstring)."""

    def __init__(
        self,
        indexer: Indexer,
        *,
        interval: float,
        events: PodEvents,
        full_pass: FullPassFn,
        on_replaced: IndexReplacedFn = lambda: None,
        max_bytes: int = 0,
    ) -> None:
        self.indexer = indexer
        self.interval = interval
        self.events = events
        self.full_pass = full_pass
        self.on_replaced = on_replaced
        self.max_bytes = max_bytes
        #: The start's repair is reported once, however often kopf starts (ToolHive's API changes).
        self._start_reported = False
        METRICS.set_index_healthy(True)
        indexer.health.listeners.append(lambda fault: METRICS.index_fault(fault.kind.value))

    async def report_start_repair(self) -> None:
        """Report a file :meth:`Indexer.open` replaced before the operator started."""
        repair = self.indexer.repaired
        if repair is None or self._start_reported:
            return
        self._start_reported = True
        METRICS.index_rebuilt(repair.fault.kind.value)
        await self.events.post("Warning", "IndexRebuilt", self._rebuilt_message(repair.fault, repair.moved_to))

    async def run(self) -> None:
        """Forever: wait for a fault (or notice the file changed), then repair it."""
        health = self.indexer.health
        while True:
            fault = await health.wait(self.interval)
            if fault is None:
                fault = self.indexer.file_fault()
                if fault is None:
                    continue
                health.report(fault)
            try:
                await self.repair()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Repairing the index failed; trying again in %.0f s", self.interval)
                await asyncio.sleep(self.interval)

    async def repair(self) -> None:
        """Repair the current fault until a full pass completes with no new one."""
        health = self.indexer.health
        fault = health.fault
        if fault is None:
            return
        METRICS.set_index_healthy(False)
        logger.warning("The index is unhealthy (%s): /readyz fails until it is repaired", fault)
        await self.events.post("Warning", "IndexUnhealthy", f"index {fault.kind.value}: {fault.message}; "
                               "repairing (the index is rebuilt from the cluster if needed)")
        delay = self.interval
        while True:
            if fault.kind.needs_rebuild:
                try:
                    repair = await self.indexer.rebuild(fault)
                except Exception as exc:  # e.g. no room for the new file, a read-only directory
                    logger.warning("Replacing the index file failed (%s); trying again in %.0f s",
                                   describe(exc), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                    continue
                self.on_replaced()
                METRICS.index_rebuilt(fault.kind.value)
                await self.events.post("Warning", "IndexRebuilt", self._rebuilt_message(fault, repair.moved_to))
            elif not await self._room_again(fault):
                logger.info("The index is still %s; checking again in %.0f s", fault.kind.value, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                fault = health.fault or fault
                continue
            before = health.reports
            logger.info("Index repair: syncing every catalog and MCPServer again")
            try:
                await self.full_pass()
            except Exception as exc:
                logger.warning("The repair pass did not complete: %s", exc)
            latest = self.indexer.file_fault()
            if latest is None and health.reports == before:
                health.clear()
                METRICS.set_index_healthy(True)
                logger.info("The index is repaired: every catalog and MCPServer is synced again")
                await self.events.post("Normal", "IndexRecovered",
                                       f"the index is healthy again after {fault.kind.value}: {fault.message}")
                return
            if latest is not None:
                health.report(latest)
            fault = health.fault or fault
            logger.warning("The index is still unhealthy (%s); trying again in %.0f s", fault, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _room_again(self, fault: IndexFault) -> bool:
        """Whether a full or failing index is worth another pass (an I/O error: always try)."""
        if fault.kind is not FaultKind.FULL or self.indexer.path is None:
            return True
        try:
            stat = await asyncio.to_thread(os.statvfs, self.indexer.path.parent)
        except OSError:
            return True
        if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
            return False
        if self.max_bytes <= 0:
            return True
        try:
            used = await self.indexer.used_bytes()
        except Exception:
            return True
        return used + MIN_FREE_BYTES <= self.max_bytes

    def _rebuilt_message(self, fault: IndexFault, moved_to: object) -> str:
        kept = f"the old file is kept as {moved_to}" if moved_to else "the old file was deleted"
        return (f"the index file could not be used ({fault.kind.value}: {fault.message}); a new one was "
                f"created and is filled from the cluster; {kept}")
