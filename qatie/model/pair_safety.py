"""The invariant that makes an INT8 model exact on every CPU, checked from its weights alone.

x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) run ONNX Runtime's U8S8 convs with VPMADDUBSW,
which adds the products of two adjacent weights with their uint8 activations into a *saturating*
int16 (`qatie.runtime.int8_reference` models it bit for bit). Activations reach 255, so a pair of weights
of the same sign can leave int16 exactly when |w0| + |w1| ≥ 129 (255·129 = 32895 > 32767); at
128 (255·128 = 32640) no input can. A model with no such pair computes the exact integer result on
every kernel path — which QuantSpec v3 (`qatie.model.quant.weight_levels`) guarantees. numpy only: the
app checks uploaded models with it without importing torch.
"""
from __future__ import annotations

import numpy as np

#: The largest |w0| + |w1| of a same-sign weight pair that no uint8 input can push out of int16.
PAIR_SUM_LIMIT = 128


def risky_weight_pairs(w: np.ndarray) -> int:
    """Pairs of an int8 O×C×kh×kw weight, taken as MLAS takes them — k = (row·kw + column)·C +
    channel, k = 2j and 2j+1, an odd count padded with a zero — whose products can leave int16 for
    some uint8 input: both of the same sign and |w0| + |w1| > `PAIR_SUM_LIMIT`."""
    w = np.asarray(w)
    wm = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]).astype(np.int32)
    if wm.shape[0] % 2:
        wm = np.vstack([wm, np.zeros((1, wm.shape[1]), np.int32)])
    w0, w1 = wm[0::2], wm[1::2]
    return int(((np.sign(w0) * np.sign(w1) > 0) & (np.abs(w0) + np.abs(w1) > PAIR_SUM_LIMIT)).sum())
