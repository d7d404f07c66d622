"""Image files in and out — the one place that knows about modes, bit depths and EXIF.

Everything inside qatie works on H×W×3 float32 RGB in [0, 1]. Reading normalises whatever a
camera or an editor wrote (EXIF rotation, grayscale, palette, RGBA, 16-bit, CMYK); writing is
always 8-bit PNG or JPEG.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from qatie.errors import ImageReadError
from qatie.util import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 120_000_000  # above this a file is refused rather than risking memory exhaustion


#: Rows are converted to 8-bit RGB in strips of about this many pixels, so no mode (1-bit,
#: palette, 16-bit, float…) ever has a full-size copy in a wider type: the worst decode holds the
#: decoder's own image (at most 4 bytes a pixel: 480 MB at `MAX_PIXELS`) plus the 8-bit result.
STRIP_PIXELS = 4_000_000


def _gray_top(img: Image.Image) -> float:
    """The white level of a 16/32-bit grayscale image (16-bit modes: 65535; 'I': 255 unless larger)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    lo, hi = img.getextrema()
    return 65535.0 if hi > 255 else 255.0


def _strip_rgb_u8(strip: Image.Image, mode: str, transparent: bool, top: float) -> np.ndarray:
    """One strip of rows → h×w×3 uint8 RGB (transparency composited on white)."""
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(strip).astype(np.float32)
        g = (np.clip(a / np.float32(top), 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        g = (np.clip(np.asarray(strip, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if transparent:
        # Composite on white: what a viewer shows for transparent areas.
        rgba = np.asarray(strip.convert("RGBA")).astype(np.uint16)
        a = rgba[..., 3:]
        return ((rgba[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.asarray(strip.convert("RGB"))


def _to_rgb_u8(img: Image.Image, factor: int = 1) -> np.ndarray:
    """A loaded PIL image of any mode → H×W×3 uint8 RGB, box-reduced by `factor`, strip by strip."""
    mode = img.mode
    transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    top = _gray_top(img) if mode.startswith("I") else 255.0
    w, h = img.size
    rows = max(factor, STRIP_PIXELS // max(1, w) // factor * factor)
    out = np.empty((math.ceil(h / factor), math.ceil(w / factor), 3), np.uint8)
    for y in range(0, h, rows):
        rgb = _strip_rgb_u8(img.crop((0, y, w, min(h, y + rows))), mode, transparent, top)
        if factor > 1:
            rgb = np.asarray(Image.fromarray(rgb).reduce(factor))
        out[y // factor:y // factor + rgb.shape[0]] = rgb
    return out


def _open_checked(data: bytes, label: str):
    """Image.open with every failure as an ImageReadError naming `label`; refuses > MAX_PIXELS."""
    try:
        with warnings.catch_warnings():  # the pixel limit below is ours; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: not an image file (or a format qatie cannot read)") from None
    except Image.DecompressionBombError:
        raise ImageReadError(f"{label}: too large to open safely (limit {MAX_PIXELS:,} pixels)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{label}: the image is corrupt or truncated ({e})") from None
    if img.width < 1 or img.height < 1:
        img.close()
        raise ImageReadError(f"{label}: the image has no pixels")
    if img.width * img.height > MAX_PIXELS:
        w, h = img.size
        img.close()
        raise ImageReadError(f"{label}: {w}×{h} is too large (limit {MAX_PIXELS:,} pixels)")
    return img


def orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1…8; 1 when absent or broken), read without Pillow's `getexif()`,
    which materialises every tag's value: an EXIF block of 60,000 entries all pointing at one
    200 kB value costs it ~12 GB from a 0.9 MB file. Only the first directory's entries are
    scanned, in place, for tag 0x0112 (a SHORT stored inside the entry): time and memory bounded
    by the block's own size. TIFF files carry the tag among their own (already parsed) tags."""
    try:
        tags = getattr(img, "tag_v2", None)
        if tags is not None:
            value = int(tags.get(0x0112, 1) or 1)
            return value if 1 <= value <= 8 else 1
        raw = img.info.get("exif")
        return _orientation_in_exif(raw) if isinstance(raw, (bytes, bytearray)) else 1
    except Exception:  # broken EXIF must not cost the picture
        return 1


def _orientation_in_exif(raw: bytes) -> int:
    import struct

    if raw.startswith(b"Exif\x00\x00"):
        raw = raw[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(raw[:2]))
    if order is None or len(raw) < 8:
        return 1
    start = struct.unpack(order + "I", raw[4:8])[0]
    if start + 2 > len(raw):
        return 1
    entries = min(struct.unpack(order + "H", raw[start:start + 2])[0], (len(raw) - start - 2) // 12)
    for i in range(entries):
        at = start + 2 + 12 * i
        tag, kind, count = struct.unpack(order + "HHI", raw[at:at + 8])
        if tag == 0x0112:
            value = struct.unpack(order + "H", raw[at + 8:at + 10])[0] if kind == 3 and count == 1 else 1
            return value if 1 <= value <= 8 else 1
    return 1


def decode_image_u8(data: bytes, label: str = "image", max_pixels: float | None = None) -> np.ndarray:
    """Decode image bytes to H×W×3 uint8 RGB, upright, first page/frame only — the app's path.

    With `max_pixels`, a photo more than 4× larger is box-reduced by an integer factor while it
    is converted (JPEG: decoded at 1/2–1/8 scale by the DCT), leaving at least `max_pixels`; the
    caller resizes to its exact target. Memory stays within the decoder's own image plus strips."""
    if len(data) == 0:
        raise ImageReadError(f"{label}: the file is empty")
    img = _open_checked(data, label)
    try:
        w, h = img.size
        factor = max(1, int(math.sqrt(w * h / max_pixels))) if max_pixels else 1
        factor = factor if factor >= 2 else 1
        if factor > 1 and img.format == "JPEG":
            img.draft(img.mode, (w // factor, h // factor))  # decode at 1/2, 1/4 or 1/8 scale
        img.load()  # the first frame of a multi-page TIFF / animated file only
        if factor > 1:
            factor = max(1, int(math.sqrt(img.width * img.height / max_pixels)))
        arr = _to_rgb_u8(img, factor if factor >= 2 else 1)
        return _apply_orientation(arr, orientation(img))
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{label}: not enough memory to decode this image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageReadError(f"{label}: the image is corrupt or truncated ({e})") from None
    finally:
        img.close()


def _decode_wide_tiff(data: bytes) -> np.ndarray | None:
    """Pillow reduces 16-bit RGB TIFF to 8 bits; tifffile (a scikit-image dependency) keeps them.
    First page only (a multi-page TIFF is one photo here, not a stack)."""
    try:
        import tifffile

        a = tifffile.imread(io.BytesIO(data), key=0)
    except Exception:
        return None
    if a.dtype == np.uint16 and a.ndim == 3 and a.shape[2] in (3, 4):
        out = np.empty(a.shape[:2] + (3,), np.float32)
        np.multiply(a[..., :3], np.float32(1 / 65535.0), out=out, casting="unsafe")
        return out
    return None


def _gray_float(img: Image.Image) -> np.ndarray:
    """16/32-bit or float grayscale → H×W×3 float32 in [0,1] keeping its precision (float32 only)."""
    top = 1.0 if img.mode == "F" else _gray_top(img)
    g = np.asarray(img).astype(np.float32)
    g *= np.float32(1.0 / top)
    np.clip(g, 0, 1, out=g)
    return np.repeat(g[..., None], 3, axis=2)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any common image file as H×W×3 float32 RGB in [0, 1]; raise ImageReadError if it isn't one."""
    path = Path(path)
    label = str(path)
    if not path.exists():
        raise ImageReadError(f"{label}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{label}: is a folder, not an image file")
    data = path.read_bytes()
    return decode_image(data, label)


def decode_image(data: bytes, label: str = "image", max_pixels: float | None = None) -> np.ndarray:
    """Decode image bytes to H×W×3 float32 RGB in [0,1] (see `read_image`); `label` names the
    source in error messages. 16-bit files keep their precision; everything else goes through
    `decode_image_u8` (same reduction with `max_pixels`)."""
    if len(data) == 0:
        raise ImageReadError(f"{label}: the file is empty")
    with _open_checked(data, label) as img:
        mode, fmt = img.mode, img.format
        wide = not max_pixels and (mode.startswith("I") or mode == "F" or (fmt == "TIFF" and mode in ("RGB", "RGBA")))
        if wide:
            try:
                img.load()
                if fmt == "TIFF" and mode in ("RGB", "RGBA"):
                    a = _decode_wide_tiff(data)
                else:
                    a = _gray_float(img)
                if a is not None:
                    return _apply_orientation(a, orientation(img))
            except MemoryError:
                raise ImageReadError(f"{label}: not enough memory to decode this image") from None
            except (OSError, ValueError, SyntaxError, EOFError) as e:
                raise ImageReadError(f"{label}: the image is corrupt or truncated ({e})") from None
    u8 = decode_image_u8(data, label, max_pixels)
    out = np.empty(u8.shape, np.float32)
    np.divide(u8, np.float32(255.0), out=out)  # = u8 / 255 exactly as every other path divides
    return out


def _apply_orientation(a: np.ndarray, orient: int) -> np.ndarray:
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.transpose(1, 0, 2), 6: lambda x: np.rot90(x, -1), 7: lambda x: np.rot90(x, 1)[::-1],
           8: lambda x: np.rot90(x, 1)}
    return np.ascontiguousarray(ops[orient](a)) if orient in ops else a


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0,1] → uint8 with rounding (the one quantisation to 8-bit levels for display/writing);
    uint8 passes through unchanged."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> Path:
    """Write H×W×3 float [0,1] (or uint8) as 8-bit PNG or JPEG, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: write .png or .jpg/.jpeg (got {suffix or 'no suffix'})")
    arr = image if image.dtype == np.uint8 else to_uint8(image)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG" if suffix == ".png" else "JPEG",
                                                                   quality=quality))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
