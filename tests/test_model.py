"""The network: parameter counts, structure, variants, any input size, output range; padding."""
import numpy as np
import pytest
import torch

import qatie
from qatie.model.network import VARIANTS, QConv2d, build_model, count_parameters
from qatie.padding import MIN_SIDE, crop, pad_nchw, pad_torch, plan_padding
from conftest import assert_close
from tolerances import TOLERANCES


@pytest.mark.parametrize("width,count", [(16, 230_083), (24, 515_811), (32, 915_331)])
def test_parameter_counts(width, count):
    model = build_model(width)
    assert count_parameters(model) == count
    assert len(model.convs()) == 35
    assert all(isinstance(m, QConv2d) for m in model.convs())


def test_package_level_build_model():
    assert count_parameters(qatie.build_model(width=16)) == 230_083


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_build_and_run(variant):
    torch.manual_seed(0)
    model = build_model(8, variant).eval()
    # Make delta non-zero so the variants actually differ from the identity.
    torch.nn.init.normal_(model.delta.weight, std=0.1)
    x = torch.rand(2, 3, 20, 13)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_fresh_model_is_identity():
    model = build_model(8).eval()
    x = torch.rand(1, 3, 17, 9)
    with torch.no_grad():
        assert torch.equal(model(x), x)


@pytest.mark.parametrize("bad", [dict(variant="nope"), dict(width=2), dict(width="32"), dict(width=8.0)])
def test_bad_variant_or_width(bad):
    with pytest.raises(ValueError):
        build_model(**{"width": 8, **bad})


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (33, 17), (16, 16), (8, 40)])
def test_any_size_preserved_and_in_range(h, w):
    torch.manual_seed(h * 100 + w)
    model = build_model(8).eval()
    for conv in model.convs():
        torch.nn.init.normal_(conv.weight, std=0.3)
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, h, w)
    assert torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_padding_plan_modes():
    p = plan_padding(33, 17)
    assert (p.bottom, p.right) == (7, 7)  # 40 and 24
    assert p.mode_h == "reflect" and p.mode_w == "reflect"
    tiny = plan_padding(1, 5)
    assert (tiny.bottom, tiny.right) == (MIN_SIDE - 1, MIN_SIDE - 5)
    assert tiny.mode_h == "edge" and tiny.mode_w == "edge"  # too small to reflect
    assert plan_padding(32, 64).is_noop
    with pytest.raises(ValueError):
        plan_padding(0, 4)


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (33, 17), (24, 16)])
def test_pad_crop_inverse_numpy_and_torch_agree(h, w):
    x = np.random.default_rng(0).random((2, 3, h, w)).astype(np.float32)
    padded, plan = pad_nchw(x)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert min(padded.shape[-2:]) >= MIN_SIDE
    assert np.array_equal(crop(padded, plan), x)
    tp, tplan = pad_torch(torch.from_numpy(x))
    assert tplan == plan
    np.testing.assert_array_equal(tp.numpy(), padded)


def test_reflect_padding_values():
    x = np.arange(9 * 10, dtype=np.float32).reshape(1, 1, 9, 10)
    padded, plan = pad_nchw(x)
    assert plan.mode_h == "reflect"
    # Row 9 (first padded row) mirrors row 7 (reflect excludes the edge row itself).
    np.testing.assert_array_equal(padded[0, 0, 9, :10], x[0, 0, 7])
    one = np.full((1, 3, 1, 1), 0.25, np.float32)
    p1, _ = pad_nchw(one)
    assert p1.shape == (1, 3, 16, 16) and np.all(p1 == 0.25)  # edge replication


@pytest.mark.parametrize("variant", VARIANTS)
def test_subpixel_form_computes_the_same_function(variant):
    """The INT8 scheme's form of the up-convs (four 2×2 phase convs on the low-resolution input,
    interleaved) is nearest-2× + 3×3 conv, and delta on up1's stacked phases is delta on their
    interleave — in float, up to rounding."""
    import torch.nn.functional as F

    from qatie.model.network import delta_phase_weights, interleave_phases, unstack_delta

    torch.manual_seed(0)
    m = build_model(8, variant).eval()
    for c in m.convs():
        torch.nn.init.normal_(c.weight, std=0.1)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        plain = m(x)
        m.set_subpixel(True)
        sub = m(x)
    # the network does something (not a vacuous comparison): on average it moves a pixel further
    # than a fresh network, the identity up to 8-bit rounding, may move any one
    assert (plain - x).abs().mean() > TOLERANCES["untrained_identity_max_abs"]
    assert_close(sub, plain, "subpixel_vs_direct")
    ys = [torch.randn(2, 5, 6, 7) for _ in range(4)]
    for a in (0, 1):
        for b in (0, 1):
            assert torch.equal(interleave_phases(ys)[:, :, a::2, b::2], ys[2 * a + b])
    w, bias = torch.randn(3, 5, 3, 3), torch.randn(3)
    d = F.conv2d(torch.cat(ys, 1), delta_phase_weights(w), bias.repeat(4), padding=1)
    on_phases = unstack_delta(d, 3)
    assert_close(on_phases, F.conv2d(interleave_phases(ys), w, bias, padding=1), "subpixel_vs_direct")
    assert int((delta_phase_weights(w) != 0).sum()) == 4 * w.numel()  # every weight placed once per phase
