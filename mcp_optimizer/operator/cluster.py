"""Access to the API server outside kopf's watches: credentials and full listings.

kopf authenticates through login handlers; :func:`connection_info` is ours, built from the same
kubeconfig (or in-cluster config) the kubernetes client uses for status writes, so both talk to
the same cluster as the same user. :class:`ClusterLister` lists what exists now, for the
garbage collector (kopf's indices are not complete until its first listing finishes): MCPServers
in the watched namespaces, catalog ConfigMaps in the trusted catalog namespaces only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config

from mcp_optimizer.operator.catalogs import CATALOG_LABEL, catalog_name
from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION, workload_name

logger = logging.getLogger(__name__)

_PAGE = 500


def load_client_config(kubeconfig: str | None) -> client.Configuration:
    """The kubernetes client configuration: ``kubeconfig`` if given, else in-cluster, else default."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


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


class ClusterLister:
    """Lists MCPServers in the watched namespaces (all when empty) and catalog ConfigMaps in the
    trusted catalog namespaces."""

    def __init__(
        self, api_client: client.ApiClient, namespaces: Sequence[str], catalog_namespaces: Sequence[str]
    ) -> None:
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._namespaces = tuple(namespaces)
        self._catalog_namespaces = tuple(catalog_namespaces)

    async def workload_names(self) -> set[str]:
        """``namespace/name`` of every MCPServer (including those being deleted)."""
        items = await asyncio.to_thread(self._list_servers)
        return {workload_name(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}

    async def catalogs(self) -> CatalogListing:
        """Every labelled ConfigMap of the trusted namespaces, by catalog name."""
        return await asyncio.to_thread(self._list_catalogs)

    def _list_servers(self) -> list[dict[str, Any]]:
        try:
            if not self._namespaces:
                return _paged(lambda **kw: self._objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw))
            items = []
            for ns in self._namespaces:
                items += _paged(
                    lambda ns=ns, **kw: self._objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kw)
                )
            return items
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
