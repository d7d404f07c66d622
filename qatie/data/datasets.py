"""Training and evaluation data: sources named by a SPEC string, patch sampling, fixed splits.

SPEC forms: `clean:DIR` (clean photos, degraded on the fly by `qatie.data.degrade`),
`pairs:INPUT_DIR,TARGET_DIR` (aligned pairs matched by file stem), `dped:ROOT[:phone]` (the
DPED layout the paper trains on) and `samples` (colour photos bundled inside scikit-image).

Batches are drawn from a generator seeded by (seed, step, rank): a resumed or distributed run
sees exactly the batches it would have seen uninterrupted.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from qatie.data import degrade as degrade_mod
from qatie.errors import QatieError
from qatie.imageio import list_images, read_image, to_uint8

SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right",
                "immunohistochemistry", "retina", "hubble_deep_field", "colorwheel", "logo")
# skimage.data.cat() is chelsea again, so it is not listed (a duplicate would leak between splits).
PHOTO_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right")
SPLIT_FILE = Path(__file__).with_name("clean_split.json")


def sample_images(names=PHOTO_SAMPLES) -> dict[str, np.ndarray]:
    """scikit-image's bundled colour photos as float32 RGB (no download: they ship in the wheel)."""
    import skimage.data

    out = {}
    for name in names:
        if name in ("motorcycle_left", "motorcycle_right"):  # one stereo pair: (left, right, disparity)
            left, right, _ = skimage.data.stereo_motorcycle()
            img = left if name == "motorcycle_left" else right
        else:
            img = getattr(skimage.data, name)()
        if img.ndim == 3 and img.shape[2] >= 3:
            out[name] = img[..., :3].astype(np.float32) / 255.0
    return out


@dataclass
class Source:
    """A list of (input, target) uint8 images; input None means: degrade the target on the fly."""

    spec: str
    names: list[str]
    targets: Sequence[np.ndarray]  # a list, or DecodedOnUse
    inputs: list[np.ndarray | None] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return not self.inputs or self.inputs[0] is None

    def describe(self) -> str:
        kind = "clean photos + phone-camera degradation" if self.synthetic else "aligned pairs"
        return f"{self.spec}: {len(self.targets)} images ({kind})"


def _stem_map(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in list_images(folder)}


def _load(paths) -> list[np.ndarray]:
    return [to_uint8(read_image(p)) for p in paths]


class DecodedOnUse(Sequence):
    """Image files decoded the first time each is used, then kept. Calibration draws a few crops
    from a folder of hundreds of photos; it decodes those few, not the folder (`load_source(…,
    lazy=True)`). Training keeps eager loading: a corrupt file stops it before step 1."""

    def __init__(self, paths):
        self.paths = list(paths)
        self._decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices; IndexError past the end
        if i not in self._decoded:
            self._decoded[i] = to_uint8(read_image(self.paths[i]))
        return self._decoded[i]


def match_pairs(input_dir, target_dir) -> list[tuple[str, Path, Path]]:
    """(stem, input, target) for every stem present in both folders."""
    a, b = _stem_map(Path(input_dir)), _stem_map(Path(target_dir))
    common = sorted(set(a) & set(b))
    if not common:
        raise QatieError(f"no file stems in common between {input_dir} and {target_dir}")
    return [(s, a[s], b[s]) for s in common]


def dped_dirs(root, phone: str | None = None, split: str = "train") -> tuple[Path, Path]:
    """Input/target folders of a DPED tree: ROOT/<phone>/training_data/{<phone>,canon}/ and
    ROOT/<phone>/test_data/patches/{<phone>,canon}/."""
    root = Path(root)
    phones = [phone] if phone else sorted(p.name for p in root.iterdir() if (p / "training_data").is_dir()) if root.is_dir() else []
    if not phones:
        raise QatieError(f"{root}: no DPED phone folders (expected ROOT/<phone>/training_data/<phone>/ and canon/)")
    base = root / phones[0] / ("training_data" if split == "train" else "test_data/patches")
    inp, tgt = base / phones[0], base / "canon"
    if not inp.is_dir() or not tgt.is_dir():
        raise QatieError(f"{root}: DPED layout not found — missing {inp if not inp.is_dir() else tgt}")
    return inp, tgt


def load_split() -> dict:
    """The fixed split of ../shared/data/clean: which files are test and validation, never trained on."""
    return json.loads(SPLIT_FILE.read_text())


def split_files(clean_root, part: str) -> list[Path]:
    """Files of the documented split `part` ("train", "val" or "test") under a clean-photo root.
    The split applies when the root is the shared clean set (subfolders named in the split file)."""
    root = Path(clean_root)
    split = load_split()
    held = set(split["test"]) | set(split["val"])
    if part in ("test", "val"):
        files = [root / rel for rel in split[part] if (root / rel).exists()]
    else:
        files = [p for p in _all_clean(root) if p.relative_to(root).as_posix() not in held]
    return files


def _all_clean(root: Path) -> list[Path]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    files = list_images(root)
    for d in subdirs:
        files += list_images(d)
    return files


def _uses_split(root: Path) -> bool:
    split = load_split()
    return any((root / rel).exists() for rel in split["test"][:5])


def load_source(spec: str, part: str = "train", lazy: bool = False) -> Source:
    """Load a data SPEC into memory. For `clean:DIR` on the shared set, `part` selects the split;
    `lazy`: its photos are decoded when first used (`DecodedOnUse`), not all up front."""
    kind, _, arg = spec.partition(":")
    if kind == "samples":
        imgs = sample_images()
        return Source(spec, list(imgs), [to_uint8(v) for v in imgs.values()])
    if kind == "clean":
        root = Path(arg)
        if not root.is_dir():
            raise QatieError(f"{spec}: {root} is not a folder")
        files = split_files(root, part) if _uses_split(root) else _all_clean(root)
        if not files:
            raise QatieError(f"{spec}: no images found")
        photos = DecodedOnUse(files) if lazy else _load(files)
        return Source(spec, [f.relative_to(root).as_posix() for f in files], photos)
    if kind in ("pairs", "dped"):
        if kind == "pairs":
            if "," not in arg:
                raise QatieError(f"{spec}: expected pairs:INPUT_DIR,TARGET_DIR")
            inp, tgt = arg.split(",", 1)
        else:
            root, _, phone = arg.partition(":")
            inp, tgt = dped_dirs(root, phone or None, "train" if part == "train" else "test")
        pairs = match_pairs(inp, tgt)
        inputs, targets = _load(p for _, p, _ in pairs), _load(t for _, _, t in pairs)
        for (stem, _, _), a, b in zip(pairs, inputs, targets):
            if a.shape != b.shape:
                raise QatieError(f"{spec}: {stem} input {a.shape[:2]} and target {b.shape[:2]} differ in size")
        return Source(spec, [s for s, _, _ in pairs], targets, inputs)
    raise QatieError(f"unknown data SPEC {spec!r}: use clean:DIR, pairs:INPUT_DIR,TARGET_DIR, dped:ROOT[:phone] or samples")


def augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / 90° rotation applied to every array of an aligned pair."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k)
        out.append(a[:, ::-1] if flip else a)
    return out


class PatchSampler:
    """Draws (input, target) batches of random aligned crops from one or more sources.

    `global_share` of the synthetic crops are cut from the whole photo downscaled to just over
    the patch size, so the crop shows (nearly) the whole scene. Tone errors are global: telling
    a flat, dark photo from a correct one needs the whole picture (its black and white points),
    which a 128-pixel crop of a 1024-pixel photo does not show — and the full-size image the
    model sees in use does.
    """

    def __init__(self, sources: list[Source], patch: int, degradation=degrade_mod.DEFAULT,
                 global_share: float = 0.0):
        self.items = [(src, i) for src in sources for i in range(len(src.targets))]
        if not self.items:
            raise QatieError("no training images")
        if not 0.0 <= global_share <= 1.0:
            raise QatieError(f"global_share must be in [0, 1], got {global_share}")
        self.patch = patch
        self.degradation = degradation
        self.global_share = global_share
        self._whole: dict[tuple[int, int], np.ndarray] = {}

    def whole_view(self, src: Source, i: int) -> np.ndarray:
        """The photo downscaled (area filter) so its short side is 1.25 × patch; cached."""
        key = (id(src), i)
        if key not in self._whole:
            tgt = src.targets[i]
            h, w = tgt.shape[:2]
            f = min(1.0, 1.25 * self.patch / min(h, w))
            size = (max(self.patch, round(w * f)), max(self.patch, round(h * f)))
            self._whole[key] = np.asarray(Image.fromarray(tgt).resize(size, Image.Resampling.BOX))
        return self._whole[key]

    def crop_pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        src, i = self.items[int(rng.integers(len(self.items)))]
        tgt = src.targets[i]
        if self.global_share > 0 and src.synthetic and rng.random() < self.global_share:
            tgt = self.whole_view(src, i)
        h, w = tgt.shape[:2]
        p = min(self.patch, h, w)
        y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        t = tgt[y:y + p, x:x + p].astype(np.float32) / 255.0
        if src.synthetic:
            inp = degrade_mod.degrade(t, rng, self.degradation)
        else:
            inp = src.inputs[i][y:y + p, x:x + p].astype(np.float32) / 255.0
        inp, t = augment([inp, t], rng)
        return _fit(inp, self.patch), _fit(t, self.patch)

    def batch(self, batch_size: int, seed: int, step: int, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """N×3×P×P float32 input and target arrays for one optimisation step."""
        rng = np.random.default_rng([seed, step, rank])
        pairs = [self.crop_pair(rng) for _ in range(batch_size)]
        inp = np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2)
        tgt = np.stack([p[1] for p in pairs]).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(inp), np.ascontiguousarray(tgt)


def _fit(a: np.ndarray, p: int) -> np.ndarray:
    """Reflect-pad a crop smaller than the patch size (tiny images) up to p×p."""
    h, w = a.shape[:2]
    if h == p and w == p:
        return np.ascontiguousarray(a)
    return np.pad(a, ((0, p - h), (0, p - w), (0, 0)), mode="edge")


def eval_pairs(input_dir=None, target_dir=None, clean_dir=None, seed: int = 0, part: str = "test",
               limit: int | None = None, degradation=None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, input, target) float images for evaluation: real pairs, or clean photos degraded at
    a fixed seed (the test split when `clean_dir` is the shared set; never the clean-pass case).
    `degradation` replaces EVAL_DEGRADATION (e.g. with tone errors off) for the clean photos."""
    if clean_dir is not None:
        root = Path(clean_dir)
        files = split_files(root, part) if _uses_split(root) else _all_clean(root)
        cfg = degradation or EVAL_DEGRADATION
        out = []
        for f in files[:limit]:
            name = f.relative_to(root).as_posix()
            t = read_image(f)
            out.append((name, degrade_mod.degrade(t, degrade_mod.seed_for(name, seed), cfg), t))
        return out
    if clean_dir is None and (input_dir is None or target_dir is None):
        raise QatieError("give --input-dir and --target-dir, or --clean-dir")
    pairs = match_pairs(input_dir, target_dir)[:limit]
    return [(s, read_image(a), read_image(b)) for s, a, b in pairs]


# Test sets are always degraded: no clean pass, and sensor noise always (without it 1 % of images
# drew no degradation at all and scored infinite PSNR for the input).
EVAL_DEGRADATION = degrade_mod.DegradationConfig(p_clean=0.0, p_noise=1.0)
