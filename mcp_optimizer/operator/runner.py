"""Running the operator: kopf's settings, its handler registry, start-up and garbage collection.

:func:`run_operator` runs kopf's embedded-operator API (:func:`kopf.operator`) in the current
event loop, with an explicit registry (nothing is registered on import) and explicit settings,
so that tests can start and stop operators in-process with a stop flag and a ready flag, one
after another, against a test control plane.

On start the operator reconciles everything: a startup handler deletes index rows whose
MCPServer, ToolHive object or catalog ConfigMap is gone and loads the catalogs, then starts one
catalog watch per trusted catalog namespace (beside kopf: see :mod:`.catalogs`); kopf lists every
watched resource and resumes each MCPServer (kopf fills its pod and MCPServer indices first). The
same garbage collection repeats every resync interval, catching rows a released finalizer left
behind.

ToolHive's resources are watched when they can be (:mod:`.toolhive`). Which ones is fixed for one
run of kopf; when that changes (ToolHive installed after the operator, say), kopf is stopped and
started again in the same process with the new set: the index, the model and the MCP endpoint
stay as they are, and kopf's start resumes every object (nothing unchanged is re-embedded).
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
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.errors import ConfigError
from mcp_optimizer.ingest import Indexer, classify
from mcp_optimizer.kubeapi import KubeApi, load_client_config
from mcp_optimizer.mcp import McpClientError
from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator import mcpservers, pods, toolhive
from mcp_optimizer.operator.callbacks import StopFn
from mcp_optimizer.operator.catalogs import CatalogSync, CatalogWatch, catalog_namespace
from mcp_optimizer.operator.cluster import ClusterLister, ToolHiveAPI, connection_info
from mcp_optimizer.operator.healing import IndexDoctor, PodEvents
from mcp_optimizer.operator.mapping import GROUP, PodState, ServerView
from mcp_optimizer.operator.readiness import Readiness
from mcp_optimizer.operator.status import EventPoster, StatusWriter, event_sink
from mcp_optimizer.operator.toolhive_mapping import ToolHiveOptions
from mcp_optimizer.operator.workloads import IndexUnavailableError, ListTools, WorkloadReconciler

logger = logging.getLogger(__name__)

FINALIZER = f"{GROUP}/finalizer"
#: Values of ``MCP_OPTIMIZER_TOOLHIVE``.
TOOLHIVE_MODES = ("auto", "false")

#: What kopf accepts as a stop or ready flag.
Flag = asyncio.Future[Any] | asyncio.Event | concurrent.futures.Future[Any] | threading.Event


class CallFailureRelay:
    """The endpoint's :class:`~mcp_optimizer.mcp.tools.CallFailureListener` in ``mcp-optimizer run``.

    The endpoint starts before the operator (kopf adopts tasks created after it starts), so it is
    handed this relay, which the operator attaches its reconciler to once it runs. Failures
    reported before that, or after it stopped, are dropped: the next probe finds them too.
    """

    def __init__(self) -> None:
        self._reconciler: WorkloadReconciler | None = None
        #: The reconciler's event loop: under leader election the writer runs in a thread of its own.
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, reconciler: WorkloadReconciler | None) -> None:
        self._reconciler = reconciler
        self._loop = asyncio.get_running_loop() if reconciler is not None else None

    def call_failed(self, workload_name: str, error: McpClientError) -> None:
        reconciler, loop = self._reconciler, self._loop
        if reconciler is None or loop is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            reconciler.call_failed(workload_name, error)
        else:
            with contextlib.suppress(RuntimeError):  # the writer's loop just closed: the probe finds it
                loop.call_soon_threadsafe(reconciler.call_failed, workload_name, error)


@dataclass
class OperatorContext:
    """kopf's ``memo``: what every handler shares. kopf copies it per object (shallowly), so
    the attributes are shared."""

    settings: Settings
    indexer: Indexer
    reconciler: WorkloadReconciler
    catalogs: CatalogSync
    lister: ClusterLister
    #: The API client of the catalog watches.
    kube: KubeApi
    #: Events posted outside kopf's handlers (catalog watches, start-up, garbage collection).
    events: EventPoster
    readiness: Readiness
    doctor: IndexDoctor
    background: set[asyncio.Task[None]] = field(default_factory=set)
    #: Run first when the operator stops (the process's other servers), see :func:`run_operator`.
    on_stop: StopFn | None = None
    #: (namespace, name) -> digest of the spec of every MCPToolConfig seen, to tell spec changes.
    tool_configs: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Set while kopf stops only to start again (ToolHive's API changed): the process's other
    #: servers keep running then.
    restarting: bool = False


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


def build_registry(
    settings: Settings, kube_config: client.Configuration, toolhive_api: ToolHiveAPI | None = None
) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator (and the read-only ones for the
    ToolHive resources ``toolhive_api`` says are watched)."""
    registry = kopf.OperatorRegistry()
    toolhive_api = toolhive_api or ToolHiveAPI()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube_config)

    @kopf.on.startup(registry=registry)
    async def startup(*, memo: OperatorContext, **kwargs: Any) -> None:
        context = memo
        # kopf passes its indices by their ids; they are empty now and filled before any handler
        # runs. Taken from kwargs (kopf's ActivityFn protocol has no such parameters); ToolHive's
        # are named after the kinds watched, known only at run time.
        pods: kopf.Index[str, PodState] = kwargs["pods_by_namespace"]
        servers: kopf.Index[str, ServerView] = kwargs["mcpservers_by_namespace"]
        toolhive_servers: list[kopf.Index[str, ServerView]] = [
            kwargs[toolhive.index_id(kind)] for kind in toolhive_api.server_kinds
        ]
        context.reconciler.attach(pods=pods, servers=servers, toolhive=toolhive_servers)
        # kopf posts Events only from resource handlers; this task and those it starts post their own.
        event_sink.set(context.events.post_soon)
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
        trusted = context.settings.trusted_catalog_namespaces
        if not trusted:
            logger.warning(
                "No catalog namespace: set MCP_OPTIMIZER_CATALOG_NAMESPACES (or MCP_OPTIMIZER_OPERATOR_NAMESPACE); "
                "no catalog is read"
            )
        else:
            logger.info("Catalogs are read from namespaces %s only; labelled ConfigMaps elsewhere are ignored",
                        ", ".join(trusted))
        for namespace in trusted:
            watch = CatalogWatch(context.catalogs, context.kube, namespace)
            context.background.add(asyncio.create_task(watch.run(), name=f"catalog watch {namespace}"))
        if toolhive_api.server_kinds:
            resync = toolhive.resync_loop(context.reconciler, context.settings.resync_interval)
            context.background.add(asyncio.create_task(resync, name="ToolHive resync"))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(*, memo: OperatorContext, **_: Any) -> None:
        context = memo
        if context.on_stop is not None and not context.restarting:
            # Before kopf looks for tasks it did not start: it waits 5 s for those, then cancels
            # them (an open MCP stream would cost the 5 s and end in a cancellation traceback).
            try:
                await context.on_stop()
            except Exception:
                logger.exception("Stopping the process's servers failed")
        await _stop_background(context)

    pods.register(registry)
    mcpservers.register(
        registry, resync_interval=settings.resync_interval, probe_interval=settings.remote_probe_interval
    )
    toolhive.register(registry, toolhive_api)
    return registry


async def collect_garbage(context: OperatorContext, *, load_catalogs: bool = False, first_pass: bool = False) -> None:
    """Delete rows whose MCPServer, ToolHive object or catalog ConfigMap is not in the cluster.

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
            logger.info("Removed workload %s: its object is gone (or is no longer indexed)", name)
        for catalog in sorted(indexed_catalogs - set(present_catalogs.bodies)):
            if catalog_namespace(catalog) in present_catalogs.unreadable:
                continue  # not listed this time: unknown, not gone
            if not context.catalogs.is_trusted(catalog):
                # E.g. loaded by an earlier version that read every namespace: logged once, as it goes.
                logger.info("Removing catalog %s: its namespace is not a trusted catalog namespace", catalog)
            else:
                logger.info("Removing catalog %s: its ConfigMap is gone or no longer labelled", catalog)
            await context.catalogs.remove(catalog)
        if load_catalogs:
            for catalog, body in sorted(present_catalogs.bodies.items()):
                try:
                    await context.catalogs.apply(body, deleted=False)
                except IndexUnavailableError as exc:
                    logger.warning("%s; it is loaded again once the index is repaired", exc)
                except Exception:
                    # The catalog watch will try again (and report) when it lists the namespace.
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
    policy: ClientPolicy | None = None,
    call_failures: CallFailureRelay | None = None,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
    on_stop: StopFn | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or a signal).

    ``kubeconfig``: a kubeconfig file; None uses the in-cluster config, else the default
    kubeconfig. ``indexer``: an open index (closed by the caller); None opens (and if needed
    replaces) ``settings.db_path`` with ``embedder`` (or the model from ``settings``).
    ``ready_flag`` is set once the startup handler (garbage collection, catalogs) has finished;
    ``readiness`` (made here when None) then tells when the first full pass is done.

    ``policy``: bounds and destination rules for ``tools/list`` (default: from ``settings``, with
    the apiserver this operator talks to refused). ``call_failures``: the endpoint's relay, which
    this operator's reconciler is attached to while it runs.

    kopf treats every task created in this loop after it starts as its own: at exit it waits
    5 s for those still running, then cancels them. ``on_stop`` runs as the operator begins to
    stop, before that: it must stop the process's other servers (the MCP endpoint), whose
    connections are such tasks.
    """
    if settings.toolhive not in TOOLHIVE_MODES:
        modes = ", ".join(TOOLHIVE_MODES)
        raise ConfigError(f"MCP_OPTIMIZER_TOOLHIVE must be one of {modes}, got {settings.toolhive!r}")
    toolhive_options = ToolHiveOptions.parse(settings.toolhive_vmcp_groups)
    kube_config = load_client_config(kubeconfig)
    if policy is None:
        policy = ClientPolicy.from_settings(settings, apiserver_url=kube_config.host)
    own_indexer = indexer is None
    if indexer is None:
        indexer = await Indexer.open(settings, embedder, repair=True)
    if readiness is None:
        readiness = Readiness(indexer.health)
    indexer.scheduler.observer = METRICS.observe_write_wait
    api_client = client.ApiClient(kube_config)
    kube = KubeApi(kube_config, timeout=settings.mcp_timeout)
    reconciler = WorkloadReconciler(
        indexer,
        StatusWriter(api_client),
        mcp_timeout=settings.mcp_timeout,
        list_tools=list_tools,
        policy=policy,
        probe_interval=settings.remote_probe_interval,
        readiness=readiness,
    )
    trusted = settings.trusted_catalog_namespaces
    if call_failures is not None:
        call_failures.attach(reconciler)
    context: OperatorContext  # the doctor's full pass (after an index rebuild) reconciles it all
    context = OperatorContext(
        settings=settings,
        indexer=indexer,
        reconciler=reconciler,
        catalogs=CatalogSync(indexer, reconciler, trusted_namespaces=trusted),
        lister=ClusterLister(api_client, settings.namespaces, trusted, toolhive_options),
        kube=kube,
        events=EventPoster(kube),
        on_stop=on_stop,
        readiness=readiness,
        doctor=IndexDoctor(
            indexer, interval=settings.index_heal_interval, events=PodEvents(api_client, settings),
            full_pass=lambda: reconcile_everything(context), on_replaced=reconciler.index_replaced,
            max_bytes=settings.index_max_bytes,
        ),
    )
    # Started before kopf (which cancels the tasks created while it runs): the caller's stop flag.
    stopping = asyncio.create_task(_raised(stop_flag), name="operator stop flag") if stop_flag is not None else None
    try:
        toolhive_api: ToolHiveAPI | None = ToolHiveAPI(missing=f"MCP_OPTIMIZER_TOOLHIVE={settings.toolhive}")
        if settings.toolhive != "false":
            try:
                toolhive_api = await context.lister.discover_toolhive()
            except Exception as exc:  # the API server is away: kopf retries on its own; so does the check
                toolhive_api = ToolHiveAPI(missing=f"checking ToolHive's API failed ({exc})")
        while toolhive_api is not None:
            toolhive_api = await _run_kopf(context, kube_config, toolhive_api, stopping=stopping, ready_flag=ready_flag)
            ready_flag = None  # raised once, by the first run (a future cannot be set twice)
    finally:
        if call_failures is not None:
            call_failures.attach(None)
        if stopping is not None:
            stopping.cancel()
        with contextlib.suppress(Exception):
            await _stop_background(context)
        await kube.close()
        api_client.close()  # type: ignore[no-untyped-call]
        if own_indexer:
            await indexer.close()


async def _run_kopf(
    context: OperatorContext,
    kube_config: client.Configuration,
    toolhive_api: ToolHiveAPI,
    *,
    stopping: asyncio.Task[None] | None,
    ready_flag: Flag | None,
) -> ToolHiveAPI | None:
    """One run of kopf, watching ``toolhive_api``'s resources. Returns the resources to watch
    next when ToolHive's API changed, None when the caller's flag or a signal stopped kopf."""
    settings = context.settings
    context.lister.toolhive = toolhive_api
    recheck_note = "" if settings.toolhive == "false" else (
        f" (checked again every {settings.toolhive_recheck_interval:.0f} s)"
    )
    logger.info("%s%s", toolhive_api.describe(), recheck_note)
    kopf_stop = asyncio.Event()  # raised by the caller's flag, or when ToolHive's API changed
    changed = asyncio.Event()
    context.restarting = False

    def stop_kopf(_: object) -> None:
        # Only a change of ToolHive's API (and no stop asked for) restarts kopf.
        context.restarting = changed.is_set() and not (stopping is not None and stopping.done())
        kopf_stop.set()

    if stopping is not None:
        stopping.add_done_callback(stop_kopf)
    recheck: asyncio.Task[ToolHiveAPI] | None = None
    if settings.toolhive != "false":
        recheck = asyncio.create_task(
            toolhive.watch_api(
                toolhive_api,
                context.lister.discover_toolhive,
                interval=settings.toolhive_recheck_interval,
                changed=changed,
            ),
            name="ToolHive API check",
        )
        recheck.add_done_callback(stop_kopf)
    try:
        await kopf.operator(
            registry=build_registry(settings, kube_config, toolhive_api),
            settings=operator_settings(settings),
            memo=context,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness_endpoint,
            stop_flag=kopf_stop,
            ready_flag=ready_flag,
        )
    finally:
        if stopping is not None:
            stopping.remove_done_callback(stop_kopf)
        if recheck is not None:
            recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recheck
    if recheck is None or not changed.is_set() or (stopping is not None and stopping.done()):
        return None
    return recheck.result()


async def _raised(flag: Flag) -> None:
    """Return once ``flag`` is raised (kopf's flag types), never blocking an executor thread on
    a flag that may never be raised."""
    if isinstance(flag, asyncio.Future):
        await asyncio.shield(flag)
    elif isinstance(flag, asyncio.Event):
        await flag.wait()
    elif isinstance(flag, concurrent.futures.Future):
        await asyncio.shield(asyncio.wrap_future(flag))
    else:
        while not flag.is_set():  # noqa: ASYNC110 - a threading.Event has nothing to await
            await asyncio.sleep(0.1)


async def main(settings: Settings, *, kubeconfig: str | None = None) -> None:
    """``mcp-optimizer run``: the operator and the MCP endpoint in one asyncio process.

    Both share one embedding model and one index. Runs until SIGINT/SIGTERM (kopf handles them:
    its cleanup stops the endpoint and the readiness report first, then kopf itself stops) or
    until the endpoint fails (the operator is then stopped).
    """
    from mcp_optimizer.db.search import ToolSearch
    from mcp_optimizer.embeddings import configured_embedder
    from mcp_optimizer.mcp.server import McpEndpoint
    from mcp_optimizer.metrics import METRICS, start_metrics_server

    embedder = configured_embedder(settings)  # None in keyword-only mode: no model at all
    if embedder is not None:
        # A bad model path fails at start, not at the first catalog or query.
        await asyncio.to_thread(embedder.load)
        METRICS.watch_embedder(embedder)
    if settings.leader_election:
        from mcp_optimizer.operator.replicas import run_replica

        await run_replica(settings, kubeconfig=kubeconfig, embedder=embedder)
        return
    # A file that cannot be used is moved aside here and the index rebuilt from the cluster.
    indexer = await Indexer.open(settings, embedder, repair=True)
    readiness = Readiness(indexer.health)
    METRICS.readiness = readiness.state  # /readyz: the first full pass done, the index healthy
    metrics_server = None
    endpoint: McpEndpoint | None = None
    # One policy for the operator's tools/list and the endpoint's forwarded calls.
    kube_config = load_client_config(kubeconfig)
    policy = ClientPolicy.from_settings(settings, apiserver_url=kube_config.host)
    call_failures = CallFailureRelay()
    try:
        if settings.metrics_port:
            metrics_server = await start_metrics_server(
                METRICS, host=settings.metrics_host, port=settings.metrics_port, engine=indexer.engine
            )
        search = ToolSearch(indexer.engine, embedder, min_similarity=settings.min_similarity,
                            hnsw_ef_search=settings.pg_hnsw_ef_search if settings.pg_hnsw else 0)
        # Serving before kopf starts: kopf adopts every task created after it starts.
        # The endpoint reviews callers' tokens against the cluster the operator watches.
        endpoint = McpEndpoint(
            settings, search, kube_config=kube_config, policy=policy, call_failures=call_failures
        )
        await endpoint.start()
        stop = asyncio.Event()

        async def watch_endpoint(serving: McpEndpoint) -> None:
            await serving.wait()
            if not stop.is_set():
                logger.error("The MCP endpoint stopped unexpectedly; stopping the operator")
                stop.set()

        async def stop_serving() -> None:
            stop.set()
            METRICS.readiness = None  # not ready from now on, whatever the pass and the index say
            METRICS.set_ready(False)
            if endpoint is not None:
                await endpoint.stop()

        watcher = asyncio.create_task(watch_endpoint(endpoint), name="mcp endpoint watcher")
        try:
            await run_operator(
                settings, kubeconfig=kubeconfig, indexer=indexer, policy=policy, call_failures=call_failures,
                readiness=readiness, stop_flag=stop, on_stop=stop_serving,
            )
        finally:
            watcher.cancel()
    finally:
        METRICS.readiness = None
        METRICS.set_ready(False)
        if endpoint is not None:
            await endpoint.stop()
        if metrics_server is not None:
            await metrics_server.stop()
        await indexer.close()
