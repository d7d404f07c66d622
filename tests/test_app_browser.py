"""The app in a real browser: Debian's Chromium driven by Playwright (headless).

What a visitor sees, at desktop (1440×900) and phone (390×844) sizes: the page opens with an
example's comparison already on it (headline, enlarged worst-region crops, heatmaps) with the
examples and the Compare button above the fold; every tab reachable on a phone; no horizontal
clipping; a readable metrics table. Then the three UI bugs that only a browser shows: a
reference loaded with an example must not score the user's own photo, an error blanks the
outputs and stays readable in the notice line, and the full pictures' labels are not cut by the
toolbar. Saves the screenshots README shows (assets/screenshot.png, assets/screenshot_phone.png,
reduced to 256 colours). Every wait polls with a timeout (no fixed sleeps decide a result).
Skips cleanly when /usr/bin/chromium or Playwright is missing.
"""
from __future__ import annotations

import io
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHIPPED = [REPO_ROOT / "checkpoints" / n for n in ("fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx")]
SCREENSHOT = REPO_ROOT / "assets" / "screenshot.png"
SCREENSHOT_PHONE = REPO_ROOT / "assets" / "screenshot_phone.png"
EXAMPLES = REPO_ROOT / "assets" / "examples"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
    pytest.mark.skipif(not all(p.is_file() for p in SHIPPED), reason="shipped ONNX models are not present"),
    pytest.mark.skipif(not any(EXAMPLES.glob("*_input.png")), reason="no example photos in assets/examples"),
]
sync_api = pytest.importorskip("playwright.sync_api")

sys.path.insert(0, str(REPO_ROOT))

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
METRICS_FILLED = "() => { const m = document.querySelector('#metrics'); return !!(m && m.innerText.includes('QAT-INT8')); }"
SHOWN = "() => { const i = document.querySelector('#{id} img'); return !!(i && i.complete && i.naturalWidth > 0); }"


@pytest.fixture(scope="module")
def server(app_server):
    return app_server  # the session's one app server (tests/conftest.py)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def opened_page(browser, server, viewport: dict):
    """A fresh page (own Gradio session) at `viewport`, loaded until the first view's comparison
    shows; closed when the test is done with it, pass or fail."""
    pg = browser.new_page(viewport=viewport, device_scale_factor=1)
    try:
        pg.set_default_timeout(90_000)
        outside: list[str] = []  # the app must work offline: nothing may be fetched from elsewhere
        pg.on("request", lambda req: outside.append(req.url) if not req.url.startswith(
            (server.url, "data:", "blob:", "http://127.0.0.1", "http://localhost")) else None)
        t0 = time.perf_counter()
        pg.goto(server.url, wait_until="domcontentloaded")
        pg.wait_for_function(SHOWN.replace("{id}", "zoom"))
        pg.wait_for_function("() => document.querySelector('#headline').innerText.includes('QAT-INT8')")
        pg.load_s = time.perf_counter() - t0
        pg.outside = outside
        yield pg
    finally:
        pg.close()


def box(pg, selector: str) -> dict:
    return pg.evaluate(f"() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                       " return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width}; }")


def save_screenshot(pg, path: Path) -> None:
    """The viewport, reduced to 256 colours (a third of the size; assets/ stays small)."""
    pg.evaluate("() => window.scrollTo(0, 0)")
    shot = pg.screenshot()
    with Image.open(io.BytesIO(shot)) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size > 10_000


def test_first_view_shows_the_answer_at_desktop_size(server, browser):
    with opened_page(browser, server, DESKTOP) as pg:
        # The headline: one colour-coded line per INT8 model, and what INT8 buys.
        head = pg.inner_text("#headline")
        assert "PTQ-INT8" in head and "QAT-INT8" in head and "smaller" in head
        assert pg.evaluate("() => document.querySelectorAll('#headline span[style*=color]').length") == 2
        # Above the fold: examples (a gallery of thumbnails), the Compare button, the crops.
        h = DESKTOP["height"]
        assert pg.evaluate("() => document.querySelectorAll('#examples img').length") == len(
            list(EXAMPLES.glob("*_input.png")))
        assert box(pg, "#examples")["bottom"] <= h and box(pg, "#compare-btn")["bottom"] <= h
        assert box(pg, "#zoom img")["top"] < h / 2
        for elem in ("zoom", "heatmap", "out-fp32", "out-ptq", "out-qat"):
            pg.wait_for_function(SHOWN.replace("{id}", elem))
            src = pg.evaluate(f"() => document.querySelector('#{elem} img').src")
            assert src.split("?")[0].lower().endswith(".png"), f"#{elem} shows {src}, not a PNG"
        pg.wait_for_function("() => document.querySelectorAll('#slider-crop img').length == 2")
        # Collapsed by default: the vs-reference heatmaps and the details (table, long verdict).
        assert not pg.locator("#heatmap-ref img").is_visible()
        assert not pg.locator("#metrics").is_visible()
        # The zoom centre is shown rounded (one decimal), not as 30.06535.
        for label in ("Zoom x", "Zoom y"):
            value = pg.get_by_label(label).first.input_value()
            assert len(value.split(".")[-1]) <= 1 if "." in value else True, value
        # The paper set (the default when shipped) shows the authors' own TFLite model as released.
        from app import ui

        pictures = ["out-input", "out-fp32", "out-ptq", "out-qat"]
        if ui._authors_visible(ui.DEFAULT_SET):
            pg.wait_for_function(SHOWN.replace("{id}", "out-authors"))
            assert "as released" in pg.inner_text("#out-authors label")
            assert "as released" in pg.inner_text("#litert-note")
            pictures.append("out-authors")
        # And QATIE's own QAT-INT8 on LiteRT beside it (ai-edge-litert; its model is in checkpoints/).
        if ui._litert_visible(ui.DEFAULT_SET):
            pg.wait_for_function(SHOWN.replace("{id}", "out-litert"))
            assert "on LiteRT" in pg.inner_text("#out-litert label")
            assert "on LiteRT" in pg.inner_text("#litert-note")
            pictures.append("out-litert")
        # The full pictures' labels are not cut off by the toolbar buttons.
        for elem in pictures:
            cut = pg.evaluate(f"() => {{ const l = document.querySelector('#{elem} label');"
                              " return l ? l.scrollWidth - l.clientWidth : 0; }")
            assert cut <= 1, f"#{elem}'s label is cut by {cut} px"
        # Details: the table has real headers, the verdict and the table agree on the models.
        pg.get_by_text("Details: the measurements").click()
        pg.wait_for_function(METRICS_FILLED)
        headers = pg.evaluate("() => [...document.querySelectorAll('#metrics th')].map(t => t.innerText.trim())")
        assert headers[0] == "Model" and "1" not in headers
        assert "QAT-INT8" in pg.inner_text("#verdict")
        # Every column in view on a laptop: the table does not scroll sideways.
        sideways = pg.evaluate("() => { const v = document.querySelector('#metrics .virtual-table-viewport');"
                               " return v ? v.scrollWidth - v.clientWidth : -1; }")
        assert sideways == 0, f"the metrics table scrolls sideways by {sideways} px at {DESKTOP['width']} px"
        # Clicking a full picture moves the crops there.
        before = pg.evaluate("() => document.querySelector('#zoom img').src")
        pg.locator("#out-fp32 img").click(position={"x": 20, "y": 20})
        pg.wait_for_function(f"() => document.querySelector('#zoom img').src !== {before!r}")
        assert not pg.outside, f"the page fetched resources from outside the app: {pg.outside[:5]}"
        pg.get_by_text("Details: the measurements").click()  # closed again for the screenshot
        # Every picture says what it shows (screen readers).
        shown = ["zoom", "heatmap"] + pictures
        alts = pg.evaluate("() => [...document.querySelectorAll('" + ", ".join(f"#{e} img" for e in shown)
                           + "')].map(i => i.alt)")
        assert len(alts) == len(shown) and all(len(a) > 15 for a in alts), alts
        save_screenshot(pg, SCREENSHOT)
        print(f"desktop: page load → comparison on screen {pg.load_s:.2f} s")


def test_first_view_on_a_phone(server, browser):
    with opened_page(browser, server, PHONE) as pg:
        w, h = PHONE["width"], PHONE["height"]
        # Every tab is reachable directly (no "more tabs" overflow menu).
        tabs = pg.evaluate("() => [...document.querySelectorAll('#tabs [role=tab]')].map(b => b.innerText)")
        assert tabs == ["Compare", "Train", "Benchmark", "About"], tabs
        assert not pg.locator("#tabs .overflow-menu button").is_visible()
        # The answer on the first screen, above the examples and the upload box.
        assert box(pg, "#headline")["top"] < box(pg, "#zoom img")["top"] < h, "the crops are not on the first screen"
        assert box(pg, "#zoom img")["bottom"] <= h + 40 and box(pg, "#zoom")["bottom"] <= box(pg, "#examples")["top"]
        assert box(pg, "#examples")["bottom"] <= box(pg, "#photo")["top"] <= box(pg, "#compare-btn")["top"]
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= w, "the page scrolls sideways"
        # The metrics table: each column wide enough to read (no 2–3 letters per line).
        pg.get_by_text("Details: the measurements").click()
        pg.wait_for_function(METRICS_FILLED)
        widths = pg.evaluate("() => [...document.querySelectorAll('#metrics th')].map(t => t.getBoundingClientRect().width)")
        assert min(widths) >= 90, widths
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= w
        pg.get_by_text("Details: the measurements").click()
        save_screenshot(pg, SCREENSHOT_PHONE)
        print(f"phone: page load → comparison on screen {pg.load_s:.2f} s")


def _photo(tmp_path: Path, name: str, h: int, w: int) -> Path:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.5 + 0.2 * np.sin(xx[..., None] / 7 + yy[..., None] / 11 + np.arange(3)) + 0.03 * rng.standard_normal((h, w, 3))
    path = tmp_path / name
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_an_examples_reference_never_scores_your_own_photo(server, browser, tmp_path):
    with opened_page(browser, server, DESKTOP) as pg:
        # The first view is an example of the paper set: rated against full precision, not against the
        # example's clean original (a restoration target), and the line under the button says so.
        assert "rated by agreement with full precision" in pg.inner_text("#ref-note")
        mine = _photo(tmp_path, "my_cat.png", 200, 300)
        pg.locator("#photo input[type=file]").set_input_files(str(mine))
        pg.wait_for_function("() => document.querySelector('#ref-note').innerText.trim() === ''")
        # The old result is marked as such until Compare runs on the new photo.
        pg.wait_for_function("() => document.querySelector('#headline').innerText.includes('New photo loaded')")
        pg.click("#compare-btn")
        pg.wait_for_function("() => document.querySelector('#notice').innerText.includes('my_cat.png')")
        pg.wait_for_function("() => !document.querySelector('#notice').innerText.includes('Running')")
        pg.wait_for_function("() => !document.querySelector('#headline').innerText.includes('New photo loaded')")
        notice = pg.inner_text("#notice")
        assert "Reference" not in notice and "reference" not in notice, notice
        pg.get_by_text("Details: the measurements").click()
        pg.wait_for_function(METRICS_FILLED)
        assert "Agreement with full precision" in pg.inner_text("#metrics")

        # A reference the user uploads stays (visibly) when the photo changes.
        pg.get_by_text("Advanced: full size").click()
        ref = _photo(tmp_path, "my_reference.png", 200, 300)
        pg.locator("#reference input[type=file]").set_input_files(str(ref))
        pg.wait_for_function("() => document.querySelector('#ref-note').innerText.includes('rated by agreement')")
        pg.locator("#photo input[type=file]").set_input_files(str(_photo(tmp_path, "my_dog.png", 200, 300)))
        time.sleep(1.0)  # give a (wrong) clearing handler the time to run
        assert "rated by agreement" in pg.inner_text("#ref-note")
        assert pg.locator("#reference img").count() == 1


def test_an_error_blanks_the_outputs_and_stays_readable(server, browser, tmp_path):
    with opened_page(browser, server, DESKTOP) as pg:
        tiny = tmp_path / "tiny.png"
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tiny)
        pg.locator("#photo input[type=file]").set_input_files(str(tiny))
        pg.click("#compare-btn")
        pg.wait_for_function("() => document.querySelector('#notice').innerText.includes('too small')")
        for elem in ("zoom", "out-fp32", "out-qat", "heatmap"):
            pg.wait_for_function(f"() => !document.querySelector('#{elem} img')")
        assert pg.inner_text("#headline").strip() == ""
        # Still readable after the toast is gone, and no "Error" badge covers it.
        pg.wait_for_function("() => !document.querySelector('.toast-body')", timeout=30_000)
        assert "too small" in pg.inner_text("#notice")
        assert "Error" not in pg.inner_text("#notice").replace("error", "")


def test_example_gallery_click_runs_that_example(server, browser):
    with opened_page(browser, server, PHONE) as pg:
        first = pg.inner_text("#notice")
        thumbs = pg.locator("#examples button.thumbnail-item")
        names = sorted(p.name for p in EXAMPLES.glob("*_input.png"))
        target = 1 if len(names) > 1 else 0
        thumbs.nth(target).click()
        pg.wait_for_function(f"() => document.querySelector('#notice').innerText.includes({names[target]!r})")
        assert pg.inner_text("#notice") != first
        # On a phone the result is above the examples: the click brings it back into view.
        pg.wait_for_function("() => { const r = document.querySelector('#headline').getBoundingClientRect();"
                             " return r.top >= -1 && r.top < window.innerHeight; }")


def test_about_tab_tables_and_links(server, browser):
    with opened_page(browser, server, PHONE) as pg:
        pg.get_by_role("tab", name="About").click()
        pg.wait_for_function("() => document.body.innerText.includes('PTQ and QAT in plain words')")
        text = pg.evaluate("() => document.body.innerText")
        assert "../shared" not in text and "clean_split.json" not in text
        links = pg.evaluate("() => [...document.querySelectorAll('a')].map(a => a.href)")
        assert any("arxiv.org/abs/2604.21743" in h for h in links) and any("github.com/GenAI4E/QATIE" in h for h in links)
        # Each table has its own heading, and no number wraps onto a second line: the text of every
        # cell lies on one line (its line boxes, counted from the text's client rects: a rect whose
        # middle is below the previous line's bottom starts a new line).
        tables = pg.evaluate("""() => [...document.querySelectorAll('.card-tables table')].filter(t => t.offsetParent)
            .map(t => { let h = t.previousElementSibling; while (h && !/^H[1-6]$/.test(h.tagName)) h = h.previousElementSibling;
                        const lines = td => { const r = document.createRange(); r.selectNodeContents(td);
                            const rects = [...r.getClientRects()].filter(x => x.width > 0 && x.height > 0).sort((a, b) => a.top - b.top);
                            let n = 0, bottom = -Infinity;
                            for (const x of rects) { if ((x.top + x.bottom) / 2 > bottom) { n++; bottom = x.bottom; } else bottom = Math.max(bottom, x.bottom); }
                            return n; };
                        const cells = [...t.querySelectorAll('td')];
                        return {heading: h ? h.innerText : null, lines: cells.map(lines),
                                wrapped: cells.filter(td => lines(td) > 1).map(td => td.innerText)}; })""")
        assert tables, "no model card tables on the About tab"
        headings = [t["heading"] for t in tables]
        assert None not in headings and len(set(headings)) == len(headings), headings
        for t in tables:
            assert max(t["lines"]) == 1, f"cells wrap in the table under {t['heading']!r}: {t['wrapped']}"
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]


def test_train_progress_and_cancel(server, browser):
    with opened_page(browser, server, DESKTOP) as pg:
        pg.get_by_role("tab", name="Train").click()
        # The button and the progress line are both on the first screen of a laptop.
        pg.wait_for_selector("#train-btn")
        assert box(pg, "#train-btn")["bottom"] <= DESKTOP["height"], box(pg, "#train-btn")
        assert 0 <= box(pg, "#train-status")["top"] < DESKTOP["height"], box(pg, "#train-status")
        pg.click("#train-btn")
        # One progress display: the status line counts steps and estimates the time left.
        pg.wait_for_function("() => /step \\d+ of \\d+/.test(document.querySelector('#train-status').innerText)",
                             timeout=180_000)
        pg.wait_for_function("() => document.querySelector('#train-status').innerText.includes('left in this stage')",
                             timeout=60_000)
        covered = pg.evaluate("""() => [...document.querySelectorAll('#train-curves [data-testid=status-tracker]')]
            .some(t => !t.classList.contains('hide') && t.getBoundingClientRect().height > 0)""")
        assert not covered, "a progress overlay covers the live curves"
        pg.click("#train-cancel")
        pg.wait_for_function("() => document.querySelector('#train-status').innerText.includes('Cancelled')",
                             timeout=10_000)
