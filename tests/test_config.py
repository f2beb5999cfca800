"""Settings read from the environment are checked where they are read: a value that cannot work
is a ConfigError naming the variable, never a silent truncation. Every error meant for a user is
a McpOptimizerError, so one ``except`` (the CLI's) catches them all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_optimizer.catalog import CatalogParseError
from mcp_optimizer.cli.main import CliError
from mcp_optimizer.config import ENV_PREFIX, Settings, declarations, flag_help
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


# ------------------------------------------------------------ one declaration per setting (issue 12)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``MCP_OPTIMIZER_*`` variable from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MCP_PORT", "65536", "MCP_OPTIMIZER_MCP_PORT must be at least 0 and at most 65535, got '65536'"),
        ("AUTH_REVIEW_TIMEOUT", "-1", "MCP_OPTIMIZER_AUTH_REVIEW_TIMEOUT must be above 0, got '-1'"),
        ("SESSION_IDLE_TIMEOUT", "inf", "MCP_OPTIMIZER_SESSION_IDLE_TIMEOUT must be a finite number, got 'inf'"),
        ("AUTH_CACHE_TTL", "-0.5", "MCP_OPTIMIZER_AUTH_CACHE_TTL must be at least 0, got '-0.5'"),
        ("MAX_TOOLS", "1.5", "MCP_OPTIMIZER_MAX_TOOLS must be a whole number, got '1.5'"),
        ("MAX_SESSIONS", "many", "MCP_OPTIMIZER_MAX_SESSIONS must be a whole number, got 'many'"),
        ("PEERING_PRIORITY", "high", "MCP_OPTIMIZER_PEERING_PRIORITY must be a whole number, got 'high'"),
        ("EMBEDDING_DIM", "-3", "MCP_OPTIMIZER_EMBEDDING_DIM must be at least 1, got '-3'"),
        ("MIN_SIMILARITY", "high", "MCP_OPTIMIZER_MIN_SIMILARITY must be a number, got 'high'"),
        ("INDEX_CHECK", "fast", "MCP_OPTIMIZER_INDEX_CHECK must be one of quick, full, off, got 'fast'"),
        ("AUTH_MODE", "Open", "MCP_OPTIMIZER_AUTH_MODE must be one of kubernetes, tokens, none, got 'Open'"),
        ("SEARCH_MODE", "semantic", "MCP_OPTIMIZER_SEARCH_MODE must be one of hybrid, bm25, got 'semantic'"),
    ],
)
def test_ranges_choices_and_whole_numbers_are_checked(
    clean_environment: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_environment.setenv(f"MCP_OPTIMIZER_{name}", value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert str(info.value) == message


def test_every_bad_variable_is_named_at_once(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("MCP_OPTIMIZER_MCP_PORT", "x")
    clean_environment.setenv("MCP_OPTIMIZER_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert "MCP_OPTIMIZER_MCP_PORT must be a whole number, got 'x'" in str(info.value)
    assert "MCP_OPTIMIZER_LOG_FORMAT must be one of text, json, got 'xml'" in str(info.value)


def test_a_secret_is_never_repeated(clean_environment: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-token-value"
    clean_environment.setenv("MCP_OPTIMIZER_AUTH_TOKENS", f"[{{name: a, token: {secret}}}]")
    settings = Settings.from_env()
    assert settings.auth_tokens is not None and secret in settings.auth_tokens
    assert secret not in repr(settings)
    clean_environment.setenv("MCP_OPTIMIZER_CALL_TIMEOUT", "never")
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert secret not in str(info.value) and info.value.__cause__ is None
    # A value that fails its check is not repeated when it is a secret.
    with pytest.raises(ConfigError) as overridden:
        settings.with_overrides(auth_tokens=[secret])
    assert str(overridden.value).startswith("MCP_OPTIMIZER_AUTH_TOKENS ") and secret not in str(overridden.value)


def test_cli_flags_are_checked_as_the_environment_is() -> None:
    with pytest.raises(ConfigError, match="MCP_OPTIMIZER_MCP_PORT must be at least 0 and at most 65535, got '70000'"):
        Settings().with_overrides(mcp_port=70000)
    with pytest.raises(ConfigError, match="MCP_OPTIMIZER_SEARCH_MODE must be one of hybrid, bm25"):
        Settings().with_overrides(search_mode="semantic")
    changed = Settings().with_overrides(mcp_port=9000, namespaces=("a", "b"), mcp_host=None)
    assert (changed.mcp_port, changed.namespaces, changed.mcp_host) == (9000, ("a", "b"), None)


def test_the_cli_refuses_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mcp_optimizer", "--db", str(tmp_path / "i.db"), "run", "--mcp-port", "70000"],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: MCP_OPTIMIZER_MCP_PORT must be at least 0 and at most 65535, got '70000'\n"


def test_the_declarations_are_the_defaults(clean_environment: pytest.MonkeyPatch) -> None:
    """An empty environment gives exactly ``Settings()``: the default is written once."""
    assert Settings.from_env() == Settings()
    assert all(description and env.startswith(ENV_PREFIX) for env, (_, description, _) in declarations().items())


def test_empty_variables_keep_their_meaning(clean_environment: pytest.MonkeyPatch) -> None:
    for name in ("LIVENESS_ENDPOINT", "PEERING_PRIORITY", "MIN_SIMILARITY", "EMBEDDING_DIM", "AUTH_MODE",
                 "EMBEDDING_QUERY_PREFIX", "AUTH_AUDIENCES", "NAMESPACES"):
        clean_environment.setenv(f"MCP_OPTIMIZER_{name}", "")
    settings = Settings.from_env()
    assert (settings.liveness_endpoint, settings.peering_priority, settings.min_similarity) == (None, None, None)
    assert (settings.embedding_dim, settings.auth_mode, settings.embedding_query_prefix) == (None, None, "")
    assert (settings.auth_audiences, settings.namespaces) == ((), ())


def test_the_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    missing = [env for env in declarations()
               if f"`{env}`" not in table and f"`_{env.removeprefix(ENV_PREFIX)}`" not in table]
    assert missing == []


def test_flag_help_says_what_the_setting_means() -> None:
    assert flag_help("MCP_PORT") == (
        "Port of the MCP endpoint; 0 takes any free port. (default: $MCP_OPTIMIZER_MCP_PORT, else 8080)"
    )
