"""Settings of issue 13's replicas: leader election, the Lease's timing, the shutdown delay."""

from __future__ import annotations

import pytest

from mcp_optimizer.config import Settings
from mcp_optimizer.errors import ConfigError


def test_leader_election_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEADER_ELECTION", "LEASE_NAME", "LEASE_NAMESPACE", "LEASE_DURATION", "SHUTDOWN_DELAY", "POD_NAME"):
        monkeypatch.delenv(f"MCP_OPTIMIZER_{name}", raising=False)
    settings = Settings.from_env()
    assert not settings.leader_election and settings.lease_name == "mcp-optimizer-writer"
    assert (settings.lease_duration, settings.lease_renew_deadline, settings.lease_retry_period) == (15, 10, 2)
    assert settings.shutdown_delay == 0
    assert settings.lease_identity  # host and process id without a pod name


def test_leader_election_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_OPTIMIZER_LEADER_ELECTION", "TRUE")
    monkeypatch.setenv("MCP_OPTIMIZER_LEASE_NAME", "writer")
    monkeypatch.setenv("MCP_OPTIMIZER_LEASE_NAMESPACE", "ops")
    monkeypatch.setenv("MCP_OPTIMIZER_LEASE_DURATION", "30")
    monkeypatch.setenv("MCP_OPTIMIZER_SHUTDOWN_DELAY", "5")
    monkeypatch.setenv("MCP_OPTIMIZER_POD_NAME", "optimizer-7d9f-x2")
    settings = Settings.from_env()
    assert settings.leader_election and settings.lease_name == "writer" and settings.lease_namespace == "ops"
    assert settings.lease_duration == 30 and settings.shutdown_delay == 5
    assert settings.lease_identity == "optimizer-7d9f-x2"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LEADER_ELECTION", "maybe", r"MCP_OPTIMIZER_LEADER_ELECTION must be true or false, got 'maybe'"),
    ("LEASE_RETRY_PERIOD", "0", r"MCP_OPTIMIZER_LEASE_RETRY_PERIOD must be above 0"),
    ("SHUTDOWN_DELAY", "-1", r"MCP_OPTIMIZER_SHUTDOWN_DELAY must be at least 0"),
])
def test_bad_values_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(f"MCP_OPTIMIZER_{name}", value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env()
