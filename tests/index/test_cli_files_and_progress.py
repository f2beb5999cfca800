"""The CLI with the files people write and the terminals they watch: JSON written by ``json.dump``
(emoji as surrogate-pair escapes), YAML with the same escapes, and progress on long work."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.support.shared import model_path


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MCP_OPTIMIZER_DB": str(tmp_path / "cli.db"),
            "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path())}


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_optimizer", *args], capture_output=True, text=True,
                          env=env(tmp_path), timeout=300)


def run_in_terminal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as a person at a shell does."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "mcp_optimizer", *args], stdout=terminal, stderr=terminal,
                               stdin=subprocess.DEVNULL, env=env(tmp_path))
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO once the process has closed its end
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=300), output.decode()


def workload(i: int, description: str) -> dict[str, object]:
    return {"workload_name": f"team/server-{i}", "name": f"server-{i}", "url": f"https://s{i}.example.com/mcp",
            "tools": [{"name": f"tool_{i}_{j}", "description": f"{description} ({i}.{j})",
                       "inputSchema": {"type": "object"}} for j in range(3)]}


def test_json_written_by_json_dump_keeps_its_emoji(tmp_path: Path) -> None:
    path = tmp_path / "workloads.json"
    with path.open("w") as f:
        json.dump([workload(1, "Post a party message 🎉 to the team channel")], f)  # ensure_ascii: \ud83c\udf89
    assert "\\ud83c\\udf89" in path.read_text()
    result = run(tmp_path, "workload", "apply", str(path))
    assert result.returncode == 0, result.stderr
    assert "workload team/server-1: RUNNING, 3 tools" in result.stdout
    found = json.loads(run(tmp_path, "search", "post a party message", "--json", "--limit", "1").stdout)
    assert found[0]["description"].startswith("Post a party message 🎉 to the team channel")


def test_yaml_with_surrogate_pair_escapes_is_read_as_the_character(tmp_path: Path) -> None:
    path = tmp_path / "workloads.yaml"
    path.write_text(
        "- workload_name: team/yaml\n"
        "  name: yaml\n"
        "  url: https://yaml.example.com/mcp\n"
        "  tools:\n"
        '    - {name: celebrate, description: "Celebrate a release \\ud83d\\ude80 with the team"}\n'
    )
    result = run(tmp_path, "workload", "apply", str(path))
    assert result.returncode == 0, result.stderr
    found = json.loads(run(tmp_path, "search", "celebrate a release", "--json", "--limit", "1").stdout)
    assert found[0]["description"] == "Celebrate a release 🚀 with the team"


def test_a_lone_surrogate_is_a_clear_error_and_nothing_is_applied(tmp_path: Path) -> None:
    good, bad = workload(1, "Fine"), workload(2, "Broken")
    bad["tools"][1]["description"] = "half an emoji \ud83c"  # type: ignore[index]
    path = tmp_path / "workloads.json"
    path.write_text(json.dumps([good, bad]))
    result = run(tmp_path, "workload", "apply", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {path}: workload #2: tools[1].description holds a lone UTF-16 surrogate escape, which is not a "
        "character; write the character itself or a complete surrogate pair"
    )
    assert "Traceback" not in result.stderr
    listed = json.loads(run(tmp_path, "servers", "--json").stdout)
    assert listed == []  # refused before anything was written


def test_progress_on_a_terminal_and_plain_lines_in_a_pipe(tmp_path: Path) -> None:
    workloads = [workload(i, "Look up the weather forecast for a city") for i in range(25)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(workloads))
    code, screen = run_in_terminal(tmp_path, "workload", "apply", str(path))
    assert code == 0, screen
    # The status line is rewritten in place (carriage returns), names what is done and how far.
    updates = [part for part in screen.split("\r") if part.startswith("applying workloads: ")]
    assert updates, screen
    assert any("/25 workloads (" in update and ": team/server-" in update for update in updates)
    assert any("left" in update for update in updates[1:]) or len(updates) <= 2
    assert screen.count("workload team/server-") >= 25  # every result line is still printed

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"remote_servers": {
        f"weather-{i}": {"url": f"https://w{i}.example.com/mcp", "description": f"Weather service number {i}",
                         "tools": [f"forecast_{i}_{j}" for j in range(4)]} for i in range(40)}}))
    code, screen = run_in_terminal(tmp_path, "catalog", "load", str(catalog), "--name", "weather")
    assert code == 0, screen
    assert "\rcatalog weather: embedding 40 servers and their tools: " in screen
    assert " texts (" in screen
    assert "catalog weather: 40 added" in screen

    # Not a terminal: no control characters, a plain closing line on stderr, results on stdout.
    (tmp_path / "cli.db").unlink()
    result = run(tmp_path, "workload", "apply", str(path))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\r" not in result.stdout
    assert "applying workloads: 25/25 workloads (100%), took " in result.stderr
    assert result.stdout.count("workload team/server-") == 25
