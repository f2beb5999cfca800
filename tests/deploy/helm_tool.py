"""Helm actions for the deploy tests and scripts/render-manifests, run with .venv-helm's Python.

helm-sdkpy (the Helm v4 Go library behind a Python API) needs Python >= 3.12, so it lives in its
own venv (scripts/install-helm-venv) and this script is its only user: the tests call it as a
subprocess and read one JSON document from its stdout. Standard library and helm_sdkpy only.

    helm_tool.py lint CHART
    helm_tool.py install --kubeconfig K --namespace NS --release R --chart CHART [--values JSON]
                         [--create-namespace]
    helm_tool.py uninstall --kubeconfig K --namespace NS --release R
    helm_tool.py status --kubeconfig K --namespace NS --release R

install prints {"name", "namespace", "version", "status", "notes", "manifest", "config"}: the
rendered manifest is what Helm applied, the chart's templates rendered with the values.
Errors print {"error": "...", "type": "..."} and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, cast

import helm_sdkpy
from helm_sdkpy import Configuration, Install, Lint, Status, Uninstall


def _release(result: dict[str, Any]) -> dict[str, Any]:
    info = result.get("info") or {}
    return {
        "name": result.get("name"),
        "namespace": result.get("namespace"),
        "version": result.get("version"),
        "status": info.get("status"),
        "notes": info.get("notes", ""),
        "manifest": result.get("manifest", ""),
        "config": result.get("config") or {},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "lint":
        config = Configuration(namespace="default")
        return cast(dict[str, Any], await Lint(config).run(args.chart))
    config = Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
    if args.command == "install":
        values = json.loads(args.values) if args.values else None
        result = await Install(config).run(
            args.release,
            args.chart,
            values=values,
            create_namespace=args.create_namespace,
            wait=False,
            timeout=120,
        )
        return _release(result)
    if args.command == "status":
        return _release(await Status(config).run(args.release))
    if args.command == "uninstall":
        result = await Uninstall(config).run(args.release, wait=False)
        release = (result or {}).get("release") or {}
        return {"uninstalled": args.release, "status": (release.get("info") or {}).get("status")}
    raise SystemExit(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    for name in ("install", "uninstall", "status"):
        p = sub.add_parser(name)
        p.add_argument("--kubeconfig", required=True)
        p.add_argument("--namespace", required=True)
        p.add_argument("--release", required=True)
        if name == "install":
            p.add_argument("--chart", required=True)
            p.add_argument("--values", default="")
            p.add_argument("--create-namespace", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = asyncio.run(run(args))
    except helm_sdkpy.HelmError as exc:
        json.dump({"error": str(exc), "type": type(exc).__name__}, sys.stdout)
        return 1
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
