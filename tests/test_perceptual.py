"""The perceptual rating: each rung of the ladder of known differences lands in its class (so
the class boundaries cannot drift silently), the paper set's QAT-INT8 and PTQ-INT8 land in
different classes on the photos the ladder uses, and the JPEG yardstick orders qualities."""
import numpy as np
import pytest

from qatie.analysis import perceptual as pc
from qatie.analysis.perceptual_ladder import EXPECTED, PHOTOS, authors_rungs, paper_outputs, rungs


@pytest.fixture(scope="module")
def astronaut():
    out = paper_outputs("astronaut")
    if out is None:
        pytest.skip("the paper set's ONNX files are not in checkpoints/")
    return out


MADE = ("±1 level noise", "uniform +4 levels", "JPEG quality 95", "JPEG quality 80", "blue channel −6 levels")


@pytest.mark.parametrize("rung", MADE)
def test_each_rung_lands_in_its_class(astronaut, rung):
    made = rungs(astronaut["fp32"])[rung]
    s = pc.summarise(pc.delta_e00(astronaut["fp32"], made))
    expected, why = EXPECTED[rung]
    assert pc.visibility(s).rank == expected, (rung, why, s)


@pytest.mark.slow
def test_the_authors_released_files_land_in_their_class():
    """Needs ai-edge-litert and ../shared/reference (skips without them)."""
    pairs = authors_rungs("astronaut")
    if not pairs:
        pytest.skip("ai-edge-litert or the authors' files in ../shared/reference are not here")
    for rung, (fp32, out) in pairs.items():
        s = pc.summarise(pc.delta_e00(fp32, out))
        assert pc.visibility(s).rank == EXPECTED[rung][0], (rung, EXPECTED[rung][1], s)


@pytest.mark.slow
@pytest.mark.parametrize("photo", PHOTOS)
def test_paper_qat_passes_for_full_precision_and_ptq_does_not(photo):
    """QuantSpec v3 models give the exact integer result on every CPU, so this holds everywhere."""
    out = paper_outputs(photo)
    if out is None:
        pytest.skip("the paper set's ONNX files are not in checkpoints/")
    qat = pc.visibility(pc.summarise(pc.delta_e00(out["fp32"], out["qat"])))
    ptq = pc.visibility(pc.summarise(pc.delta_e00(out["fp32"], out["ptq"])))
    assert qat.rank <= 1 < ptq.rank, (photo, qat.name, ptq.name)


def test_every_rung_has_an_expected_class_or_says_it_is_reported_only():
    assert set(MADE) <= set(EXPECTED) and all(why for _, why in EXPECTED.values())


def test_classes_are_ordered_and_the_last_takes_everything():
    bounds = [(c.max_share_visible, c.max_mean_de00) for c in pc.CLASSES]
    assert bounds == sorted(bounds) and [c.rank for c in pc.CLASSES] == list(range(len(pc.CLASSES)))
    assert pc.visibility({"share_visible": 1.0, "mean_de00": 50.0}) is pc.CLASSES[-1]
    assert pc.visibility({"share_visible": 0.0, "mean_de00": 0.0}) is pc.CLASSES[0]


def test_jpeg_yardstick_orders_qualities_and_places_a_difference():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 1, 256, dtype=np.float32)
    img = (np.stack([np.add.outer(x, x) / 2, np.tile(x, (256, 1)), np.tile(x[:, None], (1, 256))], -1) * 200
           + rng.integers(0, 40, (256, 256, 3))).astype(np.uint8)
    ladder = pc.jpeg_ladder(img)
    means = [r["mean_de00"] for r in ladder]  # qualities from best to worst
    assert means == sorted(means), ladder
    q90 = next(r for r in ladder if r["quality"] == 90)
    assert pc.jpeg_equivalent(q90, ladder) == {"quality": 90, "relation": "about"}
    assert pc.jpeg_equivalent({"mean_de00": 0.0}, ladder)["relation"] == "better than"
    assert pc.jpeg_equivalent({"mean_de00": 99.0}, ladder) == {"quality": 50, "relation": "worse than"}


def test_measuring_grid_keeps_small_pictures_whole_and_halves_a_megapixel():
    assert pc.grid_factor(512, 512) == 1 and pc.grid_factor(816, 1224) == 2
    a = np.zeros((816, 1224, 3), np.uint8)
    assert pc.delta_e00(a, a).shape == (408, 612)


@pytest.mark.parametrize("h, w", [(816, 1224), (1081, 1921), (2000, 3001)])
def test_the_measuring_grid_is_each_blocks_mean(h, w):
    """`_reduced` sums blocks in integers (fast); that is exactly the float64 mean of each block,
    on the whole grid and on a sample of its cells (what the JPEG ladder reads)."""
    u8 = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    k = pc.grid_factor(h, w)
    gh, gw = h // k, w // k
    mean = u8[:gh * k, :gw * k].reshape(gh, k, gw, k, 3).mean(axis=(1, 3)).astype(np.float32) / 255.0
    assert k > 1 and np.array_equal(pc._reduced(u8), mean)
    cells = np.random.default_rng(0).choice(gh * gw, 500, replace=False)
    assert np.array_equal(pc._reduced(u8, cells=cells), mean.reshape(-1, 3)[cells])
