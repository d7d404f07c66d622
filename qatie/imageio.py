"""Image files in and out — the one place that knows about modes, bit depths and EXIF.

Everything inside qatie works on H×W×3 float32 RGB in [0, 1]. Reading normalises whatever a
camera or an editor wrote (EXIF rotation, grayscale, palette, RGBA, 16-bit, CMYK); writing is
always 8-bit PNG or JPEG.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 120_000_000  # above this a file is refused rather than risking memory exhaustion


def _pil_to_float(img: Image.Image, label: str) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not cost the picture
        pass
    if img.width * img.height > MAX_PIXELS:
        raise ImageReadError(f"{label}: {img.width}×{img.height} is too large (limit {MAX_PIXELS:,} pixels)")
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top, 0, 1)
        return np.repeat(a[..., None], 3, axis=2).astype(np.float32)
    if mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: what a viewer shows for transparent areas.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr)


def _decode_wide_tiff(data: bytes) -> np.ndarray | None:
    """Pillow reduces 16-bit RGB TIFF to 8 bits; tifffile (a scikit-image dependency) keeps them."""
    try:
        import tifffile

        a = tifffile.imread(io.BytesIO(data))
    except Exception:
        return None
    if a.dtype == np.uint16 and a.ndim == 3 and a.shape[2] in (3, 4):
        return np.ascontiguousarray(a[..., :3].astype(np.float32) / 65535.0)
    return None


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
    """Decode image bytes (see `read_image`); `label` names the source in error messages.

    With `max_pixels`, a photo more than 4× larger is decoded at a reduced size (at least
    `max_pixels`; see `_decode_reduced`): the caller still resizes to its exact target."""
    if len(data) == 0:
        raise ImageReadError(f"{label}: the file is empty")
    if max_pixels:
        reduced = _decode_reduced(data, label, max_pixels)
        if reduced is not None:
            return reduced
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                raise ImageReadError(f"{label}: the image has no pixels")
            if img.format == "TIFF" and img.mode in ("RGB", "RGBA"):
                wide = _decode_wide_tiff(data)
                if wide is not None:
                    return _apply_orientation(wide, img.getexif().get(0x0112, 1))
            return _pil_to_float(img, label)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: not an image file (or a format qatie cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{label}: too large to open safely ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{label}: the image is corrupt or truncated ({e})") from None


#: PIL modes that `Image.reduce` handles (others, e.g. 16-bit, always take the full decoder).
_REDUCIBLE = ("RGB", "RGBA", "L", "LA", "CMYK", "I", "F")


def _decode_reduced(data: bytes, label: str, max_pixels: float) -> np.ndarray | None:
    """Decode a photo more than 4× larger than `max_pixels` at a reduced size: JPEG DCT scaling
    and an integer box reduction in PIL *before* converting to float, so a 50-MP upload costs
    about a second instead of ten and a fraction of the memory. None when the fast path does not
    apply (not that large, an exotic mode, multi-frame, unreadable): the full decoder then runs
    and reports any error."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            factor = int(math.sqrt(w * h / max_pixels))
            if factor < 2 or im.mode not in _REDUCIBLE or getattr(im, "n_frames", 1) > 1:
                return None
            if im.format == "JPEG":
                im.draft(im.mode, (w // factor, h // factor))  # decode at 1/2, 1/4 or 1/8 scale
            im.load()
            im = ImageOps.exif_transpose(im)
            rest = max(1, int(math.sqrt(im.width * im.height / max_pixels)))
            if rest >= 2:
                im = im.reduce(rest)
            return _pil_to_float(im, label)
    except Exception:
        return None


def _apply_orientation(a: np.ndarray, orient: int) -> np.ndarray:
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.transpose(1, 0, 2), 6: lambda x: np.rot90(x, -1), 7: lambda x: np.rot90(x, 1)[::-1],
           8: lambda x: np.rot90(x, 1)}
    return np.ascontiguousarray(ops[orient](a)) if orient in ops else a


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0,1] → uint8 with rounding (the one quantisation to 8-bit levels for display/writing)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> Path:
    """Write H×W×3 float [0,1] (or uint8) as 8-bit PNG or JPEG, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: write .png or .jpg/.jpeg (got {suffix or 'no suffix'})")
    arr = image if image.dtype == np.uint8 else to_uint8(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG" if suffix == ".png" else "JPEG", quality=quality)
    os.replace(tmp, path)
    return path


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
