"""``mcp-optimizer run`` with leader election (issue 13): one writer, every replica serving.

Every replica serves the MCP endpoint (``find_tool``, ``search_registry``, ``list_tools``,
``call_tool``) from the shared index through an :class:`~mcp_optimizer.ingest.IndexReader`,
which never migrates or repairs. The replica holding the Lease (:mod:`.leader`) is also the
writer: it opens the :class:`~mcp_optimizer.ingest.Indexer` (the one place that migrates and
repairs the index) and runs kopf (:func:`~mcp_optimizer.operator.runner.run_operator`), so status
writes, Events, ``tools/list`` probes and catalog reads happen once, in the writer.

The writer runs in a thread with its own event loop: kopf treats every task created in its loop
after it starts as its own and cancels them when it stops, and the endpoint (whose requests are
such tasks) must keep serving when this replica stops writing.

Order of a writer's end, so that there is never a second writer:

* the Lease is lost (renew deadline passed, another holder): fence the Indexer at once (no new
  write transaction starts), stop kopf and its handlers, close the Indexer. The renew deadline
  comes ``duration - renew_deadline`` (5 s by default) before anyone may take over;
* the process stops (SIGTERM): ``/readyz`` fails at once; kopf stops, the Indexer closes, then the
  Lease is released, so another replica takes over within one retry period; the endpoint keeps
  serving for ``shutdown_delay`` (Services stop routing here meanwhile), then drains its calls.

A forwarded ``call_tool`` that gets no answer (issue 10A) marks a remote server ERROR only in the
writer: a reader does not write, and leaves the server to the writer's next probe (every
``MCP_OPTIMIZER_REMOTE_PROBE_INTERVAL``, 60 s), which finds the same failure.

Rolling upgrades that add a migration: a new replica finds the index at an older schema, is not
ready, and asks the older writer to hand over through the Lease (:data:`.leader.WANTS_SCHEMA`);
the older writer steps down and releases, older replicas never take the Lease again, and the new
replica becomes the writer and migrates. Older readers then stop serving (a schema they do not
know) while the new ones serve.

Liveness: kopf's liveness endpoint exists only while kopf runs, so here the process serves
``/healthz`` at ``MCP_OPTIMIZER_LIVENESS_ENDPOINT`` itself, answering while its event loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

from aiohttp import web

from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.errors import ConfigError
from mcp_optimizer.ingest import Indexer, IndexReader
from mcp_optimizer.kubeapi import KubeApi, load_client_config
from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.metrics import METRICS, start_metrics_server
from mcp_optimizer.operator.leader import LeaseElector, LeaseTiming
from mcp_optimizer.operator.readiness import Readiness, ReplicaReadiness
from mcp_optimizer.operator.runner import CallFailureRelay, run_operator

logger = logging.getLogger(__name__)

#: Seconds between a reader's checks that the index answers at the schema head.
READER_CHECK_INTERVAL = 1.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WriterThread:
    """One writer term: the Indexer and kopf in a thread with its own event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        kubeconfig: str | None,
        embedder: Embedder | None,
        policy: ClientPolicy,
        call_failures: CallFailureRelay,
        readiness: ReplicaReadiness,
    ) -> None:
        # kopf's own liveness endpoint would come and go with the Lease: the process serves it.
        self.settings = replace(settings, liveness_endpoint=None)
        self.kubeconfig = kubeconfig
        self.embedder = embedder
        self.policy = policy
        self.call_failures = call_failures
        self.readiness = readiness
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fence: asyncio.Event | None = None
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="index writer", daemon=True)

    def start(self) -> None:
        self._main_loop = asyncio.get_running_loop()
        self._thread.start()

    def stop(self, *, fence: bool) -> None:
        """Stop writing. ``fence`` (the Lease is lost): no new write transaction starts from now."""
        loop, fence_flag = self._loop, self._fence
        if fence and loop is not None and fence_flag is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing writes
                loop.call_soon_threadsafe(fence_flag.set)
        self._stop.set()

    async def wait(self) -> None:
        await self.done.wait()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the caller, which stops the process
            self.error = exc
        finally:
            if self._main_loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._main_loop.call_soon_threadsafe(self.done.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fence = asyncio.Event()
        # The writer alone creates, migrates, checks and repairs the index.
        indexer = await Indexer.open(self.settings, self.embedder, repair=True)
        # Created before kopf starts, so that kopf neither waits for it nor cancels it.
        fence = asyncio.create_task(_fence_writes(indexer, self._fence), name="index write fence")
        readiness = Readiness(indexer.health)
        self.readiness.writer = readiness
        try:
            if not self._stop.is_set():
                await run_operator(
                    self.settings, kubeconfig=self.kubeconfig, indexer=indexer, policy=self.policy,
                    call_failures=self.call_failures, stop_flag=self._stop, readiness=readiness,
                )
        finally:
            self.readiness.writer = None
            fence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fence
            await indexer.close()


async def _fence_writes(indexer: Indexer, fence: asyncio.Event) -> None:
    """Once ``fence`` is set, hold the Indexer's write lock until cancelled: writes in progress
    finish, none starts after (kopf's handlers are being stopped meanwhile)."""
    await fence.wait()
    async with indexer.scheduler.exclusive():
        logger.warning("Index writes fenced: this replica no longer holds the Lease")
        await asyncio.Event().wait()


async def _check_reader(reader: IndexReader, readiness: ReplicaReadiness, elector: LeaseElector) -> None:
    was: bool | None = None
    while True:
        readiness.reader = state = await reader.check()
        if reader.behind and not elector.leading:
            # A rolling upgrade: the writer is an older version; ask it to hand over (leader.py).
            await elector.request_schema(reader.head)
        if state[0] != was:
            if state[0]:
                logger.info("Serving from the shared index (schema %s)", reader.head)
            else:
                logger.warning("Not serving: %s", state[1])
            was = state[0]
        await asyncio.sleep(READER_CHECK_INTERVAL)


async def _start_liveness(url: str | None) -> web.AppRunner | None:
    if not url:
        return None
    parts = urlsplit(url)

    async def alive(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get(parts.path or "/healthz", alive)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 8081).start()
    return runner


async def _writer_terms(
    elector: LeaseElector, stop: asyncio.Event, make_writer: Callable[[], WriterThread],
    reader: IndexReader, readiness: ReplicaReadiness,
) -> None:
    """Acquire the Lease, write while holding it, stop writing when it is lost; until ``stop``."""
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        while not stop.is_set():
            acquiring = asyncio.create_task(elector.acquire(), name="lease acquire")
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not acquiring.done():
                acquiring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquiring
                await elector.release()  # acquired just as it was cancelled
                return
            # Another writer filled this index (it has a schema): serve it during our first pass.
            readiness.took_over = reader.revision is not None
            writer = make_writer()
            writer.start()
            holding = asyncio.create_task(elector.hold(), name="lease renewals")
            ended = asyncio.create_task(writer.wait(), name="writer")
            await asyncio.wait({holding, stopping, ended}, return_when=asyncio.FIRST_COMPLETED)
            lost = holding.done()
            if lost:
                logger.warning("Stopping the writer: %s", holding.result())
                writer.stop(fence=True)
            else:
                holding.cancel()
                writer.stop(fence=False)
            await ended
            # Released only after the writer stopped: never two writers (a lost Lease is not ours).
            await elector.release()
            if writer.error is not None:
                raise writer.error
            if not lost and not stop.is_set():
                raise RuntimeError("the writer stopped by itself")
    finally:
        stopping.cancel()


async def run_replica(settings: Settings, *, kubeconfig: str | None, embedder: Embedder | None) -> None:
    """``mcp-optimizer run`` under leader election, until SIGINT/SIGTERM."""
    from mcp_optimizer.mcp.server import McpEndpoint

    namespace = settings.lease_namespace or settings.operator_namespace
    if not namespace:
        raise ConfigError("leader election needs the Lease's namespace: set MCP_OPTIMIZER_LEASE_NAMESPACE "
                          "(or MCP_OPTIMIZER_OPERATOR_NAMESPACE)")
    timing = LeaseTiming(settings.lease_duration, settings.lease_renew_deadline, settings.lease_retry_period)
    kube_config = load_client_config(kubeconfig)
    policy = ClientPolicy.from_settings(settings, apiserver_url=kube_config.host)
    readiness = ReplicaReadiness()
    METRICS.readiness = readiness.state
    call_failures = CallFailureRelay()
    stop = asyncio.Event()

    def stop_soon() -> None:
        readiness.stopping = True  # /readyz fails from the signal on, while calls are still served
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop_soon)
    reader = IndexReader.open(settings)
    # Each round is bounded by the renew deadline (LeaseElector.hold); a request never outlives it.
    kube = KubeApi(kube_config, timeout=timing.renew_deadline)
    elector = LeaseElector(kube, namespace=namespace, name=settings.lease_name,
                           identity=settings.lease_identity, timing=timing, knows_schema=reader.knows)
    logger.info("Leader election on lease %s/%s as %s", namespace, settings.lease_name, elector.identity)
    checker = asyncio.create_task(_check_reader(reader, readiness, elector), name="index reader check")
    metrics_server = None
    liveness: web.AppRunner | None = None
    endpoint: McpEndpoint | None = None
    try:
        if settings.metrics_port:
            metrics_server = await start_metrics_server(
                METRICS, host=settings.metrics_host, port=settings.metrics_port, engine=reader.engine
            )
        liveness = await _start_liveness(settings.liveness_endpoint)
        search = ToolSearch(reader.engine, embedder, min_similarity=settings.min_similarity,
                            hnsw_ef_search=settings.pg_hnsw_ef_search if settings.pg_hnsw else 0)
        endpoint = McpEndpoint(settings, search, kube_config=kube_config, policy=policy, call_failures=call_failures)
        await endpoint.start()
        await _writer_terms(elector, stop, lambda: WriterThread(
            settings, kubeconfig=kubeconfig, embedder=embedder, policy=policy, call_failures=call_failures,
            readiness=readiness,
        ), reader, readiness)
    finally:
        readiness.stopping = True
        if endpoint is not None:
            # Not ready any more, still serving: Services stop routing here, then calls drain.
            await asyncio.sleep(settings.shutdown_delay)
            await endpoint.stop()
        METRICS.readiness = None
        METRICS.set_ready(False)
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
        if metrics_server is not None:
            await metrics_server.stop()
        if liveness is not None:
            await liveness.cleanup()
        await kube.close()
        await reader.close()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
