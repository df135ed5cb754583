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
import os

import numpy as np
import pytest
from tb_browser import INSTALL_HINT, TensorBoard, find_chromium, screenshot

pytestmark = pytest.mark.slow

_RUNS = ("deep_sigmoid", "bad_init_relu", "healthy_residual")


def chromium() -> str:
    """The Chromium executable, or a skip that says how to install it."""
    path = find_chromium()
    if path is None:
        pytest.skip(f"headless Chromium not found; install it with: {INSTALL_HINT}")
    return path


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    from gradlens.demo import run_demo

    logdir = tmp_path_factory.mktemp("demo")
    run_demo(str(logdir), steps=40, out=io.StringIO())
    return str(logdir)


@pytest.fixture(scope="module")
def tensorboard(demo_logdir):
    with TensorBoard(demo_logdir, runs=_RUNS) as tb:
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
        # one row per layer with gradient statistics (the saturation probe's sigmoid rows
        # hold activation statistics only and are no row of the gradient flow)
        grad_layers = {name for r in rep.records for name in r.stats.get("grad_norm", {})}
        assert len(grad_layers) < len(rep.layers) or run != "deep_sigmoid"
        assert bottom - top == len(grad_layers) * lay.row_h and right - left > 150
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


@pytest.fixture
def browser():
    return chromium()  # before the server: a missing browser skips at once


def test_screenshots_of_custom_scalars_and_images(browser, tensorboard, tmp_path_factory):
    from gradlens.sinks.figure import _RAMP

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
