"""Play the kubelet against a bare kube-apiserver.

The test control plane has no kubelet, scheduler or controllers: pods created
through the API stay ``Pending`` forever. Tests that need a pod in a given
state write its ``/status`` subresource themselves with these helpers.
"""

from __future__ import annotations

import datetime
from typing import Any

from kubernetes import client

MERGE_PATCH = "application/merge-patch+json"


def _core(api: client.ApiClient | client.CoreV1Api) -> client.CoreV1Api:
    return api if isinstance(api, client.CoreV1Api) else client.CoreV1Api(api)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_status_body(
    container_names: list[str],
    phase: str,
    ready: bool = True,
    waiting_reason: str | None = None,
    restart_count: int = 0,
    pod_ip: str | None = None,
) -> dict[str, Any]:
    """Build a pod ``status`` like the kubelet would report it.

    ``ready`` only takes effect for a running pod whose containers are not
    waiting; ``waiting_reason`` (e.g. ``CrashLoopBackOff``, ``ImagePullBackOff``)
    puts every container in ``state.waiting`` with that reason.
    """
    now = _now()
    started = phase == "Running" and waiting_reason is None
    is_ready = bool(ready and started)
    terminated = phase in ("Succeeded", "Failed")

    statuses = []
    for name in container_names:
        if waiting_reason is not None:
            state: dict[str, dict[str, Any]] = {
                "waiting": {"reason": waiting_reason, "message": f"simulated {waiting_reason}"}
            }
        elif terminated:
            code = 0 if phase == "Succeeded" else 1
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": now, "finishedAt": now}}
        elif phase == "Running":
            state = {"running": {"startedAt": now}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        statuses.append({
            "name": name,
            "ready": is_ready,
            "started": started,
            "restartCount": restart_count,
            "image": "simulated",
            "imageID": "",
            "state": state,
        })

    def cond(type_: str, ok: bool) -> dict[str, Any]:
        c = {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": now}
        if not ok and type_ in ("Ready", "ContainersReady"):
            c["reason"] = "ContainersNotReady"
        return c

    scheduled = phase != "Pending" or waiting_reason is not None
    body = {
        "phase": phase,
        "conditions": [
            cond("PodScheduled", True),
            cond("Initialized", scheduled),
            cond("ContainersReady", is_ready),
            cond("Ready", is_ready),
        ],
        "containerStatuses": statuses,
        "startTime": now,
    }
    if pod_ip:
        body["podIP"] = pod_ip
        body["podIPs"] = [{"ip": pod_ip}]
    return {"status": body}


def set_pod_status(
    api: client.ApiClient | client.CoreV1Api,
    namespace: str,
    name: str,
    phase: str,
    ready: bool = True,
    waiting_reason: str | None = None,
    restart_count: int = 0,
    pod_ip: str | None = None,
) -> client.V1Pod:
    """Patch pod ``namespace/name``'s status subresource; return the updated pod.

    Examples::

        set_pod_status(api, ns, "web-0", "Running")                      # Running, Ready
        set_pod_status(api, ns, "web-0", "Running", ready=False)         # Running, not Ready
        set_pod_status(api, ns, "web-0", "Running", ready=False,
                       waiting_reason="CrashLoopBackOff", restart_count=5)
    """
    core = _core(api)
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.spec is not None, f"pod {namespace}/{name} has no spec"
    names = [c.name for c in pod.spec.containers]
    body = pod_status_body(names, phase, ready=ready, waiting_reason=waiting_reason,
                           restart_count=restart_count, pod_ip=pod_ip)
    # Merge patch replaces the conditions/containerStatuses lists as a whole.
    return core.patch_namespaced_pod_status(name, namespace, body, _content_type=MERGE_PATCH)
