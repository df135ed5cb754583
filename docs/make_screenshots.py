"""Regenerate the README's TensorBoard screenshots (docs/tensorboard_*.png).

Runs ``gradlens demo`` into a temporary logdir, starts ``tensorboard`` on a loopback
port, has headless Chromium take the CUSTOM SCALARS and IMAGES tabs, and saves them
as small palette PNGs; also writes ``docs/gradient_flow.png`` with
``gradlens report LOGDIR --plot``. Needs Chromium (Debian: ``apt-get install -y
chromium``). Usage::

    python docs/make_screenshots.py            # from the repository root
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from tb_browser import INSTALL_HINT, TensorBoard, find_chromium, screenshot  # noqa: E402

TABS = {"custom_scalars": "tensorboard_custom_scalars.png", "images": "tensorboard_images.png"}
RUNS = ("deep_sigmoid", "bad_init_relu", "healthy_residual")


def _small_png(src: str, dst: str, *, colours: int = 96) -> None:
    """A palette PNG (a few dozen kB instead of a few hundred)."""
    from PIL import Image

    with Image.open(src) as img:
        img.convert("RGB").quantize(colours, dither=Image.Dither.NONE).save(dst, optimize=True)


def main() -> int:
    from gradlens import cli
    from gradlens.demo import run_demo

    browser = find_chromium()
    if browser is None:
        print(f"make_screenshots: Chromium not found; install it with: {INSTALL_HINT}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        logdir = os.path.join(tmp, "gradlens-demo")
        run_demo(logdir, steps=60, out=io.StringIO())
        flow = os.path.join(tmp, "flow.png")
        with contextlib.redirect_stdout(io.StringIO()):  # the report's tables: not needed here
            cli.main(["report", logdir, "--plot", flow])
        shutil.copyfile(flow, os.path.join(HERE, "gradient_flow.png"))  # exact colours: no palette
        with TensorBoard(logdir, runs=RUNS) as tb:
            for tab, name in TABS.items():
                raw = os.path.join(tmp, name)
                screenshot(browser, f"{tb.url}/#{tab}", raw, size=(1280, 900))
                _small_png(raw, os.path.join(HERE, name))
                print(f"wrote docs/{name}")
    print("wrote docs/gradient_flow.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
