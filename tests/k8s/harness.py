"""Running the operator in-process against the test control plane, and looking at what it did.

* :class:`OperatorThread`: :func:`~mcp_optimizer.operator.run_operator` in a thread with its own
  event loop (as kopf's own ``KopfRunner`` does), started and stopped with kopf's ready and stop
  flags. Operators can be stopped and started again on the same index file (restart tests).
* :class:`IndexProbe`: reads the index file the operator writes (rows, tools, search).
* :class:`Kube`: small helpers over the kubernetes client for MCPServers, catalog ConfigMaps,
  pods and Events.
* :func:`eventually`: polls a (sync or async) check until it holds or a deadline passes; tests
  never assert speed with fixed sleeps.

Fixtures: ``mcpserver_crd`` (session), ``ns`` (a namespace emptied at teardown, so later tests
and cluster-wide operators do not meet leftovers), ``start_operator`` and ``probe``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from sqlalchemy import text

from mcp_optimizer.config import Settings
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.search import ToolHit, ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.mcp import list_tools
from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.mcp.server import McpEndpoint, serve
from mcp_optimizer.operator import run_operator
from mcp_optimizer.operator.catalogs import CATALOG_KEY, CATALOG_LABEL
from mcp_optimizer.operator.mapping import GROUP, INSTANCE_LABEL, PLURAL, VERSION
from mcp_optimizer.operator.runner import CallFailureRelay
from mcp_optimizer.testing.mcp_servers import LOOPBACK
from tests.k8s.conftest import REPO
from tests.support.crds import apply_crd

CRD_FILE = REPO / "crds" / "mcpservers.mcp-optimizer.dev.yaml"
MERGE_PATCH = "application/merge-patch+json"

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ polling


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """Poll ``check`` until it returns a truthy value (returned) or raises no AssertionError.

    On timeout, re-raise the last AssertionError (or fail naming ``what`` and the last value).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: AssertionError | None = None
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
            error = None
            if last:
                return last
        except AssertionError as exc:
            error = exc
        if time.monotonic() > deadline:
            if error is not None:
                raise error
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check!r}; last value {last!r}")
        await asyncio.sleep(interval)


async def equals(value: Awaitable[object], expected: object) -> bool:
    """For :func:`eventually`: whether ``value``, awaited, equals ``expected``."""
    return bool(await value == expected)


async def column_is(row: Awaitable[Mapping[str, Any] | None], column: str, expected: object) -> bool:
    """For :func:`eventually`: whether the row, awaited, holds ``expected`` in ``column`` (no row,
    or no such column, never does)."""
    return bool(((await row) or {}).get(column, object()) == expected)


async def within(seconds: float, check: Callable[[], Any], *, what: str = "") -> float:
    """Wait for ``check``; return how long it took (for latency assertions with a generous bound)."""
    started = time.monotonic()
    await eventually(check, timeout=seconds, interval=0.02, what=what)
    took = time.monotonic() - started
    log.info("%s after %.3fs", what or "condition", took)
    return took


# ------------------------------------------------------------------------------------------ operator


class ListToolsCounter:
    """The real ``tools/list``, counting calls per endpoint (to prove what the fast path skips)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    async def __call__(
        self, endpoint: str, transport: str, timeout: float, *, namespace: str | None, policy: ClientPolicy
    ) -> list[dict[str, Any]]:
        with self._lock:
            self.calls[endpoint] = self.calls.get(endpoint, 0) + 1
        return await list_tools(endpoint, transport=transport, timeout=timeout, namespace=namespace, policy=policy)

    def count(self, endpoint: str) -> int:
        with self._lock:
            return self.calls.get(endpoint, 0)


class OperatorThread:
    """One in-process operator: its own thread and event loop, kopf's stop and ready flags."""

    def __init__(
        self,
        settings: Settings,
        *,
        kubeconfig: str,
        embedder: Embedder | None = None,
        list_tools: ListToolsCounter | None = None,
        endpoint: bool = False,
    ) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.embedder = embedder
        self.list_tools = list_tools
        #: Also serve the MCP endpoint in the operator's loop, wired to it as ``mcp-optimizer run``
        #: wires them (failed forwarded calls reach the operator); its URL once started.
        self.with_endpoint = endpoint
        self.endpoint_url: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> OperatorThread:
        name = f"operator-{self.settings.db_path.stem}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"the operator exited during start: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator was not ready within {timeout}s")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()/stop()
            self.error = exc
            log.exception("operator crashed")

    async def _main(self) -> None:
        relay = CallFailureRelay() if self.with_endpoint else None
        endpoint: asyncio.Task[None] | None = None
        stop_endpoint = asyncio.Event()
        engine = None
        if relay is not None:
            assert self.embedder is not None
            engine = create_engine(self.settings.db_path)
            search = ToolSearch(engine, self.embedder)
            settings = replace(self.settings, mcp_host="127.0.0.1", mcp_port=0)

            def ready(served: McpEndpoint) -> None:
                self.endpoint_url = served.url

            # Before kopf starts, as in `mcp-optimizer run`: kopf adopts tasks created later.
            endpoint = asyncio.create_task(
                serve(settings, search, stop=stop_endpoint, call_failures=relay, ready=ready)
            )
        try:
            await run_operator(
                self.settings,
                kubeconfig=self.kubeconfig,
                embedder=self.embedder,
                list_tools=self.list_tools,
                call_failures=relay,
                stop_flag=self._stop,
                ready_flag=self._ready,
            )
        finally:
            stop_endpoint.set()
            if endpoint is not None:
                await endpoint
            if engine is not None:
                await engine.dispose()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        if alive:
            raise TimeoutError(f"the operator did not stop within {timeout}s")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


@dataclass
class OperatorFactory:
    """``start_operator(namespaces=[...], **settings)``: start an operator; all stop at teardown."""

    base: Settings
    kubeconfig: str
    embedder: Embedder
    list_tools: ListToolsCounter
    started: list[OperatorThread]

    def __call__(
        self, namespaces: list[str] | tuple[str, ...] = (), *, endpoint: bool = False, **changes: Any
    ) -> OperatorThread:
        settings = replace(self.base, namespaces=tuple(namespaces), **changes)
        operator = OperatorThread(
            settings, kubeconfig=self.kubeconfig, embedder=self.embedder, list_tools=self.list_tools,
            endpoint=endpoint,
        )
        self.started.append(operator)
        return operator.start()

    def stop_all(self) -> None:
        for operator in reversed(self.started):
            operator.stop()


# ------------------------------------------------------------------------------------------ index


class IndexProbe:
    """Reads the operator's index file from the test's event loop."""

    def __init__(self, db_path: Path, embedder: Embedder) -> None:
        self.db_path = db_path
        self.embedder = embedder
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = create_engine(self.db_path)
        return self._engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    async def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        if not self.db_path.exists():
            return []
        async with self.engine.connect() as conn:
            try:
                result = await conn.execute(text(sql), params)
            except Exception as exc:  # the operator has not created the tables yet
                if "no such table" in str(exc):
                    return []
                raise
            return [dict(row._mapping) for row in result]

    async def workload(self, name: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM mcpservers_workload WHERE workload_name = :n", n=name)
        return rows[0] if rows else None

    async def workload_names(self) -> set[str]:
        return {r["workload_name"] for r in await self._rows("SELECT workload_name FROM mcpservers_workload")}

    async def status(self, name: str) -> str | None:
        row = await self.workload(name)
        return row["status"] if row else None

    async def tools(self, name: str) -> list[str]:
        rows = await self._rows(
            "SELECT t.name FROM tools_workload t JOIN mcpservers_workload s ON s.id = t.server_id "
            "WHERE s.workload_name = :n ORDER BY t.name",
            n=name,
        )
        return [r["name"] for r in rows]

    async def tool_updates(self, name: str) -> dict[str, str]:
        """tool name -> last_updated: unchanged tools keep their timestamp (not re-embedded)."""
        rows = await self._rows(
            "SELECT t.name, t.last_updated, t.embedding_hash FROM tools_workload t "
            "JOIN mcpservers_workload s ON s.id = t.server_id WHERE s.workload_name = :n",
            n=name,
        )
        return {r["name"]: f"{r['last_updated']}|{r['embedding_hash']}" for r in rows}

    async def catalogs(self) -> set[str]:
        return {r["catalog"] for r in await self._rows("SELECT DISTINCT catalog FROM mcpservers_registry")}

    async def registry_servers(self, catalog: str) -> list[str]:
        rows = await self._rows("SELECT name FROM mcpservers_registry WHERE catalog = :c ORDER BY name", c=catalog)
        return [r["name"] for r in rows]

    async def search(self, query: str, *, limit: int = 10, **kwargs: Any) -> list[ToolHit]:
        if not self.db_path.exists():
            return []
        return await ToolSearch(self.engine, self.embedder).find_tools(query, limit=limit, **kwargs)

    async def found(self, query: str, workload: str, tool: str | None = None, **kwargs: Any) -> bool:
        hits = await self.search(query, limit=20, **kwargs)
        return any(h.server == workload and (tool is None or h.tool == tool) for h in hits)


# ------------------------------------------------------------------------------------------ kube


class Kube:
    """What tests do to the cluster, as a user (admin) would."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.objects = client.CustomObjectsApi(api)

    # MCPServers -------------------------------------------------------------------------

    def create_server(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MCPServer", "metadata": {"name": name}, "spec": spec}
        created = self.objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return cast(dict[str, Any], created)

    def patch_server(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any], self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}, _content_type=MERGE_PATCH
        ))

    def annotate_server(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": annotations}},
            _content_type=MERGE_PATCH,
        )

    def delete_server(self, namespace: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def server(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return cast(dict[str, Any], found)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def server_status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.server(namespace, name) or {}).get("status") or {}

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        for cond in self.server_status(namespace, name).get("conditions") or ():
            if cond["type"] == type_:
                return cond  # type: ignore[no-any-return]
        return {}

    # Catalogs ---------------------------------------------------------------------------

    def put_catalog(
        self,
        namespace: str,
        name: str,
        catalog: dict[str, Any] | str,
        *,
        labelled: bool = True,
    ) -> None:
        """Create or replace a catalog ConfigMap."""
        data = catalog if isinstance(catalog, str) else json.dumps(catalog)
        labels = {CATALOG_LABEL: "true"} if labelled else {}
        body: Any = {"metadata": {"name": name, "labels": labels}, "data": {CATALOG_KEY: data}}
        try:
            self.core.create_namespaced_config_map(namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_config_map(name, namespace, body)

    def delete_configmap(self, namespace: str, name: str) -> None:
        self.core.delete_namespaced_config_map(name, namespace)

    # Pods -------------------------------------------------------------------------------

    def create_pod(self, namespace: str, name: str, instance: str, labels: dict[str, str] | None = None) -> None:
        self.core.create_namespaced_pod(
            namespace,
            cast(Any, {
                "metadata": {"name": name, "labels": {INSTANCE_LABEL: instance, **(labels or {})}},
                "spec": {"containers": [{"name": "mcp", "image": "example/mcp:1"}]},
            }),
        )

    def delete_pod(self, namespace: str, name: str) -> None:
        # No kubelet: an unscheduled pod is removed at once; grace 0 makes that explicit.
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    # Events -----------------------------------------------------------------------------

    def events(self, namespace: str, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of Events about object ``name`` in ``namespace``."""
        events = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        return [(e.type or "", e.reason or "", e.message or "") for e in events.items]

    def has_event(self, namespace: str, name: str, reason: str, type_: str | None = None) -> bool:
        return any(r == reason and (type_ is None or t == type_) for t, r, _ in self.events(namespace, name))

    # Cleanup ----------------------------------------------------------------------------

    def fresh_namespace(self, prefix: str) -> str:
        """A new namespace of a name no other test uses (``prefix-<8 hex digits>``)."""
        name = unique(prefix)
        self.core.create_namespace(cast(Any, {"metadata": {"name": name}}))
        return name

    def empty_namespace(self, namespace: str) -> None:
        """Remove MCPServers (finalizers stripped), catalogs and pods left in a test namespace.

        A bare API server has no namespace controller, so nothing else would ever remove them.
        """
        try:
            listing = self.objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            servers = cast(dict[str, Any], listing)["items"]
        except client.ApiException:
            servers = []
        for item in servers:
            name = item["metadata"]["name"]
            try:
                self.objects.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": None}},
                    _content_type=MERGE_PATCH,
                )
                self.objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        self.core.delete_collection_namespaced_config_map(namespace, label_selector=CATALOG_LABEL)
        self.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


# ------------------------------------------------------------------------------------------ catalogs


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET on loopback; (0, "") while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def legacy_catalog(
    servers: dict[str, dict[str, Any]] | None = None,
    remote_servers: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A legacy-format catalog: ``servers`` by image, ``remote_servers`` by url."""
    doc: dict[str, Any] = {}
    if servers is not None:
        doc["servers"] = servers
    if remote_servers is not None:
        doc["remote_servers"] = remote_servers
    return doc


def unique(prefix: str) -> str:
    """A name no other test uses (images and URLs must not meet another test's catalogs)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def k8s_name(text_: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text_.lower()).strip("-")[:50]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def mcpserver_crd(kube_api: client.ApiClient) -> str:
    """Install (or update) the MCPServer CRD from ``crds/`` and wait until it is served."""
    ext = client.ApiextensionsV1Api(kube_api)
    name = apply_crd(ext, yaml.safe_load(CRD_FILE.read_text()))
    objects = client.CustomObjectsApi(kube_api)
    deadline = time.monotonic() + 30
    while True:
        crd = ext.read_custom_resource_definition(name)
        conditions = crd.status.conditions if crd.status is not None else None
        established = any(c.type == "Established" and c.status == "True" for c in conditions or ())
        if established:
            try:
                objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
                return str(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not served within 30s")
        time.sleep(0.1)


@pytest.fixture
def kube(kube_api: client.ApiClient) -> Kube:
    return Kube(kube_api)


@pytest.fixture
def ns(namespace: str, kube: Kube, mcpserver_crd: str) -> Iterator[str]:
    """A fresh namespace, emptied at teardown (after the operator stopped)."""
    yield namespace
    kube.empty_namespace(namespace)


@pytest.fixture
def op_settings(tmp_path: Path, settings: Settings) -> Settings:
    """Operator settings for tests: a fresh index, short timeouts, a slow resync and remote probe
    (tests drive them), and loopback admitted: the test MCP servers run there."""
    return replace(
        settings,
        db_path=tmp_path / "index.db",
        mcp_timeout=3.0,
        resync_interval=3600.0,
        remote_probe_interval=3600.0,
        allowed_destinations=LOOPBACK,
    )


@pytest.fixture
def start_operator(op_settings: Settings, kubeconfig: str, embedder: Embedder) -> Iterator[OperatorFactory]:
    factory = OperatorFactory(op_settings, kubeconfig, embedder, ListToolsCounter(), [])
    yield factory
    factory.stop_all()


@pytest.fixture
async def probe(op_settings: Settings, embedder: Embedder) -> Any:
    index = IndexProbe(op_settings.db_path, embedder)
    yield index
    await index.close()
