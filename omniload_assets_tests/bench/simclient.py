"""The bench's side of its simulator process: start it, send it one-line commands, run measured processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class Simulator:
    """The simulator process and its command pipe."""

    process: subprocess.Popen[str]
    url: str
    api_key: str

    def command(self, line: str) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        return json.loads(stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.command("quit")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_simulator(
    events: int,
    profiles: int | None,
    start: datetime,
    end: datetime,
    latency_model: str | None = None,
) -> Simulator:
    """A simulator process built (every record made) before it serves; ``profiles=None``: its default."""
    cmd = [
        sys.executable,
        "-m",
        "omniload_assets_tests.bench.simserver",
        f"--events={events}",
        f"--start={start.isoformat()}",
        f"--end={end.isoformat()}",
        "--latency=1",
        f"--warm={max(1, os.cpu_count() or 1)}",
    ]
    if profiles is not None:
        cmd.append(f"--profiles={profiles}")
    if latency_model is not None:
        cmd.append(f"--latency-model={latency_model}")
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    hello = json.loads(process.stdout.readline())
    return Simulator(process, hello["url"], hello["api_key"])


def run_json(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a measured process and parse the JSON line it prints last."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])
