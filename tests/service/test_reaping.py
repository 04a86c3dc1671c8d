"""Searches launched over HTTP are reaped: a real ``nas serve`` keeps no ``<defunct>`` child.

The child is a real ``python -m nas search`` started by ``POST /api/searches``; the test ends
it (SIGKILL to its session, as a crash would) and then asks nothing of the server, so only
the launcher's own reaping can collect it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _zombies(parent: psutil.Process) -> list[int]:
    out = []
    for child in parent.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_launched_search_that_ends_leaves_no_zombie(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}
    env.pop("NAS_TOKEN", None)
    with open(tmp_path / "serve.log", "wb") as log:  # the server keeps its own descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "nas", "serve", "--db", f"sqlite:///{tmp_path / 'nas.db'}",
             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    child_pid = None
    try:
        def up() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{base}/api/searches", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 60, "nas serve to answer")
        r = httpx.post(f"{base}/api/searches", timeout=30,
                       json={"name": "reaped", "space": "tiny", "trials": 1})
        assert r.status_code == 202, r.text
        child_pid = r.json()["pid"]
        parent = psutil.Process(server.pid)
        assert child_pid in [c.pid for c in parent.children()]
        os.killpg(child_pid, signal.SIGKILL)  # its own session: the search and anything it started

        def gone() -> bool:
            return child_pid not in [c.pid for c in parent.children()] and not _zombies(parent)

        _wait(gone, 15, f"the server to reap its child {child_pid} (zombies: {_zombies(parent)})")
    finally:
        if child_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child_pid, signal.SIGKILL)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
