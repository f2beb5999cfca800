"""Registry catalogs as ConfigMaps: create, edit, malformed, delete, duplicates, pins, renames."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kubernetes.client import ApiClient

from mcp_optimizer.catalog import CatalogEntry
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.operator.catalogs import CATALOG_LABEL
from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.k8s.harness import IndexProbe, Kube, OperatorFactory, column_is, equals, eventually, legacy_catalog, unique
from tests.k8s.kubelet import set_pod_status

pytestmark = pytest.mark.kube

TOOLS = [
    make_tool("search_issues", "Search issues and pull requests in a code tracker"),
    make_tool("create_issue", "Open a new issue in a repository"),
]
QUERY = "search pull requests"


def remote_entry(url: str, description: str = "Issue tracker: search and file issues") -> dict[str, Any]:
    return {"url": url, "description": description, "tools": ["search_issues", "create_issue"]}


async def test_catalog_create_edit_malformed_delete(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(TOOLS) as server:
        kube.create_server(ns, "tracker", {"url": server.url})
        start_operator([ns], catalog_namespaces=(ns,))
        wl = workload_name(ns, "tracker")
        catalog = f"{ns}/registry"

        # No catalog yet: the workload is indexed on its own.
        await eventually(lambda: probe.found(QUERY, wl))
        await eventually(lambda: kube.condition(ns, "tracker", "RegistryMatched").get("reason") == "NotInRegistry")

        # A catalog appears with a matching entry: the workload links to it (S3.4).
        kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={"tracker-pro": remote_entry(server.url)}))
        await eventually(lambda: kube.server_status(ns, "tracker").get("registryServer")
                         == {"name": "tracker-pro", "catalog": catalog})
        assert kube.condition(ns, "tracker", "RegistryMatched")["reason"] == "Linked"
        row = await probe.workload(wl)
        assert row is not None
        assert (row["registry_server_name"], row["registry_catalog"]) == ("tracker-pro", catalog)
        assert row["description"] == "Issue tracker: search and file issues"  # inherited (S2.1)
        await eventually(lambda: kube.has_event(ns, "tracker", "RegistryLinked", "Normal"))
        await eventually(lambda: kube.has_event(ns, "registry", "CatalogLoaded", "Normal"))

        # Edit: another entry is added; the link stays.
        other = unique("https://other.example.com/mcp")
        kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={
            "tracker-pro": remote_entry(server.url),
            "other": remote_entry(other, "Something else"),
        }))
        await eventually(lambda: equals(probe.registry_servers(catalog), ["other", "tracker-pro"]))

        # Malformed: the previous catalog is kept and a Warning Event explains why.
        kube.put_catalog(ns, "registry", '{"remote_servers": {"tracker-pro": ')
        await eventually(lambda: kube.has_event(ns, "registry", "CatalogInvalid", "Warning"))
        assert await probe.registry_servers(catalog) == ["other", "tracker-pro"]
        assert (await probe.workload(wl) or {})["registry_server_name"] == "tracker-pro"
        message = next(m for t, r, m in kube.events(ns, "registry") if r == "CatalogInvalid")
        assert "invalid JSON" in message and "kept" in message

        # Deleted: the catalog's servers go and the workload falls back to its own description (S3.3).
        kube.delete_configmap(ns, "registry")
        await eventually(lambda: equals(probe.catalogs(), set()))
        await eventually(lambda: "registryServer" not in kube.server_status(ns, "tracker"))
        row = await probe.workload(wl)
        assert row is not None and row["registry_server_name"] is None
        assert row["description"] != "Issue tracker: search and file issues"
        assert await probe.found(QUERY, wl)
        await eventually(lambda: kube.has_event(ns, "tracker", "RegistryUnlinked", "Normal"))


async def test_label_removal_deletes_the_catalog_and_unlabelled_configmaps_are_ignored(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    url = unique("https://tracker.example.com/mcp")
    kube.put_catalog(ns, "not-a-catalog", legacy_catalog(remote_servers={"x": remote_entry(url)}), labelled=False)
    kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={"tracker": remote_entry(url)}))
    start_operator([ns], catalog_namespaces=(ns,))
    await eventually(lambda: equals(probe.catalogs(), {f"{ns}/registry"}))

    kube.core.patch_namespaced_config_map("registry", ns, {"metadata": {"labels": {CATALOG_LABEL: None}}})
    await eventually(lambda: equals(probe.catalogs(), set()))

    # Labelled again: loaded again.
    kube.core.patch_namespaced_config_map("registry", ns, {"metadata": {"labels": {CATALOG_LABEL: "true"}}})
    await eventually(lambda: equals(probe.catalogs(), {f"{ns}/registry"}))


async def test_duplicates_across_catalogs_then_a_pin(
    ns: str, kube: Kube, kube_api: ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    image = f"ghcr.io/acme/{unique('tracker')}"
    entry = {"image": f"{image}:1.0", "description": "Issue tracker", "tools": ["search_issues"]}
    with McpTestServer(TOOLS) as server:
        kube.put_catalog(ns, "team-catalog", legacy_catalog(servers={"tracker": entry}))
        kube.put_catalog(ns, "vendor-catalog", legacy_catalog(servers={"tracker-official": entry}))
        kube.create_server(ns, "tracker", {"image": f"{image}:2.0", "endpoint": server.url})
        kube.create_pod(ns, "tracker-0", instance="tracker")
        set_pod_status(kube_api, ns, "tracker-0", "Running")
        start_operator([ns], catalog_namespaces=(ns,))
        wl = workload_name(ns, "tracker")

        # Two entries match the image (any tag): ERROR, a Warning Event, not searchable (S2.5).
        await eventually(lambda: kube.condition(ns, "tracker", "RegistryMatched").get("reason")
                         == "DuplicateRegistryEntries")
        assert kube.server_status(ns, "tracker")["phase"] == "Error"
        message = kube.condition(ns, "tracker", "RegistryMatched")["message"]
        assert f"{ns}/team-catalog/tracker" in message and f"{ns}/vendor-catalog/tracker-official" in message
        await eventually(lambda: kube.has_event(ns, "tracker", "DuplicateRegistryEntries", "Warning"))
        assert await probe.status(wl) == "ERROR"
        assert not await probe.found(QUERY, wl)

        # A pod phase change does not hide the index error.
        set_pod_status(kube_api, ns, "tracker-0", "Running", ready=False, waiting_reason="CrashLoopBackOff")
        set_pod_status(kube_api, ns, "tracker-0", "Running")
        await eventually(lambda: column_is(probe.workload(wl), "runtime_status", "RUNNING"))
        assert await probe.status(wl) == "ERROR"

        # Pinning one entry resolves it.
        kube.patch_server(ns, "tracker", {"registryRef": {"catalog": f"{ns}/vendor-catalog",
                                                          "name": "tracker-official"}})
        await eventually(lambda: kube.server_status(ns, "tracker").get("phase") == "Running")
        assert kube.server_status(ns, "tracker")["registryServer"] == {
            "name": "tracker-official", "catalog": f"{ns}/vendor-catalog"}
        assert await probe.status(wl) == "RUNNING"
        await eventually(lambda: probe.found(QUERY, wl))

        # Unpinned again, then one duplicate removed from its catalog: the catalog change re-matches.
        kube.patch_server(ns, "tracker", {"registryRef": None})
        await eventually(lambda: kube.server_status(ns, "tracker").get("phase") == "Error")
        kube.put_catalog(ns, "vendor-catalog", legacy_catalog(servers={}))
        await eventually(lambda: kube.server_status(ns, "tracker").get("registryServer")
                         == {"name": "tracker", "catalog": f"{ns}/team-catalog"})
        assert kube.server_status(ns, "tracker")["phase"] == "Running"
        assert await probe.status(wl) == "RUNNING"


async def test_pin_to_a_missing_entry_links_once_it_appears(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(TOOLS) as server:
        kube.create_server(ns, "tracker", {"url": server.url,
                                           "registryRef": {"catalog": f"{ns}/later", "name": "tracker"}})
        start_operator([ns], catalog_namespaces=(ns,))
        await eventually(lambda: kube.condition(ns, "tracker", "RegistryMatched").get("reason")
                         == "RegistryRefNotFound")
        await eventually(lambda: kube.has_event(ns, "tracker", "RegistryRefNotFound", "Warning"))
        # The pin beats matching: an entry with another URL is linked because it is named.
        kube.put_catalog(ns, "later", legacy_catalog(
            remote_servers={"tracker": remote_entry(unique("https://elsewhere.example.com/mcp"))}))
        await eventually(lambda: kube.condition(ns, "tracker", "RegistryMatched").get("reason") == "Linked")


async def test_linked_and_autonomous_workloads_and_a_rename(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    notes_tools = [make_tool("write_note", "Write a note to the notebook"),
                   make_tool("read_note", "Read a note from the notebook")]
    with McpTestServer(TOOLS) as tracker, McpTestServer(notes_tools) as notes:
        kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={"tracker": remote_entry(tracker.url)}))
        kube.create_server(ns, "tracker", {"url": tracker.url})
        kube.create_server(ns, "notes", {"url": notes.url})
        start_operator([ns], catalog_namespaces=(ns,))
        linked, autonomous = workload_name(ns, "tracker"), workload_name(ns, "notes")

        await eventually(lambda: probe.found(QUERY, linked))
        await eventually(lambda: probe.found("write a note", autonomous))
        linked_row = await probe.workload(linked)
        own_row = await probe.workload(autonomous)
        assert linked_row is not None and own_row is not None
        assert linked_row["embedding_context"] == "tracker"
        assert linked_row["registry_server_name"] == "tracker"
        assert own_row["registry_server_name"] is None
        assert own_row["embedding_context"] == "notes"  # its own name (S2.3)
        await eventually(lambda: kube.condition(ns, "notes", "RegistryMatched").get("reason") == "NotInRegistry")
        before = await probe.tool_updates(linked)

        # Rename the registry entry (same URL): linked tools re-embed with the new name (S3.6).
        kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={"issue-tracker": remote_entry(tracker.url)}))
        await eventually(lambda: column_is(probe.workload(linked), "embedding_context", "issue-tracker"))
        await eventually(lambda: (kube.server_status(ns, "tracker").get("registryServer") or {}).get("name")
                         == "issue-tracker")
        after = await probe.tool_updates(linked)
        assert set(after) == set(before)
        assert all(after[name] != before[name] for name in before), "tools were not re-embedded"
        assert await probe.found(QUERY, linked)
        # The autonomous workload is untouched.
        assert (await probe.workload(autonomous) or {})["last_updated"] == own_row["last_updated"]


async def test_catalogs_are_read_only_from_trusted_namespaces(
    kube: Kube,
    kube_api: ApiClient,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    caplog: pytest.LogCaptureFixture,
    mcpserver_crd: str,
) -> None:
    """A tenant's labelled ConfigMap listing another team's image cannot hijack or break that
    team's workload: only the trusted namespace's catalogs count, even with MCPServers watched
    cluster-wide; a catalog an earlier version loaded from elsewhere is removed at start."""
    platform, team, tenant = (kube.fresh_namespace(prefix) for prefix in ("platform", "team", "tenant"))
    image = f"ghcr.io/acme/{unique('tracker')}"
    try:
        with McpTestServer(TOOLS) as server:
            # An index left by an operator that read every namespace holds the tenant's catalog.
            indexer = await Indexer.open(start_operator.base, start_operator.embedder)
            try:
                await indexer.load_catalog(
                    f"{tenant}/stale", [CatalogEntry(name="stale", remote=False, package=f"{image}:9")]
                )
            finally:
                await indexer.close()
            official = {"image": f"{image}:1.0", "description": "Issue tracker", "tools": ["search_issues"]}
            kube.put_catalog(platform, "registry", legacy_catalog(servers={"tracker": official}))
            hostile = {"image": f"{image}:1.0", "description": "Pwned tracker", "tools": ["search_issues"]}
            kube.put_catalog(tenant, "evil", legacy_catalog(servers={"tracker-evil": hostile}))
            kube.create_server(team, "tracker", {"image": f"{image}:2.0", "endpoint": server.url})
            kube.create_pod(team, "tracker-0", instance="tracker")
            set_pod_status(kube_api, team, "tracker-0", "Running")
            with caplog.at_level(logging.INFO, logger="mcp_optimizer"):
                start_operator(catalog_namespaces=(platform,))  # MCPServers: every namespace
                wl = workload_name(team, "tracker")
                await eventually(lambda: kube.server_status(team, "tracker").get("registryServer")
                                 == {"name": "tracker", "catalog": f"{platform}/registry"})
                assert kube.server_status(team, "tracker")["phase"] == "Running"
                await eventually(lambda: probe.found(QUERY, wl))

                # The tenant edits its ConfigMap; a later change in the trusted namespace is seen,
                # the tenant's never.
                kube.put_catalog(tenant, "evil", legacy_catalog(servers={"tracker-evil": hostile, "x": hostile}))
                kube.put_catalog(platform, "registry", legacy_catalog(servers={
                    "tracker": official, "other": {"image": "ghcr.io/acme/other:1", "description": "Other"}}))
                await eventually(lambda: equals(probe.registry_servers(f"{platform}/registry"), ["other", "tracker"]))
                assert await probe.catalogs() == {f"{platform}/registry"}
                row = await probe.workload(wl)
                assert row is not None and row["status"] == "RUNNING"
                assert row["registry_catalog"] == f"{platform}/registry"
                assert kube.events(tenant, "evil") == []  # ignored quietly: no Event spam
            untrusted = [r.getMessage() for r in caplog.records if "not a trusted catalog namespace" in r.getMessage()]
            assert untrusted == [f"Removing catalog {tenant}/stale: its namespace is not a trusted catalog namespace"]
    finally:
        start_operator.stop_all()
        for space in (platform, team, tenant):
            kube.empty_namespace(space)
            kube.core.delete_namespace(space)


