"""Running the operator: kopf's settings, its handler registry, start-up and garbage collection.

:func:`run_operator` runs kopf's embedded-operator API (:func:`kopf.operator`) in the current
event loop, with an explicit registry (nothing is registered on import) and explicit settings,
so that tests can start and stop operators in-process with a stop flag and a ready flag, one
after another, against a test control plane.

On start the operator reconciles everything: a startup handler deletes index rows whose
MCPServer or catalog ConfigMap is gone and loads the catalogs; then kopf lists every watched
resource and resumes each MCPServer (kopf fills its pod and MCPServer indices first). The same
garbage collection repeats every resync interval, catching rows a released finalizer left behind.
``/readyz`` turns ready once that first pass has reached every MCPServer listed at start
(:class:`~mcp_optimizer.operator.readiness.Readiness`), and fails again while the index is being
repaired (:class:`~mcp_optimizer.operator.healing.IndexDoctor`, whose repair pass,
:func:`reconcile_everything`, is this same pass run again).

:func:`main` is ``mcp-optimizer run``: the operator and the MCP endpoint in one process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.db.health import classify
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator import catalogs, mcpservers, pods
from mcp_optimizer.operator.catalogs import CatalogSync
from mcp_optimizer.operator.cluster import ClusterLister, connection_info, load_client_config
from mcp_optimizer.operator.healing import IndexDoctor, PodEvents
from mcp_optimizer.operator.mapping import GROUP
from mcp_optimizer.operator.readiness import Readiness
from mcp_optimizer.operator.status import StatusWriter
from mcp_optimizer.operator.workloads import IndexUnavailableError, ListTools, WorkloadReconciler

logger = logging.getLogger(__name__)

FINALIZER = f"{GROUP}/finalizer"

#: What kopf accepts as a stop or ready flag.
Flag = asyncio.Future[Any] | asyncio.Event | concurrent.futures.Future[Any] | threading.Event


@dataclass
class OperatorContext:
    """kopf's ``memo``: what every handler shares. kopf copies it per object (shallowly), so
    the attributes are shared."""

    settings: Settings
    indexer: Indexer
    reconciler: WorkloadReconciler
    catalogs: CatalogSync
    lister: ClusterLister
    readiness: Readiness
    doctor: IndexDoctor
    background: set[asyncio.Task[None]] = field(default_factory=set)


def operator_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings for this operator, all explicit."""
    ks = kopf.OperatorSettings()
    ks.persistence.finalizer = FINALIZER
    # Handler progress and the last handled spec live in the MCPServer's annotations: the status
    # belongs to the status schema (and to users), and annotations survive status rewrites.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    # kopf would post an Event for every handler's INFO log; ours are posted explicitly.
    ks.posting.level = logging.WARNING
    ks.peering.standalone = settings.peering_name is None
    if settings.peering_name is not None:
        ks.peering.mandatory = True
        ks.peering.name = settings.peering_name
        ks.peering.priority = (
            settings.peering_priority if settings.peering_priority is not None else random.randint(1, 1_000_000)
        )
    # The resources are fixed and the namespaces exact names: no need to watch CRDs and namespaces
    # (which would take cluster-wide list/watch rights on both). A CRD installed after the start
    # is noticed at the next start.
    ks.scanning.disabled = True
    # Watches are re-established (a fresh list) at least this often: a missed event heals itself.
    ks.watching.server_timeout = 600
    ks.watching.client_timeout = 630
    return ks


def build_registry(settings: Settings, kube_config: client.Configuration) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube_config)

    @kopf.on.startup(registry=registry)
    async def startup(*, memo: Any, **kwargs: Any) -> None:
        context: OperatorContext = memo
        # kopf passes its indices by their ids; they are empty now and filled before any handler runs.
        context.reconciler.attach(pods=kwargs["pods_by_namespace"], servers=kwargs["mcpservers_by_namespace"])
        # The doctor first: a fault met by the start pass is repaired (its pass redoes the start's).
        if not context.background:
            for coro, name in ((context.doctor.run(), "index doctor"), (_watch_readiness(context), "readiness")):
                task = asyncio.create_task(coro, name=name)
                context.background.add(task)
            await context.doctor.report_start_repair()
        await context.catalogs.seed()
        await collect_garbage(context, load_catalogs=True, first_pass=True)
        task = asyncio.create_task(_garbage_collector(context), name="index garbage collector")
        context.background.add(task)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(*, memo: Any, **_: Any) -> None:
        context: OperatorContext = memo
        await _stop_background(context)

    pods.register(registry)
    mcpservers.register(registry, resync_interval=settings.resync_interval)
    catalogs.register(registry)
    return registry


async def collect_garbage(context: OperatorContext, *, load_catalogs: bool = False, first_pass: bool = False) -> None:
    """Delete rows whose MCPServer or catalog ConfigMap is not in the cluster.

    The index is read *before* the cluster is listed: anything added to the index after that
    read is not considered, so a resource created meanwhile cannot be collected by mistake.
    ``load_catalogs`` also loads every catalog (at start, before MCPServers are resumed, so
    workloads link at once instead of embedding on their own first). ``first_pass``: the start's
    pass, which readiness waits for (every MCPServer listed here, and the catalogs).
    """
    indexed_workloads = await context.indexer.workload_names()
    indexed_catalogs = await context.indexer.catalog_names()
    present_workloads = await context.lister.workload_names()
    present_catalogs = await context.lister.catalogs()
    if first_pass:
        context.readiness.expect(present_workloads)
    try:
        removed = await context.reconciler.remove_stale(sorted(indexed_workloads - present_workloads))
        for name in removed:
            logger.info("Removed workload %s: its MCPServer is gone", name)
        for catalog in sorted(indexed_catalogs - set(present_catalogs)):
            logger.info("Removing catalog %s: its ConfigMap is gone or no longer labelled", catalog)
            await context.catalogs.remove(catalog)
        if load_catalogs:
            for catalog, body in sorted(present_catalogs.items()):
                try:
                    await context.catalogs.apply(body, deleted=False)
                except IndexUnavailableError as exc:
                    logger.warning("%s; it is loaded again once the index is repaired", exc)
                except Exception:
                    # The ConfigMap handler will try again (and report) when kopf lists it.
                    logger.exception("Loading catalog %s at start failed", catalog)
    finally:
        if first_pass:
            # Loaded or failed (a broken catalog has its Event): the start does not wait on it.
            context.readiness.catalogs_loaded()


async def reconcile_everything(context: OperatorContext) -> None:
    """The index repair's pass: what a restart does, without the restart. Every catalog is
    written again (the index may have lost it) and every MCPServer synced with its tools read."""
    context.catalogs.forget_loaded()
    await collect_garbage(context, load_catalogs=True)
    await context.reconciler.resync_all()


async def _watch_readiness(context: OperatorContext) -> None:
    """Log when the operator turns ready (or not); stop waiting for MCPServers deleted (or being
    deleted) since the start's listing: kopf never resumes those."""
    was_ready: bool | None = None
    listed = 0.0
    while True:
        await asyncio.sleep(0.5)
        readiness = context.readiness
        loop_time = asyncio.get_running_loop().time()
        if readiness.pending and loop_time - listed > context.settings.index_heal_interval:
            listed = loop_time
            with contextlib.suppress(Exception):  # the next round tries again
                present = await context.lister.workload_names()
                # One being deleted is settled by its delete handler, or never (another finalizer).
                readiness.keep_only(name for name in present if not context.reconciler.deleting(name))
        ready, why = readiness.state()
        if ready != was_ready:
            if ready:
                logger.info("Operator ready: the first full pass is done and the index is healthy")
            elif was_ready is not None:
                logger.warning("Operator not ready: %s", why)
            was_ready = ready


async def _garbage_collector(context: OperatorContext) -> None:
    interval = context.settings.resync_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await collect_garbage(context)
        except Exception as exc:
            fault = classify(exc)
            if fault is None:
                logger.exception("Garbage collection failed; trying again in %.0fs", interval)
            else:
                logger.warning("Garbage collection failed (index %s); trying again in %.0fs", fault, interval)


async def _stop_background(context: OperatorContext) -> None:
    tasks = list(context.background)
    context.background.clear()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await context.reconciler.close()


async def run_operator(
    settings: Settings,
    *,
    kubeconfig: str | None = None,
    indexer: Indexer | None = None,
    embedder: Embedder | None = None,
    list_tools: ListTools | None = None,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or a signal).

    ``kubeconfig``: a kubeconfig file; None uses the in-cluster config, else the default
    kubeconfig. ``indexer``: an open index (closed by the caller); None opens (and if needed
    replaces) ``settings.db_path`` with ``embedder`` (or the model from ``settings``).
    ``ready_flag`` is set once the startup handler (garbage collection, catalogs) has finished;
    ``readiness`` (made here when None) then tells when the first full pass is done.

    kopf treats every task created in this loop after it starts as its own and cancels those
    left at exit: start other long-running tasks of the process (the MCP endpoint) first.
    """
    kube_config = load_client_config(kubeconfig)
    own_indexer = indexer is None
    if indexer is None:
        indexer = await Indexer.open(settings, embedder, repair=True)
    if readiness is None:
        readiness = Readiness(indexer.health)
    indexer.scheduler.observer = METRICS.observe_write_wait
    api_client = client.ApiClient(kube_config)
    reconciler = WorkloadReconciler(
        indexer, StatusWriter(api_client), mcp_timeout=settings.mcp_timeout, list_tools=list_tools,
        readiness=readiness,
    )
    context = OperatorContext(
        settings=settings,
        indexer=indexer,
        reconciler=reconciler,
        catalogs=CatalogSync(indexer, reconciler),
        lister=ClusterLister(api_client, settings.namespaces),
        readiness=readiness,
        doctor=IndexDoctor(
            indexer, interval=settings.index_heal_interval, events=PodEvents(api_client, settings),
            full_pass=lambda: reconcile_everything(context), on_replaced=reconciler.index_replaced,
            max_bytes=settings.index_max_bytes,
        ),
    )
    try:
        await kopf.operator(
            registry=build_registry(settings, kube_config),
            settings=operator_settings(settings),
            memo=context,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        with contextlib.suppress(Exception):
            await _stop_background(context)
        api_client.close()  # type: ignore[no-untyped-call]
        if own_indexer:
            await indexer.close()


async def main(settings: Settings, *, kubeconfig: str | None = None) -> None:
    """``mcp-optimizer run``: the operator and the MCP endpoint in one asyncio process.

    Both share one embedding model and one index. Runs until SIGINT/SIGTERM (kopf handles them
    and stops; the endpoint follows) or until either part fails (the other is stopped).
    """
    from mcp_optimizer.db.search import ToolSearch
    from mcp_optimizer.embeddings import FastEmbedder
    from mcp_optimizer.mcp.server import serve
    from mcp_optimizer.metrics import METRICS, start_metrics_server

    embedder = FastEmbedder(
        settings.embedding_model_path, settings.embedding_model_name, batch_size=settings.embedding_batch_size
    )
    # A bad model path fails at start, not at the first catalog or query.
    await asyncio.to_thread(embedder.load)
    # A file that cannot be used is moved aside here and the index rebuilt from the cluster.
    indexer = await Indexer.open(settings, embedder, repair=True)
    readiness = Readiness(indexer.health)
    METRICS.readiness = readiness.state  # /readyz: the first full pass done, the index healthy
    METRICS.watch_embedder(embedder)
    metrics_server = None
    if settings.metrics_port:
        metrics_server = await start_metrics_server(METRICS, port=settings.metrics_port, engine=indexer.engine)
    stop_endpoint = asyncio.Event()
    search = ToolSearch(indexer.engine, embedder, min_similarity=settings.min_similarity)

    # Started before kopf: kopf adopts (and cancels at its exit) every task created after it starts.
    endpoint = asyncio.create_task(serve(settings, search, stop=stop_endpoint), name="mcp endpoint")
    operator = asyncio.create_task(
        run_operator(settings, kubeconfig=kubeconfig, indexer=indexer, readiness=readiness), name="operator"
    )
    try:
        await asyncio.wait({endpoint, operator}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_endpoint.set()
        METRICS.readiness = None
        METRICS.set_ready(False)
        if not operator.done():
            operator.cancel()
        results = await asyncio.gather(endpoint, operator, return_exceptions=True)
        if metrics_server is not None:
            await metrics_server.stop()
        await indexer.close()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
