"""Prometheus metrics and the readiness endpoint, served from the operator's event loop.

One :class:`Metrics` object per process (:data:`METRICS`) holds every series; tests make their
own with a private registry. What is measured:

* ``mcp_optimizer_reconciles_total{kind, outcome}`` and
  ``mcp_optimizer_reconcile_duration_seconds{kind, outcome}``: every reconcile, by resource kind
  (``MCPServer``, ``Catalog``, ``Pod``) and outcome (``ok``, ``error`` when it raised, or what the
  caller sets, e.g. the reconciler's :class:`~mcp_optimizer.operator.workloads.Outcome`), via
  :meth:`Metrics.reconcile`;
* ``mcp_optimizer_workload_servers{status}``, ``mcp_optimizer_workload_tools{status}`` (tools
  by their server's status, the search filter), ``mcp_optimizer_registry_servers{catalog}`` and
  ``mcp_optimizer_registry_tools{catalog}``: read from the index itself at scrape time
  (:class:`IndexCounts`), so they can never drift from what search sees;
* ``mcp_optimizer_find_tool_duration_seconds``: ``find_tool`` latency (:meth:`Metrics.time_find_tool`);
* ``mcp_optimizer_embedding_seconds_total`` / ``mcp_optimizer_embedded_texts_total``: time spent
  in the model and texts embedded, read from the :class:`~mcp_optimizer.embeddings.Embedder`'s
  own counters (:meth:`Metrics.watch_embedder`), and ``mcp_optimizer_embedding_duration_seconds``,
  the wall time of every call that ran the model (a query, a workload's tools, a catalog),
  reported by the embedder itself;
* ``mcp_optimizer_catalog_parse_errors_total{catalog}``: catalogs that failed to parse;
* ``mcp_optimizer_ready``: 1 when ``/readyz`` says ready: the first full pass is done and the
  index is healthy (:attr:`Metrics.readiness`, see :mod:`mcp_optimizer.operator.readiness`);
* ``mcp_optimizer_index_healthy``, ``mcp_optimizer_index_faults_total{kind}`` (SQLite errors by
  :class:`~mcp_optimizer.db.health.FaultKind`) and ``mcp_optimizer_index_rebuilds_total{kind}``
  (index files replaced): see :mod:`mcp_optimizer.operator.healing`;
* ``mcp_optimizer_index_write_wait_seconds{priority}``: how long writes waited for the index's
  write lock, by :class:`~mcp_optimizer.ingest.scheduler.WritePriority`.

:class:`MetricsServer` serves ``/metrics`` and ``/readyz`` (200 once ready, else 503 with the
reason) with aiohttp (kopf's own HTTP stack) in the running event loop: no thread, no extra
dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)
reconcile_logger = logging.getLogger("mcp_optimizer.reconcile")

NAMESPACE = "mcp_optimizer"
WORKLOAD_STATUSES = ("RUNNING", "STOPPED", "ERROR")
#: Reconciles range from a pod-phase write (ms) to embedding a large catalog (minutes).
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600)
#: find_tool is a hybrid search over SQLite: milliseconds, embedding the query included.
FIND_TOOL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
EMBEDDING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 120)
#: Waiting for the write lock: a status write should wait at most one catalog chunk (~50 ms).
WRITE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30)
#: Seconds an index count stays cached (scrapes are every 15-60 s; counting is cheap anyway).
INDEX_COUNT_TTL = 5.0


@dataclass
class ReconcileTimer:
    """Yielded by :meth:`Metrics.reconcile`; set ``outcome`` to record something other than ok,
    and ``changes`` to say in the reconcile's log line what it did."""

    kind: str
    resource: str = ""
    outcome: str = "ok"
    changes: str = ""
    started: float = field(default_factory=time.perf_counter)


class _EmbedderCollector(Collector):
    """Exposes an Embedder's own running totals (texts embedded, seconds in the model)."""

    def __init__(self) -> None:
        self.embedders: list[Any] = []

    def collect(self) -> Iterable[Metric]:
        seconds = CounterMetricFamily(
            f"{NAMESPACE}_embedding_seconds", "Seconds spent running the embedding model (cache misses only)."
        )
        texts = CounterMetricFamily(f"{NAMESPACE}_embedded_texts", "Texts run through the embedding model.")
        seconds.add_metric([], sum(float(getattr(e, "seconds_embedding", 0.0)) for e in self.embedders))
        texts.add_metric([], sum(int(getattr(e, "texts_embedded", 0)) for e in self.embedders))
        yield seconds
        yield texts


class Metrics:
    """Every series of the process, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "reconciles",
            "Reconciles by resource kind and outcome.",
            ["kind", "outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "reconcile_duration_seconds",
            "Reconcile duration by resource kind and outcome.",
            ["kind", "outcome"],
            namespace=NAMESPACE,
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.find_tool_seconds = Histogram(
            "find_tool_duration_seconds",
            "find_tool latency (search, query embedding included).",
            namespace=NAMESPACE,
            buckets=FIND_TOOL_BUCKETS,
            registry=r,
        )
        self.embedding_call_seconds = Histogram(
            "embedding_duration_seconds",
            "Wall time of one call that ran the embedding model (a query, a workload's tools, a catalog).",
            namespace=NAMESPACE,
            buckets=EMBEDDING_BUCKETS,
            registry=r,
        )
        self.catalog_parse_errors = Counter(
            "catalog_parse_errors",
            "Catalog ConfigMaps that failed to parse (the previous rows are kept).",
            ["catalog"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.workload_servers = Gauge(
            "workload_servers", "Workload servers in the index by status.", ["status"], namespace=NAMESPACE, registry=r
        )
        self.workload_tools = Gauge(
            "workload_tools",
            "Workload tools in the index by their server's status (search returns RUNNING only).",
            ["status"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.registry_servers = Gauge(
            "registry_servers",
            "Registry servers in the index by catalog.",
            ["catalog"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.registry_tools = Gauge(
            "registry_tools", "Registry tools in the index by catalog.", ["catalog"], namespace=NAMESPACE, registry=r
        )
        self.ready = Gauge(
            "ready", "1 once the first full reconcile pass is done and the index is healthy.",
            namespace=NAMESPACE, registry=r,
        )
        self.index_healthy = Gauge(
            "index_healthy", "1 while the index file works; 0 from a fault until its repair is done.",
            namespace=NAMESPACE, registry=r,
        )
        self.index_faults = Counter(
            "index_faults", "SQLite errors of the index file by kind (corrupt, replaced, full, io).",
            ["kind"], namespace=NAMESPACE, registry=r,
        )
        self.index_rebuilds = Counter(
            "index_rebuilds", "Index files moved aside and rebuilt from the cluster, by the fault's kind.",
            ["kind"], namespace=NAMESPACE, registry=r,
        )
        self.index_write_wait = Histogram(
            "index_write_wait_seconds", "Time writes waited for the index's write lock, by priority.",
            ["priority"], namespace=NAMESPACE, buckets=WRITE_WAIT_BUCKETS, registry=r,
        )
        for status in WORKLOAD_STATUSES:
            self.workload_servers.labels(status).set(0)
            self.workload_tools.labels(status).set(0)
        self._embedders = _EmbedderCollector()
        r.register(self._embedders)
        self._ready = False
        #: Computes readiness when set (the operator: first pass done, index healthy): (ready, why).
        self.readiness: Callable[[], tuple[bool, str]] | None = None
        self._catalogs: set[str] = set()

    # --- operator -----------------------------------------------------------------------

    @contextlib.contextmanager
    def reconcile(self, kind: str, resource: str = "") -> Iterator[ReconcileTimer]:
        """Count and time one reconcile. An exception records outcome ``error`` and propagates.

        Example::

            with METRICS.reconcile("MCPServer") as timer:
                outcome = await reconciler.sync(view, ...)
                timer.outcome = outcome.value
        """
        timer = ReconcileTimer(kind, resource)
        try:
            yield timer
        except BaseException as exc:
            timer.outcome = "error"
            timer.changes = timer.changes or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            elapsed = time.perf_counter() - timer.started
            self.reconciles.labels(kind, timer.outcome).inc()
            self.reconcile_seconds.labels(kind, timer.outcome).observe(elapsed)
            # One line per reconcile: what, which, how it ended, what changed, how long.
            reconcile_logger.info(
                "reconciled %s %s: %s%s in %.1f ms", kind, resource or "-", timer.outcome,
                f" ({timer.changes})" if timer.changes else "", elapsed * 1000,
                extra={"kind": kind, "resource": resource, "outcome": timer.outcome, "changes": timer.changes,
                       "duration_ms": round(elapsed * 1000, 2)},
            )

    def catalog_parse_error(self, catalog: str) -> None:
        self.catalog_parse_errors.labels(catalog).inc()

    def forget_catalog(self, catalog: str) -> None:
        """Drop a deleted catalog's series."""
        for metric in (self.catalog_parse_errors, self.registry_servers, self.registry_tools):
            with contextlib.suppress(KeyError):
                metric.remove(catalog)
        self._catalogs.discard(catalog)

    def set_ready(self, ready: bool = True) -> None:
        self._ready = ready
        self.ready.set(1 if ready else 0)

    @property
    def is_ready(self) -> bool:
        return self.readiness_state()[0]

    def readiness_state(self) -> tuple[bool, str]:
        """(ready, why), from :attr:`readiness` when set, else from :meth:`set_ready`."""
        if self.readiness is not None:
            ready, why = self.readiness()
        else:
            ready, why = self._ready, "ok" if self._ready else "the first reconcile pass is not done"
        self.ready.set(1 if ready else 0)
        return ready, why

    # --- the index file -----------------------------------------------------------------

    def index_fault(self, kind: str) -> None:
        self.index_faults.labels(kind).inc()

    def index_rebuilt(self, kind: str) -> None:
        self.index_rebuilds.labels(kind).inc()

    def set_index_healthy(self, healthy: bool) -> None:
        self.index_healthy.set(1 if healthy else 0)

    def observe_write_wait(self, priority: str, seconds: float) -> None:
        self.index_write_wait.labels(priority).observe(seconds)

    # --- MCP endpoint and embeddings ----------------------------------------------------

    @contextlib.contextmanager
    def time_find_tool(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.find_tool_seconds.observe(time.perf_counter() - started)

    def observe_embedding(self, texts: int, seconds: float) -> None:
        """One call that ran the model: ``texts`` embedded in ``seconds`` (wall time)."""
        self.embedding_call_seconds.observe(seconds)

    def watch_embedder(self, embedder: Any) -> None:
        """Export an Embedder's ``seconds_embedding`` / ``texts_embedded`` totals and time each
        of its model runs in ``mcp_optimizer_embedding_duration_seconds``."""
        if embedder not in self._embedders.embedders:
            self._embedders.embedders.append(embedder)
            embedder.observers.append(self.observe_embedding)

    # --- index counts -------------------------------------------------------------------

    def set_index_counts(self, counts: IndexSnapshot) -> None:
        for status in set(WORKLOAD_STATUSES) | set(counts.workload_servers) | set(counts.workload_tools):
            self.workload_servers.labels(status).set(counts.workload_servers.get(status, 0))
            self.workload_tools.labels(status).set(counts.workload_tools.get(status, 0))
        catalogs = set(counts.registry_servers) | set(counts.registry_tools)
        for gone in self._catalogs - catalogs:
            for gauge in (self.registry_servers, self.registry_tools):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        for catalog in catalogs:
            self.registry_servers.labels(catalog).set(counts.registry_servers.get(catalog, 0))
            self.registry_tools.labels(catalog).set(counts.registry_tools.get(catalog, 0))
        self._catalogs = catalogs

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class IndexSnapshot:
    workload_servers: dict[str, int] = field(default_factory=dict)
    workload_tools: dict[str, int] = field(default_factory=dict)
    registry_servers: dict[str, int] = field(default_factory=dict)
    registry_tools: dict[str, int] = field(default_factory=dict)


class IndexCounts:
    """Counts rows of the index (an SQLAlchemy async engine) for the gauges, cached briefly."""

    def __init__(self, engine: Any, ttl: float = INDEX_COUNT_TTL) -> None:
        self.engine = engine
        self.ttl = ttl
        self._at = 0.0
        self._last: IndexSnapshot | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> IndexSnapshot:
        async with self._lock:
            if self._last is not None and time.monotonic() - self._at < self.ttl:
                return self._last
            self._last = await self._count()
            self._at = time.monotonic()
            return self._last

    async def _count(self) -> IndexSnapshot:
        from mcp_optimizer.db.meta_ops import IndexMetaOps

        counts = await IndexMetaOps(self.engine).row_counts()
        return IndexSnapshot(workload_servers=counts.workload_servers, workload_tools=counts.workload_tools,
                             registry_servers=counts.registry_servers, registry_tools=counts.registry_tools)


class MetricsServer:
    """``/metrics`` and ``/readyz`` on ``host:port`` in the current event loop (aiohttp).

    ``index``: an :class:`IndexCounts` (or any ``async () -> IndexSnapshot``) refreshed before
    each scrape; a failure to count is logged and the previous values are served.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str = "0.0.0.0",
        port: int = 9090,
        index: IndexCounts | Callable[[], Awaitable[IndexSnapshot]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.index = index
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._site is None or self._site._server is None:
            raise RuntimeError("the metrics server is not started")
        sockets = getattr(self._site._server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else self.requested_port

    async def _metrics(self, _: web.Request) -> web.Response:
        self.metrics.readiness_state()  # refreshes the ready gauge
        if self.index is not None:
            try:
                snap = await (self.index.snapshot() if isinstance(self.index, IndexCounts) else self.index())
                self.metrics.set_index_counts(snap)
            except Exception:
                logger.exception("Counting the index for metrics failed; serving the previous values")
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ready(self, _: web.Request) -> web.Response:
        ready, why = self.metrics.readiness_state()
        if ready:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def start(self) -> MetricsServer:
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics), web.get("/readyz", self._ready)])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.requested_port)
        await self._site.start()
        logger.info("Serving metrics at http://%s:%d/metrics", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def __aenter__(self) -> MetricsServer:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


async def start_metrics_server(
    metrics: Metrics | None = None,
    *,
    host: str = "0.0.0.0",
    port: int = 9090,
    engine: Any = None,
) -> MetricsServer:
    """Start serving :data:`METRICS` (or ``metrics``); ``engine``: the index, for the gauges."""
    server = MetricsServer(
        metrics if metrics is not None else METRICS,
        host=host,
        port=port,
        index=IndexCounts(engine) if engine is not None else None,
    )
    return await server.start()


#: The process's metrics.
METRICS = Metrics()
