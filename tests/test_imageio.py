"""Image files: every bad input gives ImageReadError naming the file; every odd mode decodes to
H×W×3 float32 RGB in [0,1]; writing is 8-bit PNG/JPEG."""
import io

import numpy as np
import pytest
from PIL import Image

from qatie.errors import ImageReadError, QatieError
from qatie.imageio import decode_image, list_images, read_image, to_uint8, write_image
from conftest import assert_close
from tolerances import TOLERANCES


def _check_rgb(a, shape=None):
    assert a.dtype == np.float32 and a.ndim == 3 and a.shape[2] == 3
    assert a.flags["C_CONTIGUOUS"]
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    if shape is not None:
        assert a.shape[:2] == shape


def _png_bytes(mode="RGB", size=(20, 12)):
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L",) else (10, 120, 240)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(size=(40, 30)):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- bad inputs

BAD = {
    "corrupt.png": lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "empty.jpg": lambda: b"",
    "truncated.jpg": lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2],
    "truncated.png": lambda: _png_bytes(size=(64, 64))[:60],
    "notes.txt": lambda: b"this is not an image\n" * 10,
    "fake.png": lambda: b"hello, I am plain text with an image suffix",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise_clear_error_naming_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD[name]())
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, QatieError)


def test_missing_file_and_folder(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="nope.png"):
        read_image(missing)
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path)
    assert str(tmp_path) in str(err.value) and "folder" in str(err.value)
    with pytest.raises(ImageReadError, match="not a folder"):
        list_images(missing)


def test_decode_label_in_error():
    with pytest.raises(ImageReadError, match="upload.jpg"):
        decode_image(b"garbage", "upload.jpg")


# ---------------------------------------------------------------------------- modes

def test_grayscale(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.full((9, 11), 51, np.uint8), "L").save(p)
    a = read_image(p)
    _check_rgb(a, (9, 11))
    assert np.allclose(a, 0.2)


def test_palette(tmp_path):
    p = tmp_path / "p.png"
    Image.new("RGB", (10, 6), (255, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(p)
    a = read_image(p)
    _check_rgb(a, (6, 10))
    assert np.allclose(a[0, 0], [1, 0, 0])


def test_palette_gif_with_transparency(tmp_path):
    p = tmp_path / "t.gif"
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(p, transparency=0)
    a = read_image(p)
    _check_rgb(a, (8, 8))
    assert np.allclose(a[0, 0], [1, 0, 0]) and np.allclose(a[4, 4], 1.0)  # transparent → white


def test_rgba_composited_on_white(tmp_path):
    p = tmp_path / "a.png"
    arr = np.zeros((5, 6, 4), np.uint8)
    arr[..., 0] = 255
    arr[:, :3, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(arr, "RGBA").save(p)
    a = read_image(p)
    _check_rgb(a, (5, 6))
    assert np.allclose(a[0, 0], [1, 0, 0]) and np.allclose(a[0, 5], [1, 1, 1])


def test_16bit_grayscale_png_keeps_precision(tmp_path):
    p = tmp_path / "g16.png"
    arr = np.linspace(0, 65535, 7 * 13).reshape(7, 13).astype(np.uint16)
    Image.fromarray(arr).save(p)
    a = read_image(p)
    _check_rgb(a, (7, 13))
    assert_close(a[..., 1], arr / 65535.0, "uint16_to_float32_max_abs")


def test_16bit_rgb_tiff_keeps_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    p = tmp_path / "rgb16.tif"
    arr = np.random.default_rng(0).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    tifffile.imwrite(p, arr, photometric="rgb")
    a = read_image(p)
    _check_rgb(a, (6, 9))
    assert_close(a, arr / 65535.0, "uint16_to_float32_max_abs")  # not reduced to 8 bits


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (12, 8), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    a = read_image(p)
    _check_rgb(a, (8, 12))
    assert_close(a[4, 6], [1, 0, 0], "jpeg_q95_flat_colour")


def test_exif_rotated_jpeg(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(p, exif=exif.tobytes(), quality=95)
    a = read_image(p)
    _check_rgb(a, (40, 20))  # transposed shape
    assert_close(a[2, 10], [1, 0, 0], "jpeg_q95_flat_colour")  # the left (red) strip is now at the top
    assert_close(a[-3, 10], [0, 0, 1], "jpeg_q95_flat_colour")


def test_float_mode_and_32bit_int(tmp_path):
    p = tmp_path / "f.tif"
    Image.fromarray(np.full((4, 5), 0.5, np.float32), "F").save(p)
    _check_rgb(read_image(p), (4, 5))


# ---------------------------------------------------------------------------- writing

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg"])
def test_write_roundtrip(tmp_path, suffix):
    img = np.random.default_rng(1).random((10, 14, 3)).astype(np.float32)
    path = write_image(tmp_path / "sub" / f"o{suffix}", img)
    back = read_image(path)
    _check_rgb(back, (10, 14))
    if suffix == ".png":
        np.testing.assert_array_equal(to_uint8(back), to_uint8(img))
    assert not list(path.parent.glob("*.tmp"))


def test_write_rejects_other_suffix(tmp_path):
    with pytest.raises(ValueError, match="png"):
        write_image(tmp_path / "o.bmp", np.zeros((4, 4, 3), np.float32))


def test_to_uint8_rounds_and_clips():
    a = np.array([[[-0.1, 0.5, 1.2]]], np.float32)
    assert to_uint8(a).tolist() == [[[0, 128, 255]]]


def test_list_images_sorted_and_filtered(tmp_path):
    for n in ("b.png", "a.JPG", "c.txt", "d.tiff"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "e.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "d.tiff"]


def _exif_bomb(entries: int = 60_000, block: int = 200_000, orientation: int = 6, order: str = "<") -> bytes:
    """A TIFF/EXIF block whose first directory has `entries` tags, all pointing at one `block`-byte
    value (Pillow's getexif() copies it per tag: ~12 GB), the orientation tag last."""
    import struct

    head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    data_at = 8 + 2 + 12 * entries + 4
    ifd = [struct.pack(order + "HHII", 0x9000 + (i % 4000), 7, block, data_at) for i in range(entries - 1)]
    ifd.append(struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0))
    return head + struct.pack(order + "H", entries) + b"".join(ifd) + b"\0\0\0\0" + bytes(block)


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_bomb_png_decodes_upright_in_bounded_memory(tmp_path, order):
    """A 0.9 MB PNG whose EXIF would cost Pillow's getexif() gigabytes: its orientation is read
    in place (the tag is last of 60,000), and decoding stays within a few MB of the pixels."""
    import tracemalloc

    from qatie.imageio import orientation

    arr = np.zeros((64, 48, 3), np.uint8)
    arr[:8] = 255  # a white band at the top: after rotating 90° clockwise it is on the right
    path = tmp_path / "bomb.png"
    Image.fromarray(arr).save(path, exif=_exif_bomb(order=order))
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    with Image.open(path) as im:
        assert orientation(im) == 6
    img = read_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"EXIF bomb ({order}): peak {peak / 1e6:.2f} MB traced while decoding")
    assert peak < TOLERANCES["exif_bomb_decode_peak_mb"] * 1e6, f"{peak / 1e6:.0f} MB"
    assert img.shape == (48, 64, 3) and img[:, -8:].min() == 1.0 and img[:, :-8].max() == 0.0
