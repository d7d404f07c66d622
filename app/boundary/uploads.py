"""Reading uploaded photos — in the box (`app.boundary.box`): the file's bytes, its metadata and its
pixels are only ever touched by a worker process with memory and CPU limits, so a decompression
or metadata bomb kills that worker, never the server. The server gets the decoded 8-bit RGB
array (at most `config.MAX_INPUT_MP` × 4 unless full size was asked for), the notes on what was
normalised, and the content hash.

Torch-free and Gradio-free; a worker imports this module on its first photo.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qatie.errors import QatieError

from app import config

#: Seconds a worker may spend on one photo's header and pixels (a 12-MP JPEG takes ~1 s).
DECODE_DEADLINE_S = 30.0


class AppInputError(QatieError):
    """A user input the app cannot use (message shown to the user as is)."""


def mp_text(w: int, h: int) -> str:
    return f"{w}×{h} ({w * h / 1e6:.1f} MP)"


def payload_path(payload) -> tuple[Path, str] | None:
    """(path, original file name) of a Gradio file payload (FileData dict or model), a path, or None."""
    if payload is None or payload == "":
        return None
    if isinstance(payload, (str, Path)):
        return Path(payload), Path(payload).name
    if isinstance(payload, dict):
        path = payload.get("path")
        name = payload.get("orig_name") or (Path(path).name if path else None)
    else:  # a pydantic FileData
        path = getattr(payload, "path", None)
        name = getattr(payload, "orig_name", None) or (Path(path).name if path else None)
    if not path:
        if isinstance(payload, dict) and str(payload.get("url", "")).startswith("data:"):
            raise AppInputError("images sent as data: URLs are not supported; upload the file instead")
        return None
    return Path(path), str(name)


def check_aspect(label: str, w: int, h: int) -> None:
    """Refuse strips longer than `config.MAX_ASPECT`:1 — the network pads each side to a multiple
    of 8 and the figures follow the shape, so a 16×100000 'photo' costs far more than its pixels."""
    if min(w, h) and max(w, h) / min(w, h) > config.MAX_ASPECT:
        raise AppInputError(
            f"{label} is {w}×{h} pixels — an aspect ratio of {max(w, h) / min(w, h):.0f}:1; this app takes "
            f"pictures up to {config.MAX_ASPECT:g}:1. Crop it to a less extreme shape and upload it again.")


def full_size_refusal(name: str, w: int, h: int) -> AppInputError:
    return AppInputError(
        f"photo {name!r} is {mp_text(w, h)}: full-size processing is limited to "
        f"{config.FULL_SIZE_MAX_MP:g} MP here. Untick 'Full size (tiled)' to process a copy "
        f"downscaled to {config.MAX_INPUT_MP:g} MP.")


@dataclass
class Upload:
    image: np.ndarray  # H×W×3 uint8 RGB (never a full-size float copy: see decode_image_u8)
    name: str
    notes: list[str]
    sha256: str
    original_size: tuple[int, int]  # (w, h), upright, before any reduction on load


# --------------------------------------------------------------------------------------------
# In the worker
# --------------------------------------------------------------------------------------------

def header_notes(data: bytes) -> tuple[list[str], tuple[int, int] | None]:
    """What the decoder will normalise (shown to the user), and the upright size from the header."""
    from PIL import Image

    from qatie.imageio import orientation

    notes: list[str] = []
    try:
        with warnings.catch_warnings():  # the app's own pixel limit applies (below)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            size = im.size
            turn = orientation(im)  # bounded: never Pillow's getexif() on an upload
            if turn != 1:
                notes.append("rotated upright from its EXIF orientation tag")
                if turn in (5, 6, 7, 8):
                    size = (size[1], size[0])
            mode = im.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                notes.append("transparent areas shown on white")
            if mode == "CMYK":
                notes.append("converted from CMYK to RGB")
            if mode.startswith("I;16") or mode == "I" or (im.format == "PNG" and im.info.get("bitdepth") == 16):
                notes.append("16-bit image reduced to 8-bit levels")
            if mode in ("L", "LA", "1") or mode.startswith("I"):
                notes.append("grayscale image processed as RGB")
            return notes, size
    except Exception:  # the decoder gives the real error message
        return notes, None


def decode_upload(path: str, name: str, what: str, max_pixels: float | None,
                  full_size_max_mp: float | None) -> dict:
    """Worker side of `read_upload`: header checks first (size, aspect, full-size limit), then
    the pixels. Returns plain values (the box sends nothing else back)."""
    from qatie.imageio import MAX_PIXELS, decode_image_u8

    label = f"{what} {name!r}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AppInputError(f"{label}: the upload could not be read ({exc.strerror or exc}); upload it again") from None
    if not data:
        from qatie.errors import ImageReadError

        raise ImageReadError(f"{label}: the file is empty")
    notes, size = header_notes(data)
    if size is not None:
        w, h = size
        if min(w, h) < config.MIN_SIDE:
            raise AppInputError(
                f"{label} is {w}×{h} pixels — too small: the app needs at least "
                f"{config.MIN_SIDE}×{config.MIN_SIDE} pixels")
        if w * h > MAX_PIXELS:
            raise AppInputError(f"{label} is {mp_text(w, h)}: too large to open safely here "
                                f"(limit {MAX_PIXELS / 1e6:.0f} MP)")
        check_aspect(label, w, h)
        if full_size_max_mp and w * h / 1e6 > full_size_max_mp:
            raise full_size_refusal(name, w, h)
    image = decode_image_u8(data, label, max_pixels=max_pixels)
    check_aspect(label, image.shape[1], image.shape[0])
    reduced = size is not None and max_pixels and size[0] * size[1] > 4 * max_pixels
    original = size if reduced else (image.shape[1], image.shape[0])
    return {"image": image, "notes": notes, "sha256": hashlib.sha256(data).hexdigest(),
            "original_size": tuple(int(v) for v in original)}


# --------------------------------------------------------------------------------------------
# In the server
# --------------------------------------------------------------------------------------------

def read_upload(payload, what: str, max_pixels: float | None = None, box=None,
                full_size_max_mp: float | None = None) -> Upload | None:
    """Decode an uploaded image in the box; AppInputError / ImageReadError with a clear message if
    it can't be. With `max_pixels`, a photo more than 4× larger is decoded at a reduced size (see
    `qatie.imageio.decode_image`); the caller still resizes to the exact target. With
    `full_size_max_mp`, a larger photo is refused from its header. `box`: a `app.boundary.box.Box` to
    reuse (several photos of one request); otherwise one of its own."""
    from app.boundary import box as boxes

    found = payload_path(payload)
    if found is None:
        return None
    path, name = found
    args = (str(path), name, what, max_pixels, full_size_max_mp)
    if box is not None:
        got = box.call(decode_upload, *args, seconds=DECODE_DEADLINE_S)
    else:
        got = boxes.run(decode_upload, *args, seconds=DECODE_DEADLINE_S, what=f"Reading the {what}")
    image = got["image"]
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise AppInputError(f"{what} {name!r}: the decoder returned no RGB image")
    return Upload(image, name, [str(n) for n in got["notes"]], str(got["sha256"]),
                  tuple(int(v) for v in got["original_size"]))
