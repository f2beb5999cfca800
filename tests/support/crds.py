"""CustomResourceDefinitions on the test control plane: created, or replaced where they exist."""

from __future__ import annotations

from typing import Any

from kubernetes import client


def apply_crd(ext: client.ApiextensionsV1Api, body: dict[str, Any]) -> str:
    """Create the CRD ``body``, or replace the one of its name (an earlier run's, or an older
    version's) with it; its name."""
    name = str(body["metadata"]["name"])
    try:
        ext.create_custom_resource_definition(body)  # type: ignore[arg-type]
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        assert current.metadata is not None
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)  # type: ignore[arg-type]
    return name
