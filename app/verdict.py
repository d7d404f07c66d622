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


SHORT_NAMES = {"ptq": "PTQ", "qat": "QAT"}


def _closer(ap: float, aq: float) -> tuple[str | None, float]:
    """(role numerically closer to full precision by agreement PSNR, gap in dB); None when tied."""
    if math.isinf(ap) and math.isinf(aq):
        return None, 0.0
    if math.isinf(ap) or math.isinf(aq):
        return ("ptq" if math.isinf(ap) else "qat"), math.inf
    if abs(aq - ap) < 0.1:
        return None, abs(aq - ap)
    return ("qat" if aq > ap else "ptq"), abs(aq - ap)


def _not_worse(a: dict, b: dict) -> bool:
    """`a` is at least as good as `b` on the numbers the table shows besides PSNR."""
    return a["share_over_2_levels"] <= b["share_over_2_levels"] and a["max_levels"] <= b["max_levels"]


def bottom_line(ptq: dict, qat: dict) -> str:
    """Which INT8 model is closer to full precision — only claimed when no number in the table
    says otherwise (a model with more pixels off or a larger max error is never "better")."""
    rp, rq = rating(ptq)[0], rating(qat)[0]
    by_role = {"ptq": ptq, "qat": qat}
    closer, gap = _closer(ptq["agreement_psnr_db"], qat["agreement_psnr_db"])
    gap_s = "" if math.isinf(gap) else f" by {gap:.1f} dB"
    if rp <= 1 and rq <= 1:
        s = ("Both INT8 models look the same as full precision on this photo (indistinguishable at normal "
             "viewing size)")
        if closer is None:
            return s + "; numerically they are equally close."
        other = "ptq" if closer == "qat" else "qat"
        s += f"; {ROLE_LABELS[closer]} is numerically closer{gap_s} (agreement PSNR)"
        if not _not_worse(by_role[closer], by_role[other]):
            s += f", while {ROLE_LABELS[other]} has fewer pixels off or a smaller maximum error"
        return s + "."
    if rp != rq:
        best, worst = ("ptq", "qat") if rp < rq else ("qat", "ptq")
        s = f"**{SHORT_NAMES[best]} is the better INT8 model here**: fewer pixels more than 2 levels off"
        if closer == best:
            s += f" and closer to full precision{gap_s}"
        if best == "qat":
            s += ": training with simulated INT8 taught the network to live with it"
        return s + "."
    # Same visibility class: crown one only if it wins on every count.
    if closer is not None and (gap >= 1.0) and _not_worse(by_role[closer], by_role["ptq" if closer == "qat" else "qat"]):
        return f"**{SHORT_NAMES[closer]} is the better INT8 model here**: closer to full precision{gap_s}."
    s = "PTQ and QAT are about equally close to full precision on this photo"
    if closer is not None:
        other = "ptq" if closer == "qat" else "qat"
        s += f": {ROLE_LABELS[closer]} is closer on average{gap_s}"
        if by_role[other]["share_over_2_levels"] < by_role[closer]["share_over_2_levels"]:
            s += f", but {ROLE_LABELS[other]} has fewer pixels more than 2 levels off"
        elif by_role[other]["max_levels"] < by_role[closer]["max_levels"]:
            s += f", but {ROLE_LABELS[other]} has the smaller maximum error"
    return s + "."


def verdict(result: dict, latencies: dict[str, list[float]], sizes_mb: dict[str, float], final: bool = True) -> str:
    models = result["models"]
    parts = [_model_sentence("ptq", models["ptq"]), _model_sentence("qat", models["qat"])]

    parts.append(bottom_line(models["ptq"], models["qat"]))

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
        parts.append(f"The enlarged crops show where {ROLE_LABELS[worst['role']]} differs most visibly from full "
                     f"precision (around x = {worst['x']}, y = {worst['y']}); click any full picture to move them.")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# The one-line headline on top of the Compare tab
# --------------------------------------------------------------------------------------------

#: Colour per rating (0 invisible … 3 clearly visible): green, green, amber, red.
COLOURS = {0: "#15803d", 1: "#15803d", 2: "#b45309", 3: "#b91c1c"}
SHORT = {0: "looks the same as full precision",
         1: "looks the same as full precision (tiny differences when zoomed in)",
         2: "differences visible when zoomed in",
         3: "visibly different from full precision"}
SHORT_REGION = {"smooth": "in smooth areas", "textured": "along edges and texture",
                "shadows": "in dark areas", "highlights": "in bright areas"}


def _short(m: dict) -> str:
    r = rating(m)[0]
    s = SHORT[r]
    if r >= 2:
        region = concentration(m["where"])
        name = next((k for k, v in REGION_PHRASES.items() if v == region), None)
        if name:
            s += ", mostly " + SHORT_REGION[name]
    return s


def headline(result: dict, latencies: dict[str, list[float]], sizes_mb: dict[str, float]) -> str:
    """One line of HTML: each INT8 model's visibility class (colour-coded) and what INT8 buys.
    Worded from the same ratings as the verdict below it, so the two never disagree."""
    import html

    models = result["models"]
    bits = []
    for role in ("ptq", "qat"):
        m = models[role]
        colour = COLOURS[rating(m)[0]]
        bits.append(f'<span style="color:{colour}"><b>{ROLE_LABELS[role]}</b>: {html.escape(_short(m))}</span>')
    med = {r: _median(latencies.get(r)) for r in ("fp32", "ptq", "qat")}
    if all(med.values()):
        speed = med["fp32"] / min(med["ptq"], med["qat"])
        small = sizes_mb["fp32"] / max(1e-9, (sizes_mb["ptq"] + sizes_mb["qat"]) / 2)
        fast = f"INT8 {speed:.1f}× faster" if speed >= 1.05 else "INT8 not faster here"
        busy = any(len(v) >= 3 and (max(v) - min(v)) > 0.5 * statistics.median(v)
                   for v in (latencies.get(r) or [] for r in ("fp32", "ptq", "qat")))
        note = " (timings vary a lot: the server is busy, so the speed-up is rough)" if busy else ""
        bits.append(f"<span>{fast}, {small:.1f}× smaller{note}</span>")
    return '<div class="headline">' + " · ".join(bits) + "</div>"
