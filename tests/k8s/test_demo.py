"""``scripts/demo``, the README's first command, run as a new user runs it: it sets everything up,
prints a find_tool and a call_tool that work as commands to re-run, and stops cleanly."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.k8s.conftest import REPO

pytestmark = pytest.mark.kube


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_runs_the_operator_for_real_and_stops(tmp_path: Path) -> None:
    env = {**os.environ, "MCP_OPTIMIZER_DEMO_DIR": str(tmp_path / "demo")}

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "scripts" / "demo"), *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900, stdin=subprocess.DEVNULL)

    started = demo()
    try:
        output = started.stdout
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        for line in ("calculator   Running  3 tools  (streamable-http)", "text         Running  2 tools  (sse)",
                     "time         Running  2 tools  (stdio)"):
            assert line in output, output
        assert "demo/time  get_current_time: Get the current time" in output
        assert '"timezone": "Asia/Tokyo"' in output
        assert re.search(r"The MCP endpoint is http://127\.0\.0\.1:\d+/mcp", output)
        assert "Stop everything: scripts/demo stop" in output

        # The printed commands work when the user runs them again.
        commands = re.findall(r"demo: (find_tool|call_tool):\n  (.+)\n", output)
        assert [name for name, _ in commands] == ["find_tool", "call_tool"]
        for name, command in commands:
            rerun = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert rerun.returncode == 0, rerun.stderr
            assert ("get_current_time" if name == "find_tool" else "Asia/Tokyo") in rerun.stdout

        again = demo()
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        pids = [int(line.split()[0]) for line in (tmp_path / "demo" / "pids").read_text().splitlines()] if (
            tmp_path / "demo" / "pids").exists() else []
        stopped = demo("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert pids and not any(_alive(pid) for pid in pids)
    assert "control-plane: stopped" in stopped.stderr
