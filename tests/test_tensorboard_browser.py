"""The demo's logs in a real TensorBoard, seen through its HTTP data API and headless Chromium.

Starts the ``tensorboard`` program on a loopback port (127.0.0.1 only) over a
``gradlens demo`` logdir, checks that the log10 series, the custom-scalars layout,
the flow figure and the overview text are served, and has Chromium take
screenshots of the CUSTOM SCALARS and IMAGES tabs. The server and the browser are
always stopped (every wait is bounded). Skips without Chromium:
``apt-get update && apt-get install -y chromium`` (Debian), which ``.ci/run`` does.
"""

from __future__ import annotations

import io
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

import numpy as np
import pytest

pytestmark = pytest.mark.slow

_INSTALL = "apt-get update && apt-get install -y chromium"
_RUNS = ("deep_sigmoid", "bad_init_relu", "healthy_residual")


def chromium() -> str:
    """The Chromium executable, or a skip that says how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"headless Chromium not found; install it with: {_INSTALL}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End ``proc`` and its children (own process group), politely, then for sure."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class TensorBoard:
    """A ``tensorboard`` server on 127.0.0.1 over ``logdir``; a context manager that stops it."""

    def __init__(self, logdir: str, *, start_timeout: float = 90.0) -> None:
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
                if all(run in tags for run in _RUNS):
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


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    from gradlens.demo import run_demo

    logdir = tmp_path_factory.mktemp("demo")
    run_demo(str(logdir), steps=40, out=io.StringIO())
    return str(logdir)


@pytest.fixture(scope="module")
def tensorboard(demo_logdir):
    with TensorBoard(demo_logdir) as tb:
        yield tb


def _series(tb, run, tag):
    return [v for _wall, _step, v in tb.json("/data/plugin/scalars/scalars", run=run, tag=tag)]


def test_log10_series_separate_the_vanishing_layers(tensorboard):
    tags = tensorboard.json("/data/plugin/scalars/tags")["deep_sigmoid"]
    norm_tags = sorted(t for t in tags if t.startswith("grad_norm_log10/"))
    assert len(norm_tags) == 10 and norm_tags[0] == "grad_norm_log10/00:0"
    means = [float(np.mean(_series(tensorboard, "deep_sigmoid", t))) for t in norm_tags]
    # input side first: each layer's log10 norm sits clearly above the one before it
    assert all(b - a > 0.3 for a, b in zip(means, means[1:])), means
    assert means[-1] - means[0] > 5  # 5+ decades: every line on its own level, none reads 0
    relu = [float(np.mean(_series(tensorboard, "bad_init_relu", t)))
            for t in sorted(t for t in tensorboard.json("/data/plugin/scalars/tags")["bad_init_relu"]
                            if t.startswith("grad_norm_log10/"))]
    assert len(relu) == 8 and min(relu) > 2.5  # exploding: ~1e3 and above, on the same chart
    # counts are written once on a run without NaN/Inf
    assert len(_series(tensorboard, "deep_sigmoid", "nonfinite/00:0")) == 1


def test_custom_scalars_layout_is_served(tensorboard):
    layout = tensorboard.json("/data/plugin/custom_scalars/layout")
    (category,) = layout["category"]
    charts = {c["title"]: c["multiline"]["tag"] for c in category["chart"]}
    assert list(charts)[0] == "grad_norm (log10)" and charts["grad_norm (log10)"] == ["^grad_norm_log10/"]
    data = tensorboard.json("/data/plugin/custom_scalars/scalars", run="deep_sigmoid", tag="^grad_norm_log10/")
    assert data["regex_valid"] and len(data["tag_to_events"]) == 10


def test_flow_figure_is_served_at_its_size(tensorboard, demo_logdir):
    from PIL import Image

    from gradlens.report import load_run
    from gradlens.sinks.figure import TB_WIDTH, _flow_figure

    for run in _RUNS:
        entries = tensorboard.json("/data/plugin/images/images", run=run, tag="gradlens/gradient_flow")
        assert entries, run
        png = tensorboard.get("/data/plugin/images/individualImage?" + entries[-1]["query"])
        img = Image.open(io.BytesIO(png)).convert("RGB")
        rep = load_run(os.path.join(demo_logdir, run))
        _ref, lay = _flow_figure(rep.records, rep.findings, width=TB_WIDTH)
        # the figure of gradlens report --plot, as wide as TensorBoard's image cards (shown 1:1)
        assert img.size == (lay.width, lay.height) and img.width == TB_WIDTH, run
        left, top, right, bottom = lay.plot
        assert bottom - top == len(rep.layers) * lay.row_h and right - left > 150
        heat = np.asarray(img)[top + 2:bottom - 2, left + 2:right - 2].reshape(-1, 3)
        assert len(np.unique(heat, axis=0)) > 20  # a colour map, not a blank box
        labels = np.asarray(img)[top:bottom, :left - 8]
        assert (labels < 100).any()  # layer names are drawn


def test_overview_text_is_served(tensorboard):
    tags = tensorboard.json("/data/plugin/text/tags")
    tag = "gradlens/overview/text_summary"  # torch's add_text suffix
    assert tag in tags["deep_sigmoid"]
    entries = tensorboard.json("/data/plugin/text/text", run="deep_sigmoid", tag=tag)
    html = entries[-1]["text"]
    assert "<table>" in html and "grad norm first" in html and "vanishing" in html
    assert html.index("<td>0</td>") < html.index("<td>18</td>")  # input side first


def _not_blank(path):
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"))
    body = arr[80:]  # below TensorBoard's header bar
    assert len(np.unique(body.reshape(-1, 3), axis=0)) > 50, path
    return arr


def _near(arr, rgb, tol=12):
    return (np.abs(arr.astype(int) - np.array(rgb)).max(axis=2) <= tol)


def test_screenshots_of_custom_scalars_and_images(tensorboard, tmp_path_factory):
    from gradlens.sinks.figure import _RAMP

    browser = chromium()
    out = os.environ.get("GRADLENS_SCREENSHOTS") or str(tmp_path_factory.mktemp("shots"))
    cs, im = os.path.join(out, "custom_scalars.png"), os.path.join(out, "images.png")
    screenshot(browser, tensorboard.url + "/#custom_scalars", cs)
    arr = _not_blank(cs)
    assert arr.shape[:2] == (1000, 1400)
    # chart lines in the run colours: many non-grey pixels in the chart area
    body = arr[120:, 340:].astype(int)
    coloured = (body.max(axis=2) - body.min(axis=2)) > 60
    assert coloured.sum() > 2000
    screenshot(browser, tensorboard.url + "/#images", im)
    arr = _not_blank(im)
    # the flow figures are on the page: the colour map's dark and bright ends both show
    assert _near(arr, _RAMP[0]).sum() > 500 and _near(arr, _RAMP[-1]).sum() > 100
