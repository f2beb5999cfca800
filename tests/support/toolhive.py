"""ToolHive's real CRDs and example objects on a test control plane, and playing ToolHive's operator.

The files come unmodified from ``shared/data/toolhive-operator`` (see its README). ToolHive's CRDs
are written for Kubernetes >= 1.25; the test control plane runs kube-apiserver 1.20, which refuses
them for two reasons only: ``x-kubernetes-validations`` (CEL rules) and ``default: ""`` on nested
strings. :func:`crds_for_old_apiservers` drops exactly those two keys from the parsed schemas (the
files stay as they are); ToolHive's example objects then apply unchanged.

There is no ToolHive operator on the control plane: :func:`set_status` writes an object's
``status`` the way ToolHive's operator does (``phase``, ``url`` of its proxy, ...), which is all
an indexer reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from tests.support.crds import apply_crd
from tests.support.shared import shared_dir

GROUP = "toolhive.stacklok.dev"
VERSION = "v1beta1"
MERGE_PATCH = "application/merge-patch+json"
PLURALS = {
    "MCPServer": "mcpservers",
    "MCPRemoteProxy": "mcpremoteproxies",
    "MCPServerEntry": "mcpserverentries",
    "VirtualMCPServer": "virtualmcpservers",
    "MCPGroup": "mcpgroups",
    "MCPToolConfig": "mcptoolconfigs",
}


def toolhive_dir() -> Path:
    """``shared/data/toolhive-operator``: ToolHive's CRDs and examples."""
    return shared_dir() / "data" / "toolhive-operator"


def _strip(node: Any) -> Any:
    """The schema without CEL rules and empty-string defaults (unknown to kube-apiserver < 1.25)."""
    if isinstance(node, dict):
        return {
            key: _strip(value)
            for key, value in node.items()
            if key != "x-kubernetes-validations" and not (key == "default" and value == "")
        }
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node


def crds_for_old_apiservers() -> list[dict[str, Any]]:
    """ToolHive's six CRDs, parsed, with the two keys kube-apiserver 1.20 refuses dropped."""
    files = sorted((toolhive_dir() / "crds").glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no ToolHive CRDs under {toolhive_dir() / 'crds'}")
    return [_strip(yaml.safe_load(path.read_text())) for path in files]


def served_plurals(api: client.ApiClient) -> set[str]:
    """The ToolHive resources the API server serves now (discovery)."""
    try:
        resources = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION).resources
    except client.ApiException as exc:
        if exc.status in (404, 503):
            return set()
        raise
    return {r.name for r in resources if "/" not in r.name}


def install_crds(api: client.ApiClient, *, timeout: float = 60.0) -> None:
    """Create (or replace) ToolHive's CRDs and wait until every resource is served and listable."""
    ext = client.ApiextensionsV1Api(api)
    bodies = crds_for_old_apiservers()
    for body in bodies:
        apply_crd(ext, body)
    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    for body in bodies:
        plural = body["spec"]["names"]["plural"]
        while True:
            try:
                objects.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
                break
            except client.ApiException as exc:
                if exc.status not in (404, 503) or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
    while set(PLURALS.values()) - served_plurals(api):
        if time.monotonic() > deadline:
            raise TimeoutError("ToolHive's resources are not in discovery")
        time.sleep(0.1)


def remove_crds(api: client.ApiClient, *, timeout: float = 120.0) -> None:
    """Delete ToolHive's CRDs (and so every ToolHive object) and wait until discovery drops them."""
    ext = client.ApiextensionsV1Api(api)
    for body in crds_for_old_apiservers():
        try:
            ext.delete_custom_resource_definition(body["metadata"]["name"])
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    names = {body["metadata"]["name"] for body in crds_for_old_apiservers()}
    while names & {crd.metadata.name for crd in ext.list_custom_resource_definition().items if crd.metadata} or (
        served_plurals(api)
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("ToolHive's CRDs were not removed")
        time.sleep(0.2)


def example(name: str) -> list[dict[str, Any]]:
    """The objects of ``examples/<name>.yaml``, as ToolHive's users write them."""
    path = toolhive_dir() / "examples" / f"{name}.yaml"
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def apply(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Create one ToolHive object in ``namespace`` (the example's own namespace is the only field
    replaced: tests keep to their own namespaces)."""
    group, _, version = doc["apiVersion"].partition("/")
    if group != GROUP:
        raise ValueError(f"not a ToolHive object: {doc['apiVersion']}")
    body = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, namespace, PLURALS[doc["kind"]], body
    )
    return cast(dict[str, Any], created)


def get(api: client.ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[kind], name
        )
        return cast(dict[str, Any], found)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_spec(api: client.ApiClient, kind: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name, {"spec": spec}, _content_type=MERGE_PATCH
    )


def set_status(api: client.ApiClient, kind: str, namespace: str, name: str, **status: Any) -> None:
    """Write ``status`` fields as ToolHive's operator does (merge patch of the status subresource;
    a None value removes the field), e.g. ``set_status(api, "MCPServer", ns, "fetch",
    phase="Ready", url="http://127.0.0.1:8080/mcp")``."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURALS[kind], name, {"status": status}, _content_type=MERGE_PATCH
    )


def delete(api: client.ApiClient, kind: str, namespace: str, name: str) -> None:
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


def objects_in(api: client.ApiClient, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, body) of every ToolHive object in ``namespace`` (none when the CRDs are absent)."""
    served = served_plurals(api)
    for kind, plural in PLURALS.items():
        if plural not in served:
            continue
        items = cast(dict[str, Any], client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, plural
        ))
        for item in items.get("items") or ():
            yield kind, item


def empty_namespace(api: client.ApiClient, namespace: str) -> None:
    """Delete every ToolHive object in ``namespace``, finalizers (as ToolHive's operator would
    have released them) included: a bare API server has no namespace controller."""
    objects = client.CustomObjectsApi(api)
    for kind, item in list(objects_in(api, namespace)):
        name = item["metadata"]["name"]
        try:
            if item["metadata"].get("finalizers"):
                objects.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURALS[kind], name, {"metadata": {"finalizers": None}},
                    _content_type=MERGE_PATCH,
                )
            delete(api, kind, namespace, name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
