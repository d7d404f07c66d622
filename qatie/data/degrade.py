"""Phone-camera degradation model: turns a clean photo into what a cheap phone camera produces.

The order follows a camera pipeline. In linear light: lens blur, exposure error, white-balance
cast, then signal-dependent sensor noise (Poisson–Gaussian, optionally spatially correlated as
demosaicing makes it). Back in sRGB: gamma/tone error, contrast and saturation loss, 8-bit
quantisation and JPEG re-compression.

Strength is drawn per image from `DegradationConfig`. The tone errors have a consistent
direction (flat contrast, washed-out colour, under-exposure — the look of a cheap ISP), as a
real camera's are: a random-direction mix was measured here to be unlearnable in an hour of
training (the model stayed at the identity), while this one is learned within a few hundred
steps. Only half the images get tone errors at all: the other half have correct tones and
only noise, blur or JPEG to undo, like a real photo taken in good light — without them the
model re-grades every photo (measured: −7.5 dB on the real PolyU pairs). A share of images
stays clean and a share is only mildly degraded: an enhancer must learn to leave a good photo alone, not only to fix bad
ones (the commonest failure of models trained on synthetic degradations is re-grading photos
that were already right). Even half was too many for real photos: the shipped model trains
with `p_tone = 0` (configs/restoration.json; docs/training.md, "The phone-camera degradation model"), while the
evaluation sets keep the tone errors. Everything is drawn from one numpy Generator seeded by the caller, so
a seed gives the same degraded image on every machine.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class DegradationConfig:
    """Ranges (low, high) and probabilities of every degradation; the one place they live."""

    p_clean: float = 0.20  # left untouched
    p_mild: float = 0.25  # every strength multiplied by `mild_scale`
    mild_scale: float = 0.35
    p_tone: float = 0.5  # the tone block (exposure, white balance, gamma, contrast) applies at all
    p_tone_each: float = 0.8  # …and then each of its four errors with this probability
    exposure_stops: tuple[float, float] = (-0.5, 0.0)  # cheap sensors under-expose
    wb_gain: tuple[float, float] = (0.93, 1.07)  # red and blue gains relative to green
    gamma: tuple[float, float] = (0.9, 1.1)
    contrast: tuple[float, float] = (0.7, 0.85)  # the flat tone curve of a cheap ISP
    saturation: tuple[float, float] = (0.6, 0.8)  # washed-out colour
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 0.9)
    p_noise: float = 0.9
    shot_noise: tuple[float, float] = (2e-4, 3e-3)  # variance per unit of linear signal
    read_noise: tuple[float, float] = (1e-6, 1e-4)  # variance floor
    p_correlated_noise: float = 0.5
    noise_corr_sigma: tuple[float, float] = (0.4, 0.9)
    p_jpeg: float = 0.7
    jpeg_quality: tuple[int, int] = (50, 92)

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = DegradationConfig()


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _lerp(lo_hi, neutral: float, strength: float, u: float) -> float:
    """A value drawn uniformly in lo_hi, pulled towards `neutral` by (1 − strength)."""
    lo, hi = lo_hi
    return neutral + strength * (lo + u * (hi - lo) - neutral)


def degrade(clean: np.ndarray, rng: np.random.Generator | int, config: DegradationConfig = DEFAULT) -> np.ndarray:
    """Degrade an H×W×3 float32 sRGB image in [0,1]; `rng` is a Generator or an integer seed."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    c = config
    # Draw every random number up front in a fixed order, so each knob's draw is stable.
    u = rng.random(24)
    if u[0] < c.p_clean:
        return (np.round(np.clip(clean, 0, 1) * 255) / 255).astype(np.float32)
    s = c.mild_scale if u[1] < c.p_mild else 1.0
    lin = srgb_to_linear(np.clip(clean.astype(np.float64), 0, 1))

    if u[2] < c.p_blur:
        sigma = _lerp(c.blur_sigma, 0.0, s, u[3])
        lin = gaussian_filter(lin, sigma=(sigma, sigma, 0), mode="reflect")
    tone = u[21] < c.p_tone  # half the images keep correct tones: only noise/blur/JPEG to undo
    if tone and u[4] < c.p_tone_each:
        lin = lin * 2.0 ** _lerp(c.exposure_stops, 0.0, s, u[5])
    if tone and u[6] < c.p_tone_each:
        gains = np.array([_lerp(c.wb_gain, 1.0, s, u[7]), 1.0, _lerp(c.wb_gain, 1.0, s, u[8])])
        lin = lin * gains
    if u[9] < c.p_noise:
        shot = _lerp(c.shot_noise, 0.0, s, u[10])
        read = _lerp(c.read_noise, 0.0, s, u[11])
        std = np.sqrt(shot * np.clip(lin, 0, None) + read)
        noise = rng.standard_normal(lin.shape)
        if u[12] < c.p_correlated_noise:
            sig = c.noise_corr_sigma[0] + u[13] * (c.noise_corr_sigma[1] - c.noise_corr_sigma[0])
            noise = gaussian_filter(noise, sigma=(sig, sig, 0), mode="reflect")
            noise /= max(float(noise.std()), 1e-8)
        lin = lin + std * noise
    img = linear_to_srgb(lin)
    if tone and u[14] < c.p_tone_each:
        img = img ** _lerp(c.gamma, 1.0, s, u[15])
    if tone and u[16] < c.p_tone_each:
        mean = img.mean()
        img = mean + (img - mean) * _lerp(c.contrast, 1.0, s, u[17])
        gray = img.mean(axis=2, keepdims=True)
        img = gray + (img - gray) * _lerp(c.saturation, 1.0, s, u[18])
    img8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    if u[19] < c.p_jpeg:
        quality = int(round(_lerp(c.jpeg_quality, 100.0, s, u[20])))
        buf = io.BytesIO()
        Image.fromarray(img8).save(buf, format="JPEG", quality=min(quality, 95))
        img8 = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return img8.astype(np.float32) / 255.0


def seed_for(name: str, seed: int) -> np.random.Generator:
    """A generator for one named image at a global seed: stable across machines and file order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
