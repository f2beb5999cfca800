"""Access to the API server outside kopf's watches: credentials and full listings.

kopf authenticates through login handlers; :func:`connection_info` is ours, built from the same
kubeconfig (or in-cluster config) the kubernetes client uses for status writes, so both talk to
the same cluster as the same user. :class:`ClusterLister` lists what exists now, for the
garbage collector (kopf's indices are not complete until its first listing finishes): MCPServers
in the watched namespaces, catalog ConfigMaps in the trusted catalog namespaces only; and finds
which of ToolHive's resources the operator can watch (:meth:`ClusterLister.discover_toolhive`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client

from mcp_optimizer.operator.catalogs import CATALOG_LABEL, catalog_name
from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION, workload_name
from mcp_optimizer.operator.toolhive_mapping import (
    PLURALS,
    SERVER_KINDS,
    TOOL_CONFIG,
    TOOLHIVE_GROUP,
    ToolHiveOptions,
    belongs_in_index,
    parse_toolhive,
)

logger = logging.getLogger(__name__)

_PAGE = 500


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from a kubernetes client configuration (as kopf's own piggybacking does)."""
    # Newer clients keep the token under BearerToken, older ones under authorization.
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


@dataclass
class CatalogListing:
    """The catalog ConfigMaps of the trusted namespaces, and the namespaces that could not be
    listed (their catalogs are neither loaded nor removed: nothing is known about them)."""

    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ToolHiveAPI:
    """Which of ToolHive's resources one run of kopf watches (found by :meth:`ClusterLister.discover_toolhive`)."""

    #: The served version watched (ToolHive's preferred one); None when ToolHive's API is not served.
    version: str | None = None
    #: Plurals watched: server kinds, and mcptoolconfigs beside them.
    plurals: frozenset[str] = frozenset()
    #: Why a resource the operator would use is not watched, for the log; empty when all are.
    missing: str = ""

    @property
    def server_kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in SERVER_KINDS if PLURALS[kind] in self.plurals)

    @property
    def watch_key(self) -> tuple[str | None, frozenset[str]]:
        """What kopf's watches depend on (the version only matters when something is watched)."""
        return (self.version if self.plurals else None, self.plurals)

    @property
    def tool_configs(self) -> bool:
        return PLURALS[TOOL_CONFIG] in self.plurals

    def describe(self) -> str:
        """One line for the log."""
        if not self.server_kinds:
            return f"ToolHive resources are not watched: {self.missing}"
        watched = ", ".join(sorted(self.plurals))
        rest = f"; not watched: {self.missing}" if self.missing else ""
        return f"Watching ToolHive's {watched} ({TOOLHIVE_GROUP}/{self.version}, read-only){rest}"


class ClusterLister:
    """Lists MCPServers and ToolHive's servers in the watched namespaces (all when empty) and
    catalog ConfigMaps in the trusted catalog namespaces."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespaces: Sequence[str],
        catalog_namespaces: Sequence[str],
        toolhive_options: ToolHiveOptions | None = None,
    ) -> None:
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._apis = client.ApisApi(api_client)
        self._namespaces = tuple(namespaces)
        self._catalog_namespaces = tuple(catalog_namespaces)
        self.toolhive_options = toolhive_options or ToolHiveOptions()
        #: ToolHive's resources watched by the current run of kopf (their objects are listed too).
        self.toolhive = ToolHiveAPI()

    async def workload_names(self) -> set[str]:
        """``namespace/name`` of every MCPServer (including those being deleted), and the workload
        names of ToolHive's watched objects that belong in the index."""
        items = await asyncio.to_thread(self._list_servers)
        names = {workload_name(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}
        return names | await asyncio.to_thread(self._toolhive_names, self.toolhive)

    async def discover_toolhive(self, known: Collection[str] = ()) -> ToolHiveAPI:
        """Which of ToolHive's resources can be watched now: served, and listable in every watched
        namespace (kopf would wait forever for the first listing of one it may not list, and hold
        back every other handler meanwhile). ``known``: plurals watched already, not probed again.
        """
        return await asyncio.to_thread(self._discover_toolhive, frozenset(known))

    def _discover_toolhive(self, known: frozenset[str]) -> ToolHiveAPI:
        groups = self._apis.get_api_versions().groups or []
        group = next((g for g in groups if g.name == TOOLHIVE_GROUP), None)
        if group is None or group.preferred_version is None:
            return ToolHiveAPI(missing=f"the {TOOLHIVE_GROUP} API is not served (ToolHive's CRDs are not installed)")
        version = group.preferred_version.version
        try:
            served = {r.name for r in self._objects.get_api_resources(TOOLHIVE_GROUP, version).resources}
        except client.ApiException as exc:
            if exc.status == 404:  # removed between the two requests
                return ToolHiveAPI(missing=f"the {TOOLHIVE_GROUP} API is not served")
            raise
        wanted = [PLURALS[kind] for kind in self.toolhive_options.server_kinds] + [PLURALS[TOOL_CONFIG]]
        usable: set[str] = set()
        missing: list[str] = []
        for plural in wanted:
            if plural not in served:
                missing.append(f"{plural} (not served)")
            elif plural in known or self._may_list(version, plural):
                usable.add(plural)
            else:
                where = "cluster-wide" if not self._namespaces else "in every watched namespace"
                missing.append(f"{plural} (no permission to list {where})")
        if not any(PLURALS[kind] in usable for kind in SERVER_KINDS):
            usable.clear()  # tool configurations are only read for the servers that use them
        return ToolHiveAPI(version=version, plurals=frozenset(usable), missing=", ".join(missing))

    def _may_list(self, version: str, plural: str) -> bool:
        try:
            if not self._namespaces:
                self._objects.list_cluster_custom_object(TOOLHIVE_GROUP, version, plural, limit=1)
            for ns in self._namespaces:
                self._objects.list_namespaced_custom_object(TOOLHIVE_GROUP, version, ns, plural, limit=1)
        except client.ApiException as exc:
            if exc.status in (401, 403, 404):
                return False
            raise
        return True

    def _toolhive_names(self, api: ToolHiveAPI) -> set[str]:
        names: set[str] = set()
        if api.version is None:
            return names
        for kind in api.server_kinds:
            plural = PLURALS[kind]
            try:
                items = self._list_custom(TOOLHIVE_GROUP, api.version, plural)
            except client.ApiException as exc:
                if exc.status == 404:
                    continue  # the CRD went away: none of its objects exist any more
                raise
            for item in items:
                view = parse_toolhive(item, kind=kind, version=api.version, options=self.toolhive_options)
                if belongs_in_index(view):
                    names.add(view.workload_name)
        return names

    def _list_custom(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        if not self._namespaces:
            return _paged(lambda **kw: self._objects.list_cluster_custom_object(group, version, plural, **kw))
        items = []
        for ns in self._namespaces:
            items += _paged(
                lambda ns=ns, **kw: self._objects.list_namespaced_custom_object(group, version, ns, plural, **kw)
            )
        return items

    async def catalogs(self) -> CatalogListing:
        """Every labelled ConfigMap of the trusted namespaces, by catalog name."""
        return await asyncio.to_thread(self._list_catalogs)

    def _list_servers(self) -> list[dict[str, Any]]:
        try:
            return self._list_custom(GROUP, VERSION, PLURAL)
        except client.ApiException as exc:
            if exc.status == 404:
                # No CRD means no MCPServers, hence no workloads: the index must say so too.
                logger.warning("The MCPServer CRD (%s.%s) is not installed", PLURAL, GROUP)
                return []
            raise

    def _list_catalogs(self) -> CatalogListing:
        selector = f"{CATALOG_LABEL}=true"
        sanitize = self._core.api_client.sanitize_for_serialization
        listing = CatalogListing()
        for ns in self._catalog_namespaces:
            try:
                items = _paged(
                    lambda ns=ns, **kw: self._core.list_namespaced_config_map(ns, label_selector=selector, **kw),
                    typed=True,
                )
            except client.ApiException as exc:
                # One namespace without a Role must not stop the others (nor the operator).
                logger.warning("Cannot list catalog ConfigMaps in namespace %s: %s %s", ns, exc.status, exc.reason)
                listing.unreadable.add(ns)
                continue
            for item in items:
                # List items carry no apiVersion/kind; Events about them need both.
                body = {"apiVersion": "v1", "kind": "ConfigMap", **sanitize(item)}
                listing.bodies[catalog_name(body["metadata"]["namespace"], body["metadata"]["name"])] = body
        return listing


def _paged(call: Callable[..., Any], *, typed: bool = False) -> list[Any]:
    """All items of a list call, following ``continue`` tokens."""
    items: list[Any] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": _PAGE}
        if token:
            kwargs["_continue"] = token
        page = call(**kwargs)
        if typed:
            items.extend(page.items or [])
            token = page.metadata._continue if page.metadata else None
        else:
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items
