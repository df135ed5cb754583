"""Test and docs helper: a loopback ``tensorboard`` server and headless Chromium screenshots.

Used by ``tests/test_tensorboard_browser.py`` and ``docs/make_screenshots.py``. Every
wait is bounded, and both processes run in their own process group, which is ended
(SIGTERM, then SIGKILL) on exit, failures included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Optional, Sequence

#: How to get the browser on Debian (what .ci/run does).
INSTALL_HINT = "apt-get update && apt-get install -y chromium"


def find_chromium() -> Optional[str]:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End ``proc`` and whatever it started (its own process group), politely, then for sure."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:  # helpers left in the group (Chromium's renderers) go too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


class TensorBoard:
    """A ``tensorboard`` server on 127.0.0.1 over ``logdir``; a context manager that stops it."""

    def __init__(self, logdir: str, *, runs: Sequence[str] = (), start_timeout: float = 90.0) -> None:
        self._runs = tuple(runs)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
             "--port", str(self.port), "--reload_interval", "0"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"tensorboard exited ({self.proc.returncode}): {self._log.read()[-2000:]!r}")
            try:  # ready once every run is loaded
                tags = self.json("/data/plugin/scalars/tags")
                if tags and all(run in tags for run in self._runs):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tensorboard did not serve the runs within {timeout:.0f} s")

    def get(self, path: str, **params) -> bytes:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=20) as resp:
            return resp.read()

    def json(self, path: str, **params):
        return json.loads(self.get(path, **params))

    def close(self) -> None:
        _stop(self.proc)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def screenshot(browser: str, url: str, path: str, *, size=(1400, 1000), budget_ms: int = 20000,
               timeout: float = 120.0) -> None:
    """A headless Chromium screenshot of ``url`` after ``budget_ms`` of (virtual) page time."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            _stop(proc)
    if not os.path.exists(path):
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
