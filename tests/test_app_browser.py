"""The app in a real browser: Debian's Chromium driven by Playwright (headless).

Opens the page, uploads an example photo and its reference, runs the comparison, waits for the
three outputs and the metrics (no fixed sleeps: every wait polls with a timeout), checks that
the images the browser shows are PNGs, and saves a screenshot to assets/screenshot.png (the one
README shows). Skips cleanly when /usr/bin/chromium or Playwright is missing.
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHIPPED = [REPO_ROOT / "checkpoints" / n for n in ("fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx")]
SCREENSHOT = REPO_ROOT / "assets" / "screenshot.png"
EXAMPLE = REPO_ROOT / "assets" / "examples" / "rocket_input.png"
REFERENCE = REPO_ROOT / "assets" / "examples" / "rocket_reference.png"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
    pytest.mark.skipif(not all(p.is_file() for p in SHIPPED), reason="shipped ONNX models are not present"),
]
sync_api = pytest.importorskip("playwright.sync_api")

sys.path.insert(0, str(REPO_ROOT))
from app.measure import AppServer  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server():
    with AppServer(env={"QATIE_LOG_LEVEL": "WARNING"}, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            browser.close()


def _img_src(page, elem_id: str) -> str | None:
    return page.evaluate(f"() => {{ const i = document.querySelector('#{elem_id} img'); return i ? i.src : null; }}")


def test_compare_in_the_browser(server, page):
    outside: list[str] = []  # the app must work offline: nothing may be fetched from elsewhere
    page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(
        (server.url, "data:", "blob:", "http://127.0.0.1", "http://localhost")) else None)
    t0 = time.perf_counter()
    page.goto(server.url, wait_until="domcontentloaded")
    page.wait_for_selector("#compare-btn")
    page_s = time.perf_counter() - t0

    page.locator("#photo input[type=file]").set_input_files(str(EXAMPLE))
    page.wait_for_selector("#photo img")
    page.get_by_text("Ground truth (optional)").click()
    page.locator("#reference input[type=file]").set_input_files(str(REFERENCE))
    page.wait_for_selector("#reference img")

    t1 = time.perf_counter()
    page.click("#compare-btn")
    for elem in ("out-input", "out-fp32", "out-ptq", "out-qat"):
        page.wait_for_function(
            f"() => {{ const i = document.querySelector('#{elem} img'); return i && i.complete && i.naturalWidth > 0; }}")
    outputs_s = time.perf_counter() - t1
    # The metrics table ends with the median of the timing runs.
    page.wait_for_function("() => { const m = document.querySelector('#metrics');"
                           " return m && m.innerText.includes('QAT-INT8') && m.innerText.includes('median of 3'); }")
    metrics = page.inner_text("#metrics")
    assert "PSNR vs reference" in metrics and "PTQ-INT8" in metrics
    assert "QAT-INT8" in page.inner_text("#verdict")
    page.wait_for_function("() => { const i = document.querySelector('#heatmap img'); return i && i.naturalWidth > 0; }")
    page.wait_for_function("() => { const i = document.querySelector('#zoom img'); return i && i.naturalWidth > 0; }")

    for elem in ("out-fp32", "out-ptq", "out-qat", "heatmap", "zoom"):
        src = _img_src(page, elem)
        assert src and src.split("?")[0].lower().endswith(".png"), f"#{elem} shows {src}, not a PNG"
        w = page.evaluate(f"() => document.querySelector('#{elem} img').naturalWidth")
        assert w > 0
    assert page.evaluate("() => document.querySelector('#out-qat img').naturalWidth") == 640

    # Clicking an output moves the zoom.
    before = _img_src(page, "zoom")
    page.locator("#out-fp32 img").click(position={"x": 20, "y": 20})
    page.wait_for_function(f"() => {{ const i = document.querySelector('#zoom img'); return i && i.src !== {before!r}; }}")

    assert not outside, f"the page fetched resources from outside the app: {outside[:5]}"

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")
    height = page.evaluate("() => Math.min(document.body.scrollHeight, 1500)")
    shot = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 1440, "height": height})
    # README's copy is reduced to 256 colours: a third of the size, and assets/ stays small.
    from PIL import Image

    with Image.open(io.BytesIO(shot)) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"page usable after {page_s:.2f} s; outputs on screen {outputs_s:.2f} s after the click")
