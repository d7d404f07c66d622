"""A plain-language verdict generated from the numbers of one comparison.

Written for someone who does not know what PSNR is: how close each INT8 model's picture is to
the full-precision one (in 8-bit levels: 1 level is the smallest step a PNG can store), where
the differences are, what INT8 buys (time, size), and — with a ground truth — whether the
enhancement helped. Every sentence comes from a measured number; nothing is canned.
"""
from __future__ import annotations

import math
import statistics

from .models import ROLE_LABELS

REGION_PHRASES = {
    "smooth": "mostly in smooth areas such as sky, skin or walls",
    "textured": "mostly along edges and in fine texture",
    "shadows": "mostly in dark areas",
    "highlights": "mostly in bright areas",
}


def pct(v: float) -> str:
    if v >= 1.0:
        return "100%"
    if v <= 0.0:
        return "0%"
    if v >= 0.999 or v < 0.01:
        return f"{100 * v:.2f}%"
    return f"{100 * v:.1f}%"


def levels(v: float) -> str:
    n = int(round(v))
    return f"{n} level" if n == 1 else f"{n} levels"


def concentration(where: dict) -> str | None:
    """The region where bad pixels are over-represented the most (≥ 1.4× their area share and
    at least half of them), as a phrase; None when they are spread evenly."""
    best, best_ratio = None, 1.4
    for name, d in where.items():
        if d["area"] < 0.02 or d["share_of_bad"] < 0.5:
            continue
        ratio = d["share_of_bad"] / d["area"]
        if ratio >= best_ratio:
            best, best_ratio = name, ratio
    return REGION_PHRASES.get(best) if best else None


def rating(m: dict) -> tuple[int, str]:
    """(0 = invisible … 3 = clearly visible, phrase) from the share of pixels > 2 levels off."""
    over2, maxl = m["share_over_2_levels"], m["max_levels"]
    if over2 < 0.001 and maxl <= 4:
        return 0, "you will not see a difference"
    if over2 < 0.01:
        return 1, "differences show only when zoomed in"
    if over2 < 0.10:
        return 2, "differences are visible when you zoom in — see the heatmap"
    return 3, "it looks visibly different from full precision"


def _model_sentence(role: str, m: dict) -> str:
    label = ROLE_LABELS[role]
    s = (f"**{label}** is within 1 level of full precision on {pct(m['share_within_1_level'])} of pixels "
         f"(at most {levels(m['max_levels'])} off)")
    if m["share_over_2_levels"] >= 0.0005:
        s += f"; {pct(m['share_over_2_levels'])} of pixels are more than 2 levels off"
        where = concentration(m["where"])
        if where:
            s += f", {where}"
    return s + f" — {rating(m)[1]}."


def _median(samples: list[float] | None) -> float | None:
    return statistics.median(samples) if samples else None


def verdict(result: dict, latencies: dict[str, list[float]], sizes_mb: dict[str, float], final: bool = True) -> str:
    models = result["models"]
    parts = [_model_sentence("ptq", models["ptq"]), _model_sentence("qat", models["qat"])]

    # Bottom line on quantization.
    rp, rq = rating(models["ptq"])[0], rating(models["qat"])[0]
    ap, aq = models["ptq"]["agreement_psnr_db"], models["qat"]["agreement_psnr_db"]
    if rp == 0 and rq == 0:
        bottom = ("Both INT8 models are indistinguishable from full precision on this photo: quantization costs "
                  "nothing visible here.")
    elif math.isinf(aq) or (not math.isinf(ap) and aq - ap >= 1.0):
        gap = "" if math.isinf(aq) else f" ({aq - ap:.1f} dB closer to full precision than PTQ)"
        bottom = f"**QAT is the better INT8 model here**{gap}: training with simulated INT8 taught the network to live with it."
    elif math.isinf(ap) or ap - aq >= 1.0:
        gap = "" if math.isinf(ap) else f" ({ap - aq:.1f} dB)"
        bottom = f"**PTQ is closer to full precision than QAT on this photo**{gap}."
    else:
        bottom = "PTQ and QAT are about equally close to full precision on this photo."
    parts.append(bottom)

    # Ground truth.
    if result["reference"]:
        what = "the clean original" if result["reference"] == "simulated" else "the reference"
        inp, fp = result["input"], models["fp32"]
        gain = fp["psnr_db"] - inp["psnr_db"]
        if math.isinf(inp["psnr_db"]):
            s = (f"The input is identical to {what}: there is nothing to repair, so any change the model makes "
                 f"counts against it (full precision: {fp['psnr_db']:.2f} dB PSNR).")
        elif gain >= 0.3:
            s = (f"Against {what}, full precision improves the input by {gain:+.2f} dB PSNR "
                 f"(SSIM {inp['ssim']:.3f} → {fp['ssim']:.3f}).")
        elif gain > -0.3:
            s = f"Against {what}, the model leaves this photo about where it was ({abs(gain):.2f} dB PSNR change)."
        else:
            s = (f"Against {what}, full precision scores {-gain:.2f} dB *below* the unprocessed input: the model "
                 "changed something the reference did not (exposure or colour).")
        deltas = []
        for role in ("ptq", "qat"):
            d = models[role]["psnr_db"] - fp["psnr_db"]
            if abs(d) < 0.05:
                deltas.append(f"{ROLE_LABELS[role]} matches full precision within 0.05 dB")
            else:
                deltas.append(f"{ROLE_LABELS[role]} is {abs(d):.2f} dB {'above' if d > 0 else 'below'} it")
        s += " " + "; ".join(deltas) + "."
        if any(models[r]["psnr_db"] - fp["psnr_db"] >= 0.05 for r in ("ptq", "qat")):
            s += (" (An INT8 model can land closer to the reference by luck; judge quantization by its agreement "
                  "with full precision.)")
        parts.append(s)

    # Speed and size.
    med = {r: _median(latencies.get(r)) for r in ("fp32", "ptq", "qat")}
    if all(med.values()):
        runs = min(len(latencies[r]) for r in ("fp32", "ptq", "qat"))
        how = "one run each" if runs == 1 else f"median of {runs} runs"
        ratio_p, ratio_q = med["ptq"] / med["fp32"], med["qat"] / med["fp32"]
        faster = "faster" if max(ratio_p, ratio_q) < 1 else "not faster"
        s = (f"Speed on this machine ({how}): full precision {med['fp32']:.0f} ms, PTQ {med['ptq']:.0f} ms "
             f"({ratio_p:.2f}×), QAT {med['qat']:.0f} ms ({ratio_q:.2f}×) — INT8 is {faster} here")
        small = sizes_mb["fp32"] / max(1e-9, (sizes_mb["ptq"] + sizes_mb["qat"]) / 2)
        s += f", and its files are {small:.1f}× smaller."
        if not final:
            s += " *More timing runs are coming…*"
        parts.append(s)

    worst = result.get("worst")
    if worst and rating(models[worst["role"]])[0] > 0:
        parts.append(f"The zoom starts where {ROLE_LABELS[worst['role']]} differs most from full precision "
                     f"(around x = {worst['x']}, y = {worst['y']}); click any output to move it.")
    return "\n\n".join(parts)
