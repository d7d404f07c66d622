"""Bounded work per request, without a server: every PIL mode decodes through 8-bit strips (no
full-size float copy), multi-page files give their first page, strips and huge zooms are refused
or clamped with a clear message, and figures stay a bounded number of pixels."""
import io

import numpy as np
import pytest
from PIL import Image

from app import config, core, render
from qatie.errors import ImageReadError
from qatie.imageio import MAX_PIXELS, decode_image, decode_image_u8


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _palette(w, h):
    im = Image.new("P", (w, h), 7)
    im.putpalette([v for i in range(256) for v in (i, 255 - i, 40)])
    return im


@pytest.mark.parametrize("make, rgb", [
    (lambda w, h: Image.new("1", (w, h), 1), (255, 255, 255)),
    (lambda w, h: _palette(w, h), (7, 248, 40)),
    (lambda w, h: Image.new("I;16", (w, h), 32896), (128, 128, 128)),
    (lambda w, h: Image.new("I", (w, h), 100), (100, 100, 100)),
    (lambda w, h: Image.new("F", (w, h), 0.5), (128, 128, 128)),
    (lambda w, h: Image.new("LA", (w, h), (0, 0)), (255, 255, 255)),  # transparent → white
    (lambda w, h: Image.new("RGBA", (w, h), (200, 0, 0, 255)), (200, 0, 0)),
    (lambda w, h: Image.new("CMYK", (w, h), (0, 0, 0, 0)), (255, 255, 255)),
])
@pytest.mark.parametrize("max_pixels", [None, 2000])
def test_every_mode_decodes_to_uint8_full_and_reduced(make, rgb, max_pixels):
    fmt = "TIFF" if make(1, 1).mode in ("I", "F", "CMYK") else "PNG"
    data = _png(make(300, 200), fmt)
    a = decode_image_u8(data, "x.png", max_pixels=max_pixels)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    if max_pixels:
        assert 2000 <= a.shape[0] * a.shape[1] <= 4 * 2000 * 1.2, a.shape
    else:
        assert a.shape[:2] == (200, 300)
    assert np.abs(a.reshape(-1, 3).astype(int) - rgb).max() <= 1, a[0, 0]


def test_float_decode_keeps_16_bit_precision_in_float32():
    a = decode_image(_png(Image.new("I;16", (40, 30), 1000)), "x")
    assert a.dtype == np.float32 and np.allclose(a, 1000 / 65535, atol=1e-7)


def test_multipage_tiff_reads_the_first_page_only():
    pages = [Image.new("RGB", (64, 48), (10 * i, 0, 0)) for i in range(20)]
    data = _png(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 20
    for decode in (decode_image_u8, decode_image):
        a = decode(data, "pages.tif")
        assert a.shape == (48, 64, 3), decode.__name__


def test_pixel_limit_refused_from_the_header():
    w = 20000
    h = MAX_PIXELS // w + 1
    data = _png(Image.new("1", (w, h)))  # a few kB on disk
    with pytest.raises(ImageReadError, match="too large"):
        decode_image_u8(data, "bomb.png")


def test_extreme_aspect_refused_with_a_clear_message(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (int(16 * config.MAX_ASPECT) + 16, 16)).save(strip)
    with pytest.raises(core.AppInputError, match="aspect ratio .*Crop it"):
        core.prepare(str(strip))
    ok = tmp_path / "panorama.png"
    Image.new("RGB", (int(32 * config.MAX_ASPECT), 32), (90, 90, 90)).save(ok)
    assert core.prepare(str(ok)).size == (int(32 * config.MAX_ASPECT), 32)


@pytest.mark.parametrize("shape", [(16, 160), (160, 16), (1080, 1920), (2000, 2000)])
def test_heatmap_figure_size_is_capped_in_pixels(tmp_path, shape):
    m = np.random.default_rng(0).random(shape).astype(np.float32) * 8
    path = render.heatmap_png([("a", m), ("b", m), None, ("c", m), ("d", m), ("e", m)], tmp_path / "h.png", cols=3)
    w, h = Image.open(path).size
    assert w <= 3 * 520 + 130 and h <= 2 * 565 + 30, (w, h)
