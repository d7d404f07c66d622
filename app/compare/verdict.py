"""A plain-language verdict generated from the numbers of one comparison.

Written for someone who does not know what PSNR is: whether a viewer would tell each INT8
model's picture from the full-precision one — its visibility class from CIEDE2000 colour
differences (`qatie.analysis.perceptual`), placed on this photo's own JPEG-quality ladder — where
the noticeable pixels are, what INT8 buys (time, size), and — with a ground truth — whether the
enhancement helped. Level counts (1 level = the smallest step a PNG stores) are given for
engineers, never used for the rating. Every sentence comes from a measured number.
"""
from __future__ import annotations

import math
import statistics

from qatie.analysis.perceptual import CLASSES, jpeg_phrase

from app.models import ROLE_LABELS

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
    """(0 = indistinguishable … 3 = visibly different, sentence) from the perceptual class."""
    c = CLASSES[m["perceptual"]["class"]]
    return c.rank, c.sentence


def _where_noticeable(m: dict) -> str | None:
    return concentration(m["perceptual"].get("where") or {}) if m["perceptual"]["share_visible"] >= 0.001 else None


def _model_sentence(role: str, m: dict) -> str:
    p = m["perceptual"]
    s = (f"**{ROLE_LABELS[role]}**: {rating(m)[1]} — {pct(p['share_visible'])} of pixels differ from full "
         f"precision by more than one just-noticeable colour difference (mean ΔE00 {p['mean_de00']:.2f})")
    where = _where_noticeable(m)
    if where:
        s += f", {where}"
    s += f"; {jpeg_phrase(p['jpeg'])} of the full-precision picture."
    s += (f" In 8-bit levels: within 1 level on {pct(m['share_within_1_level'])} of pixels, at most "
          f"{levels(m['max_levels'])} off.")
    return s


def _median(samples: list[float] | None) -> float | None:
    return statistics.median(samples) if samples else None


SHORT_NAMES = {"ptq": "PTQ", "qat": "QAT"}


def _ratio(worse: float, better: float) -> str:
    """'7× more' / 'far more' for shares of noticeable pixels."""
    if better <= 0:
        return "far more" if worse > 0 else "as many"
    return f"{worse / better:.0f}× more" if worse / better >= 1.95 else f"{worse / better:.1f}× as many"


def bottom_line(ptq: dict, qat: dict) -> str:
    """Which INT8 model a viewer would take for full precision — from the perceptual classes and
    the share of noticeable pixels, the numbers the table shows first."""
    rp, rq = rating(ptq)[0], rating(qat)[0]
    sp, sq = ptq["perceptual"]["share_visible"], qat["perceptual"]["share_visible"]
    if rp != rq:
        best, worst = ("ptq", "qat") if rp < rq else ("qat", "ptq")
        by = {"ptq": ptq, "qat": qat}
        s = (f"**{SHORT_NAMES[best]} is the better INT8 model here**: {CLASSES[by[best]['perceptual']['class']].sentence}"
             f", while {ROLE_LABELS[worst]} has {_ratio(by[worst]['perceptual']['share_visible'], by[best]['perceptual']['share_visible'])} "
             "pixels a viewer would notice")
        if best == "qat":
            s += " — training with simulated INT8 taught the network to live with it"
        return s + "."
    if rp <= 1:
        s = "Both INT8 models " + ("are indistinguishable from" if rp == 0 else "would pass for") + " full precision"
    else:
        s = f"Both INT8 models are in the same class here ({CLASSES[rp].name})"
    if max(sp, sq) > 0 and max(sp, sq) >= 2 * max(min(sp, sq), 1e-4) and max(sp, sq) >= 0.005:
        better = "ptq" if sp < sq else "qat"
        other = "qat" if better == "ptq" else "ptq"
        return s + (f"; {ROLE_LABELS[other]} has {_ratio(max(sp, sq), min(sp, sq))} noticeable pixels than "
                    f"{ROLE_LABELS[better]}.")
    return s + "; neither has markedly more noticeable pixels."


def speedup(fp32_ms: float, int8_ms: float) -> str:
    """One way of saying speed everywhere: 'N× faster' / 'N× slower' than full precision."""
    r = fp32_ms / int8_ms
    if 0.95 <= r <= 1.05:
        return "as fast"
    return f"{r:.1f}× faster" if r > 1 else f"{1 / r:.1f}× slower"


def picture_rating(metrics: dict) -> str:
    """Another INT8 picture of the photo (the paper set's LiteRT pictures) on the INT8 models' scale
    (one clause)."""
    p = metrics.get("perceptual")
    if not p:
        return "not rated"
    return (f"{CLASSES[p['class']].sentence} ({pct(p['share_visible'])} noticeable pixels; "
            f"{jpeg_phrase(p['jpeg'])}).")


def picture_short(metrics: dict) -> str:
    """Another INT8 picture's class and JPEG place, for the notice line."""
    p = metrics.get("perceptual")
    if not p:
        return "not rated"
    return f"{CLASSES[p['class']].name} ({_jpeg_short(metrics)})"


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
        s = (f"Speed on this machine ({how}): full precision {med['fp32']:.0f} ms, PTQ {med['ptq']:.0f} ms "
             f"({speedup(med['fp32'], med['ptq'])}), QAT {med['qat']:.0f} ms ({speedup(med['fp32'], med['qat'])})")
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

#: Colour per visibility class (0 indistinguishable … 3 visibly different): green, green, amber, red.
COLOURS = {0: "#15803d", 1: "#15803d", 2: "#b45309", 3: "#b91c1c"}
SHORT = {0: "indistinguishable from full precision", 1: "looks the same as full precision",
         2: "close (shows when flipping)", 3: "visibly different"}
SHORT_REGION = {"smooth": "in smooth areas", "textured": "along edges and texture",
                "shadows": "in dark areas", "highlights": "in bright areas"}


def _region_short(m: dict) -> str | None:
    region = _where_noticeable(m)
    name = next((k for k, v in REGION_PHRASES.items() if v == region), None)
    return SHORT_REGION[name] if name else None


def _jpeg_short(m: dict) -> str:
    j = m["perceptual"]["jpeg"]
    return {"about": f"like a JPEG at quality {j['quality']}", "better than": f"closer than a JPEG at quality {j['quality']}",
            "worse than": f"further off than a JPEG at quality {j['quality']}"}[j["relation"]]


def headline(result: dict, latencies: dict[str, list[float]], sizes_mb: dict[str, float]) -> str:
    """One line of HTML: the comparison — the INT8 model a viewer would take for full precision
    first, then the other with how many times more noticeable pixels it has and where, each
    colour-coded by class and placed on the JPEG ladder — and what INT8 buys. From the same
    ratings as the verdict and the table's first columns, so the three never disagree."""
    import html

    models = result["models"]
    order = sorted(("qat", "ptq"), key=lambda r: (rating(models[r])[0], models[r]["perceptual"]["share_visible"]))
    bits = []
    first = models[order[0]]["perceptual"]["share_visible"]
    for i, role in enumerate(order):
        m = models[role]
        rank = rating(m)[0]
        text = SHORT[rank]
        if i == 1 and rank > rating(models[order[0]])[0]:
            text += f" — {_ratio(m['perceptual']['share_visible'], first)} noticeable pixels"
            where = _region_short(m)
            if where:
                text += f", mostly {where}"
        text += f" ({_jpeg_short(m)})"
        bits.append(f'<span style="color:{COLOURS[rank]}"><b>{ROLE_LABELS[role]}</b>: {html.escape(text)}</span>')
    med = {r: _median(latencies.get(r)) for r in ("fp32", "ptq", "qat")}
    if all(med.values()):
        small = sizes_mb["fp32"] / max(1e-9, (sizes_mb["ptq"] + sizes_mb["qat"]) / 2)
        fastest = min(med["ptq"], med["qat"])
        fast = (f"INT8 {speedup(med['fp32'], fastest)}" if med["fp32"] / fastest > 1.05 else "INT8 not faster here")
        busy = any(len(v) >= 3 and (max(v) - min(v)) > 0.5 * statistics.median(v)
                   for v in (latencies.get(r) or [] for r in ("fp32", "ptq", "qat")))
        note = " (rough: the server is busy)" if busy else ""
        bits.append(f"<span>{fast}, {small:.1f}× smaller{note}</span>")
    return '<div class="headline">' + " · ".join(bits) + "</div>"
