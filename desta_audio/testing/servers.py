"""Local servers for tests and benchmarks: the console script that starts one, a free loopback port, and waiting
until a started server is healthy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def console_script(name: str) -> str | None:
    """The path of an installed console script (`transformers`, for `transformers serve`): the one beside this
    interpreter first, as a venv's scripts sit beside its python even when the venv was never activated
    (`.venv/bin/python -m pytest`), else the one on PATH; None when neither exists."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def free_port() -> int:
    """A port nobody listens on, so a stray run elsewhere cannot capture this run's server or rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(
    health_url: str, process: subprocess.Popen, log: Path, timeout_s: float, what: str, poll_s: float = 0.5
) -> None:
    """Return once `health_url` answers 200. A process that exits, or no answer within `timeout_s`, raises with
    the tail of its `log`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{what} did not come up in {timeout_s:g} s:\n{log.read_text()[-3000:]}")
