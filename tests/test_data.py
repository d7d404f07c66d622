"""Data: the degradation model's determinism, data SPECs, the DPED layout, pair matching,
patch sampling, evaluation pairs and the fixed split of the shared clean set."""
import dataclasses
import json
import zlib

import numpy as np
import pytest

from conftest import assert_close, make_image, needs_shared
from qatie.data import datasets as data_mod
from qatie.data.datasets import (EVAL_DEGRADATION, PatchSampler, augment, dped_dirs, eval_pairs, load_source,
                        load_split, match_pairs, sample_images, split_files)
from qatie.data.degrade import DEFAULT, DegradationConfig, degrade, linear_to_srgb, seed_for, srgb_to_linear
from qatie.errors import QatieError
from qatie.imageio import write_image
from tolerances import TOLERANCES

# ---------------------------------------------------------------------------- degradation


def test_same_seed_same_image_different_seed_differs():
    img = make_image(40, 48, seed=1)
    cfg = dataclasses.replace(DEFAULT, p_clean=0.0)
    a, b = degrade(img, 7, cfg), degrade(img, 7, cfg)
    assert np.array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == img.shape
    assert np.all((a >= 0) & (a <= 1))
    assert np.array_equal(a, np.round(a * 255) / 255)  # 8-bit levels, like a camera's output
    outs = [degrade(img, s, cfg) for s in range(6)]
    assert sum(not np.array_equal(outs[0], o) for o in outs[1:]) == 5


def test_generator_and_int_seed_agree():
    img = make_image(16, 16, seed=2)
    assert np.array_equal(degrade(img, np.random.default_rng(3)), degrade(img, 3))


def test_seed_for_is_name_stable():
    g1, g2 = seed_for("cbsd68/101085.png", 0), seed_for("cbsd68/101085.png", 0)
    assert np.array_equal(g1.random(5), g2.random(5))
    # A function of (seed, crc32(name)) only: the same on every machine and in any file order.
    ref = np.random.default_rng([0, zlib.crc32(b"cbsd68/101085.png")]).random(5)
    assert np.array_equal(seed_for("cbsd68/101085.png", 0).random(5), ref)
    assert not np.array_equal(seed_for("a.png", 0).random(5), seed_for("b.png", 0).random(5))
    assert not np.array_equal(seed_for("a.png", 0).random(5), seed_for("a.png", 1).random(5))


def test_clean_pass_returns_input():
    img = (np.round(make_image(12, 10) * 255) / 255).astype(np.float32)
    always_clean = DegradationConfig(p_clean=1.0)
    assert np.array_equal(degrade(img, 0, always_clean), img)


def test_degradation_strengths_hurt_quality():
    from qatie.metrics import psnr

    img = make_image(64, 64, seed=3)
    strong = DegradationConfig(p_clean=0.0, p_mild=0.0, p_tone=1.0, p_blur=1.0, p_noise=1.0, p_jpeg=1.0)
    scores = [psnr(degrade(img, s, strong), img) for s in range(4)]
    print(f"every degradation at once: PSNR {np.round(scores, 2).tolist()} dB")
    assert max(scores) < TOLERANCES["strong_degradation_max_psnr_db"], scores


def test_srgb_linear_roundtrip():
    x = np.linspace(0, 1, 101)
    assert_close(linear_to_srgb(srgb_to_linear(x)), x, "float64_round_trip_max_abs")


def test_eval_degradation_never_clean():
    assert EVAL_DEGRADATION.p_clean == 0.0 and EVAL_DEGRADATION.p_noise == 1.0
    assert dataclasses.replace(EVAL_DEGRADATION, p_clean=DEFAULT.p_clean, p_noise=DEFAULT.p_noise) == DEFAULT
    from qatie.data.degrade import degrade

    img = np.full((16, 16, 3), 0.5, np.float32)
    assert all(not np.array_equal(degrade(img, seed, EVAL_DEGRADATION), img) for seed in range(200))
    assert json.dumps(DEFAULT.to_dict())  # JSON-able (stored with checkpoints/results)


# ---------------------------------------------------------------------------- sources


def test_samples_source():
    src = load_source("samples")
    assert src.synthetic and len(src.targets) == len(data_mod.PHOTO_SAMPLES) >= 5
    assert all(t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3 for t in src.targets)
    assert len({t.tobytes() for t in src.targets}) == len(src.targets)  # no duplicate photo
    assert set(sample_images(data_mod.SAMPLE_NAMES)) == set(data_mod.SAMPLE_NAMES)


def _write_pair_tree(root, stems, size=(20, 24), suffix=".jpg", seed=0):
    for i, s in enumerate(stems):
        img = make_image(*size, seed=seed + i)
        write_image(root[0] / f"{s}{suffix}", np.clip(img * 0.8, 0, 1))
        write_image(root[1] / f"{s}{suffix}", img)


def test_dped_layout(tmp_path):
    root = tmp_path / "DPED"
    tr = (root / "iphone/training_data/iphone", root / "iphone/training_data/canon")
    te = (root / "iphone/test_data/patches/iphone", root / "iphone/test_data/patches/canon")
    _write_pair_tree(tr, ["0", "1", "2", "10"])
    _write_pair_tree(te, ["0", "1"], seed=50)
    (root / "iphone/training_data/iphone/extra.jpg").write_bytes((tr[0] / "0.jpg").read_bytes())  # unpaired
    assert dped_dirs(root) == tr
    assert dped_dirs(root, "iphone", "test") == te
    src = load_source(f"dped:{root}:iphone")
    assert not src.synthetic and src.names == ["0", "1", "10", "2"]  # unpaired file left out
    assert all(a.shape == b.shape == (20, 24, 3) for a, b in zip(src.inputs, src.targets))
    val = load_source(f"dped:{root}", part="val")
    assert val.names == ["0", "1"]
    with pytest.raises(QatieError, match="DPED"):
        dped_dirs(tmp_path / "nowhere")
    with pytest.raises(QatieError, match="missing"):
        dped_dirs(root, "sony")


def test_pairs_matched_by_stem(tmp_path):
    a, b = tmp_path / "in", tmp_path / "tgt"
    _write_pair_tree((a, b), ["x", "y"], suffix=".png")
    write_image(a / "z.png", make_image(8, 8))  # no target: ignored
    write_image(b / "w.jpg", make_image(8, 8))  # no input: ignored
    write_image(a / "v.png", make_image(8, 8))
    write_image(b / "v.jpg", make_image(8, 8))  # same stem, other format: a pair
    pairs = match_pairs(a, b)
    assert [s for s, _, _ in pairs] == ["v", "x", "y"]
    assert all(i.stem == t.stem for _, i, t in pairs)
    src = load_source(f"pairs:{a},{b}")
    assert src.names == ["v", "x", "y"] and not src.synthetic
    with pytest.raises(QatieError, match="in common"):
        match_pairs(a, _empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    return d


def test_pairs_size_mismatch_and_bad_specs(tmp_path):
    a, b = tmp_path / "in", tmp_path / "tgt"
    write_image(a / "p.png", make_image(8, 10))
    write_image(b / "p.png", make_image(10, 8))
    with pytest.raises(QatieError, match="differ in size"):
        load_source(f"pairs:{a},{b}")
    for spec in ("nope:x", "pairs:onlyone", f"clean:{tmp_path / 'missing'}"):
        with pytest.raises(QatieError):
            load_source(spec)
    with pytest.raises(QatieError, match="no images"):
        load_source(f"clean:{_empty(tmp_path)}")


def test_clean_source_includes_subfolders(tmp_path):
    write_image(tmp_path / "c" / "a.png", make_image(10, 12))
    write_image(tmp_path / "c" / "sub" / "b.jpg", make_image(10, 12))
    src = load_source(f"clean:{tmp_path / 'c'}")
    assert src.synthetic and src.names == ["a.png", "sub/b.jpg"]


# ---------------------------------------------------------------------------- sampling


def test_patch_sampler_is_seeded_by_step_and_rank(tmp_path):
    a, b = tmp_path / "in", tmp_path / "tgt"
    _write_pair_tree((a, b), ["x", "y"], size=(30, 40), suffix=".png")
    sources = [load_source("samples"), load_source(f"pairs:{a},{b}")]
    s = PatchSampler(sources, patch=24)
    x1, t1 = s.batch(3, seed=0, step=5)
    x2, t2 = s.batch(3, seed=0, step=5)
    assert x1.shape == t1.shape == (3, 3, 24, 24) and x1.dtype == np.float32
    assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert not np.array_equal(s.batch(3, 0, 6)[1], t1)
    assert not np.array_equal(s.batch(3, 0, 5, rank=1)[1], t1)


def test_tiny_images_padded_to_patch():
    src = data_mod.Source("tiny", ["t"], [np.full((5, 7, 3), 100, np.uint8)])
    x, t = PatchSampler([src], patch=16).batch(2, 0, 0)
    assert x.shape == t.shape == (2, 3, 16, 16)


def test_global_crops_show_the_whole_photo():
    # A horizontal ramp 0…255 across 600 px (400 tall): a native 64-px crop spans 63 of its 599
    # steps, about 11 %; a crop of the whole-photo view (box-reduced to 120×80 px, each pixel the
    # mean of 5 columns) spans 63 of the view's steps of 5 columns each, over half of the ramp.
    # (±1 level: the ramp and the view are rounded to uint8.)
    w, patch = 600, 64
    ramp = np.repeat(np.linspace(0, 255, w)[None, :, None], 3, axis=2)
    src = data_mod.Source("clean:ramp", ["r"], [np.repeat(ramp, 400, axis=0).astype(np.uint8)])
    clean = DegradationConfig(p_clean=1.0)
    sampler = PatchSampler([src], patch=patch, degradation=clean, global_share=1.0)
    columns_per_view_pixel = w / sampler.whole_view(src, 0).shape[1]

    def spans(share):
        _, t = PatchSampler([src], patch=patch, degradation=clean, global_share=share).batch(8, 0, 0)
        return [float(np.ptp(im[0])) for im in t]  # augment may rotate: ptp over the whole crop

    assert max(spans(0.0)) <= (patch - 1) / (w - 1) + 1 / 255
    assert min(spans(1.0)) >= (patch - 1) * columns_per_view_pixel / (w - 1) - 1 / 255
    with pytest.raises(QatieError, match="global_share"):
        PatchSampler([src], patch=64, global_share=1.5)


def test_global_crops_leave_real_pairs_alone(tmp_path):
    a, b = tmp_path / "in", tmp_path / "tgt"
    _write_pair_tree((a, b), ["x"], size=(30, 40), suffix=".png")
    pairs = load_source(f"pairs:{a},{b}")
    x1, t1 = PatchSampler([pairs], patch=24).batch(4, 0, 3)
    x2, t2 = PatchSampler([pairs], patch=24, global_share=1.0).batch(4, 0, 3)
    assert np.array_equal(x1, x2) and np.array_equal(t1, t2)  # real noise is never resampled


def test_augment_keeps_pairs_aligned():
    rng = np.random.default_rng(0)
    a = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    for _ in range(8):
        x, y = augment([a, a + 1], rng)
        assert np.array_equal(x + 1, y)


# ---------------------------------------------------------------------------- evaluation pairs


def test_eval_pairs_clean_matches_degrade_with_name_seed(tmp_path):
    d = tmp_path / "c"
    write_image(d / "one.png", make_image(20, 30, seed=4))
    write_image(d / "two.png", make_image(20, 30, seed=5))
    pairs = eval_pairs(clean_dir=d, seed=3)
    assert [n for n, _, _ in pairs] == ["one.png", "two.png"]
    name, inp, tgt = pairs[0]
    from qatie.imageio import read_image

    expected = degrade(read_image(d / "one.png"), seed_for("one.png", 3), EVAL_DEGRADATION)
    assert np.array_equal(inp, expected) and np.array_equal(tgt, read_image(d / "one.png"))
    assert len(eval_pairs(clean_dir=d, seed=3, limit=1)) == 1
    again = eval_pairs(clean_dir=d, seed=3)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(pairs, again))
    with pytest.raises(QatieError):
        eval_pairs()


def test_split_file_is_disjoint():
    split = load_split()
    test, val = set(split["test"]), set(split["val"])
    assert test and val and not (test & val)
    assert len(test) == len(split["test"]) and len(val) == len(split["val"])


@needs_shared
def test_shared_split_files_exist(shared_clean):
    split = load_split()
    missing = [rel for rel in split["test"] + split["val"] if not (shared_clean / rel).is_file()]
    assert not missing
    train = split_files(shared_clean, "train")
    held = set(split["test"]) | set(split["val"])
    assert train and not {p.relative_to(shared_clean).as_posix() for p in train} & held
    assert len(train) + len(held) == len(data_mod._all_clean(shared_clean))


@needs_shared
def test_shared_eval_uses_test_split(shared_clean):
    pairs = eval_pairs(clean_dir=shared_clean, seed=0, limit=2)
    assert [n for n, _, _ in pairs] == load_split()["test"][:2]
    assert all(i.shape == t.shape for _, i, t in pairs)


def test_calibration_decodes_only_the_photos_its_crops_come_from(tmp_path, monkeypatch):
    """A lazy clean source gives the same crops as an eager one, decoding only the photos drawn."""
    from qatie.quantize.ptq import calibration_images

    for i in range(12):
        write_image(tmp_path / f"p{i:02d}.png", make_image(40 + 4 * i, 56, seed=i))
    decoded = []
    real = data_mod.read_image
    monkeypatch.setattr(data_mod, "read_image", lambda p: decoded.append(p) or real(p))
    crops = calibration_images(f"clean:{tmp_path}", num=3, seed=1, crop=32)
    lazy_reads = len(decoded)
    assert 1 <= lazy_reads <= 3 and lazy_reads == len(set(decoded))  # each photo drawn, decoded once
    eager = load_source(f"clean:{tmp_path}")
    assert len(decoded) == lazy_reads + 12  # the eager source decodes them all
    sampler, rng = PatchSampler([eager], 32), np.random.default_rng([1, 7919])
    for crop in crops:
        assert np.array_equal(crop, sampler.crop_pair(rng)[0])
    lazy = load_source(f"clean:{tmp_path}", lazy=True)
    assert len(lazy.targets) == 12 and np.array_equal(lazy.targets[-1], eager.targets[-1])
    with pytest.raises(IndexError):
        lazy.targets[12]
