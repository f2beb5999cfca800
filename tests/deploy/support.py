"""Helpers for the deploy tests: Helm (through .venv-helm), kubectl, and manifest parsing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "mcp-optimizer"
MANIFESTS = REPO / "deploy" / "manifests"
HELM_VENV = Path(os.environ.get("HELM_VENV", REPO / ".venv-helm"))
HELM_PYTHON = HELM_VENV / "bin" / "python"
HELM_TOOL = Path(__file__).resolve().parent / "helm_tool.py"

#: Where the operator's ServiceAccount lives (the control plane's operator token is this user).
OPERATOR_NAMESPACE = "mcp-optimizer-system"
OPERATOR_SA = "mcp-optimizer"
#: The release name whose full name is "mcp-optimizer", so the chart's ServiceAccount is the
#: control plane's operator user.
OPERATOR_RELEASE = "mcp-optimizer"


class HelmError(AssertionError):
    """A Helm action failed (its message is Helm's)."""


class Helm:
    """Helm actions through tests/deploy/helm_tool.py, run with .venv-helm's Python."""

    def __init__(self, kubeconfig: str | None) -> None:
        self.kubeconfig = kubeconfig

    @staticmethod
    def require() -> None:
        if not HELM_PYTHON.exists():
            pytest.fail(
                f"{HELM_PYTHON} not found: run scripts/install-helm-venv (helm-sdkpy needs Python >= 3.12)",
                pytrace=False,
            )

    def _run(self, *args: str, timeout: float = 180) -> dict[str, Any]:
        self.require()
        res = subprocess.run(
            [str(HELM_PYTHON), str(HELM_TOOL), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        try:
            out: dict[str, Any] = json.loads(res.stdout)
        except json.JSONDecodeError as exc:
            raise HelmError(
                f"helm_tool {args[0]} crashed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
            ) from exc
        if res.returncode != 0 or "error" in out:
            raise HelmError(f"helm {args[0]} failed: {out.get('error')}")
        return out

    def lint(self, chart: Path = CHART) -> dict[str, Any]:
        return self._run("lint", str(chart))

    def _target(self, namespace: str, release: str) -> list[str]:
        assert self.kubeconfig is not None
        return ["--kubeconfig", self.kubeconfig, "--namespace", namespace, "--release", release]

    def install(
        self, release: str, namespace: str, values: dict[str, Any] | None = None, *, chart: Path = CHART
    ) -> dict[str, Any]:
        args = ["install", *self._target(namespace, release), "--chart", str(chart)]
        if values:
            args += ["--values", json.dumps(values)]
        return self._run(*args)

    def uninstall(self, release: str, namespace: str) -> dict[str, Any]:
        return self._run("uninstall", *self._target(namespace, release))

    def status(self, release: str, namespace: str) -> dict[str, Any]:
        return self._run("status", *self._target(namespace, release))

    @contextmanager
    def installed(self, release: str, namespace: str, values: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Install for the duration of a ``with`` block; uninstall after (even on failure)."""
        result = self.install(release, namespace, values)
        try:
            yield result
        finally:
            self.uninstall(release, namespace)


def kubectl_binary() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found: run scripts/install-control-plane", pytrace=False)
    return path


def kubectl(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [kubectl_binary(), "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def objects(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def key(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = doc.get("metadata") or {}
    return (doc.get("apiVersion", ""), doc.get("kind", ""), meta.get("namespace") or "", meta.get("name", ""))


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment (valueFrom entries map to "<from>"; the API server
    drops empty values)."""
    return {
        e["name"]: "<from>" if "valueFrom" in e else e.get("value", "") for e in container(deployment).get("env") or ()
    }
