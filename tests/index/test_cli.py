"""The CLI as scripts use it: a real subprocess, JSON output, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.shared import model_path, shared_dir


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCP_OPTIMIZER_DB": str(tmp_path / "cli.db"),
           "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path())}
    return subprocess.run([sys.executable, "-m", "mcp_optimizer", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    result = run(tmp, "catalog", "load", str(shared_dir() / "data/toolhive-registry/registry.json"), "--name", "th")
    assert result.returncode == 0, result.stderr
    assert "catalog th: 102 added" in result.stdout
    assert "heroku" in result.stderr  # the alias warning
    (tmp / "w.yaml").write_text("""
- workload_name: team/github
  name: github
  package: ghcr.io/github/github-mcp-server:v99
  tools:
    - name: create_issue
      description: Create a new issue in a GitHub repository
      inputSchema: {type: object, properties: {title: {type: string}}}
- workload_name: team/heroku
  name: heroku
  package: ghcr.io/stacklok/dockyard/npx/heroku-mcp-server:1.0.7
  tools: [{name: deploy_app, description: Deploy an app to Heroku}]
- workload_name: team/stopped
  name: stopped
  url: https://stopped.example.com/mcp
  status: STOPPED
  tools: [{name: file_bug, description: File a bug in the tracker}]
""")
    result = run(tmp, "workload", "apply", str(tmp / "w.yaml"))
    assert result.returncode == 1  # the heroku duplicate, reported after applying the rest
    assert "error: workload 'team/heroku': 2 registry entries match" in result.stderr
    assert "workload team/github: RUNNING, 1 tools, linked to th/github" in result.stdout
    assert "Traceback" not in result.stderr
    return tmp


def test_servers_json(loaded: Path) -> None:
    result = run(loaded, "servers", "--json")
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert sum(i["kind"] == "registry" for i in items) == 102
    workloads = {i["workload_name"]: i for i in items if i["kind"] == "workload"}
    assert workloads["team/github"]["registry_server_name"] == "github"
    assert workloads["team/github"]["tool_count"] == 1
    assert workloads["team/heroku"]["status"] == "ERROR"
    for key in ("kind", "name", "workload_name", "remote", "url", "package", "status", "registry_server_name"):
        assert key in items[0]


def test_search_json_only_running(loaded: Path) -> None:
    result = run(loaded, "search", "report a bug", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["tool"] for h in hits] == ["create_issue"]
    assert {"server", "tool", "description", "score"} <= set(hits[0])


def test_registry_search(loaded: Path) -> None:
    result = run(loaded, "search", "query a postgres database", "--registry", "--json", "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert any("postgres" in h["server"] for h in json.loads(result.stdout))


def test_delete_commands(loaded: Path, tmp_path: Path) -> None:
    assert run(loaded, "workload", "delete", "team/stopped").returncode == 0
    missing = run(loaded, "workload", "delete", "team/stopped")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no workload named 'team/stopped'"
    missing = run(loaded, "catalog", "delete", "nope")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no catalog named 'nope'"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "invalid JSON at line 1"),
    ('{"servers": {"x": {"description": "no image"}}}', "container entry has no image"),
    ('[1, 2]', ""),
])
def test_bad_catalog_is_one_line_and_keeps_index(loaded: Path, tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "th.json"
    bad.write_text(content)
    result = run(loaded, "catalog", "load", str(bad), "--name", "th")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    servers = json.loads(run(loaded, "servers", "--json").stdout)
    assert sum(i["kind"] == "registry" for i in servers) == 102


def test_bad_workload_file(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("- name: x\n  url: https://a\n  package: b\n")
    result = run(tmp_path, "workload", "apply", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: workload 'x': exactly one of url (remote) or package (container) is required")


def test_keyword_only_mode_needs_no_model(tmp_path: Path) -> None:
    """--search-mode bm25: the model path may point nowhere, nothing is embedded, search works."""
    def bm25(*args: str) -> subprocess.CompletedProcess[str]:
        return run(tmp_path, "--search-mode", "bm25", "--model-path", str(tmp_path / "no-model"), *args)

    result = bm25("catalog", "load", str(shared_dir() / "data/toolhive-registry/registry.json"), "--name", "th")
    assert result.returncode == 0, result.stderr
    assert "102 added" in result.stdout and "0 texts embedded" in result.stdout
    (tmp_path / "w.yaml").write_text("""
- workload_name: team/github
  name: github
  package: ghcr.io/github/github-mcp-server:v99
  tools: [{name: create_issue, description: Create a new issue in a GitHub repository}]
""")
    result = bm25("workload", "apply", str(tmp_path / "w.yaml"))
    assert result.returncode == 0 and "RUNNING" in result.stdout, result.stderr
    hits = json.loads(bm25("search", "create a github issue", "--json").stdout)
    assert [h["tool"] for h in hits] == ["create_issue"]
    registry = json.loads(bm25("search", "query a postgres database", "--registry", "--json").stdout)
    assert any("postgres" in h["server"] for h in registry)
    # The same index with a model: everything is embedded once and hybrid search works.
    result = run(tmp_path, "search", "open a ticket for a bug in my repository", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["tool"] == "create_issue"


def test_db_upgrade(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "upgrade")
    assert result.returncode == 0 and "latest schema" in result.stdout
    result = run(tmp_path, "--db", str(tmp_path / "missing-dir" / "x.db"), "db", "upgrade")
    assert result.returncode == 1 and "does not exist" in result.stderr
