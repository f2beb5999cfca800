"""Settings read from the environment are checked where they are read: a value that cannot work
is a ConfigError naming the variable, never a silent truncation. Every error meant for a user is
a McpOptimizerError, so one ``except`` (the CLI's) catches them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_optimizer.catalog import CatalogParseError
from mcp_optimizer.cli.main import CliError
from mcp_optimizer.config import Settings
from mcp_optimizer.db.engine import IndexOpenError
from mcp_optimizer.db.health import IndexDamagedError
from mcp_optimizer.embeddings import EmbeddingError
from mcp_optimizer.errors import ConfigError, McpOptimizerError
from mcp_optimizer.ingest import DuplicateRegistryServersError, IndexError_, WorkloadSpecError
from mcp_optimizer.kubeapi import KubeApiError
from mcp_optimizer.mcp.auth import AuthConfigError
from mcp_optimizer.mcp.client import McpClientError
from mcp_optimizer.mcp.pinned import PinnedToolsError
from mcp_optimizer.mcp.server import EndpointError
from mcp_optimizer.operator.workloads import IndexUnavailableError


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MCP_PORT", "8080.9", "MCP_OPTIMIZER_MCP_PORT must be a whole number, got '8080.9'"),
        ("MCP_PORT", "70000", "MCP_OPTIMIZER_MCP_PORT must be at least 0 and at most 65535, got '70000'"),
        ("METRICS_PORT", "-1", "MCP_OPTIMIZER_METRICS_PORT must be at least 0 and at most 65535, got '-1'"),
        ("EMBEDDING_BATCH_SIZE", "0", "MCP_OPTIMIZER_EMBEDDING_BATCH_SIZE must be at least 1, got '0'"),
        ("RESYNC_INTERVAL", "0", "MCP_OPTIMIZER_RESYNC_INTERVAL must be above 0, got '0'"),
        ("MCP_TIMEOUT", "nan", "MCP_OPTIMIZER_MCP_TIMEOUT must be a finite number, got 'nan'"),
        ("CALL_TIMEOUT", "soon", "MCP_OPTIMIZER_CALL_TIMEOUT must be a number, got 'soon'"),
        ("LOG_LEVEL", "verbose", "MCP_OPTIMIZER_LOG_LEVEL must be one of debug, info, warning, error, critical"),
        ("LOG_FORMAT", "yaml", "MCP_OPTIMIZER_LOG_FORMAT must be one of text, json, got 'yaml'"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"MCP_OPTIMIZER_{name}", value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # what callers caught before there was ConfigError


def test_settings_that_can_work_are_read_as_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MCP_PORT": " 8081 ", "LOG_LEVEL": "debug", "LOG_FORMAT": "JSON",
                        "CATALOG_CHUNK_SECONDS": "0", "PEERING_PRIORITY": "-5", "METRICS_PORT": "0"}.items():
        monkeypatch.setenv(f"MCP_OPTIMIZER_{name}", value)
    settings = Settings.from_env()
    assert (settings.mcp_port, settings.log_level, settings.log_format) == (8081, "DEBUG", "json")
    assert (settings.catalog_chunk_seconds, settings.peering_priority, settings.metrics_port) == (0.0, -5, 0)


@pytest.mark.parametrize(
    "error",
    [
        CatalogParseError, CliError, ConfigError, IndexOpenError, IndexDamagedError, EmbeddingError, IndexError_,
        WorkloadSpecError, DuplicateRegistryServersError, KubeApiError, AuthConfigError, McpClientError,
        PinnedToolsError, EndpointError, IndexUnavailableError,
    ],
)
def test_every_user_facing_error_is_a_mcp_optimizer_error(error: type[Exception]) -> None:
    assert issubclass(error, McpOptimizerError)


def test_the_cli_prints_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mcp_optimizer", "--db", str(tmp_path / "i.db"), "servers"],
        env={"PATH": "/usr/bin:/bin", "MCP_OPTIMIZER_MCP_PORT": "8080.9"},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == "error: MCP_OPTIMIZER_MCP_PORT must be a whole number, got '8080.9'\n"
