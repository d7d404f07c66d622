"""Re-measure the numbers quoted in docs/inspect.md on the shipped models.

    python docs/inspect_numbers.py [--out runs/inspect_numbers.md]

§1 per-tensor SQNR on assets/examples/astronaut_input.png (as `qatie inspect` prints it),
§2 one activation histogram's ranges, §3 calibration choice and §4 the keep-float trade-off on the example photos. About 10 minutes
on 2 cores (the sensitivity ranking dominates; it is cached for the next run).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sqnr_summary(res: dict) -> str:
    """Medians over the tensors (cumulative and range-only SQNR), and on how many QAT beats PTQ."""
    import statistics

    rows = res["layers"]
    med = lambda key: statistics.median(r[key] if r[key] is not None else float("inf") for r in rows)
    higher = lambda key: sum((r[f"{key}_qat_db"] or float("inf")) > (r[f"{key}_ptq_db"] or float("inf")) for r in rows)
    return (f"median over {len(rows)} tensors — cumulative: PTQ {med('sqnr_ptq_db'):.1f} dB, QAT "
            f"{med('sqnr_qat_db'):.1f} dB (QAT higher on {higher('sqnr')}); range-only: PTQ "
            f"{med('range_sqnr_ptq_db'):.1f} dB, QAT {med('range_sqnr_qat_db'):.1f} dB (QAT higher on {higher('range_sqnr')})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "inspect_numbers.md"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from qatie import analysis as qi
    from qatie.imageio import read_image
    from qatie.analysis import format_trade_off, trade_off_curve
    from qatie.runtime.enhancer import resolve_onnx

    ckpt = REPO / "checkpoints" / "fp32.pt"
    examples = sorted((REPO / "assets" / "examples").glob("*_input.png"))
    images = [read_image(p) for p in examples]
    parts = [f"# docs/inspect.md numbers — {len(examples)} example photos: {', '.join(p.name for p in examples)}\n"]

    astro = REPO / "assets" / "examples" / "astronaut_input.png"
    res = qi.inspect_image(resolve_onnx("fp32"), [resolve_onnx("ptq"), resolve_onnx("qat")], astro, threads=args.threads)
    parts.append(f"## §1 SQNR, {astro.name} analysed at {res['analysed_size'][0]}×{res['analysed_size'][1]}\n\n```\n"
                 f"{qi.format_table(res, worst=5)}\n```\n\n{sqnr_summary(res)}\n")
    print(parts[-1], flush=True)

    h = qi.activation_histogram(resolve_onnx("fp32"), "fuse4.q_cat", read_image(astro),
                                {"ptq": resolve_onnx("ptq"), "qat": resolve_onnx("qat")}, threads=args.threads)
    v = h["values"]
    lines = [f"values: {v['count']} (p0.01 {v['p0.01']:.2f}, p99.99 {v['p99.99']:.2f}, std {v['std']:.2f})"]
    lines += [f"{r['label']}: range [{r['min']:.2f}, {r['max']:.2f}], step {r['step']:.4f}, levels used {r['levels_used']}, "
              f"clipped {100 * (r['clipped_low'] + r['clipped_high']):.2f} %" for r in h["ranges"]]
    parts.append("## §2 fuse4.q_cat on " + astro.name + "\n\n```\n" + "\n".join(lines) + "\n```\n")
    print(parts[-1], flush=True)

    rows = qi.compare_calibration(ckpt, images, calib_spec="samples", num_calib=8, threads=args.threads)
    parts.append(f"## §3 calibration choice (num_calib 8)\n\n```\n{qi.format_calibration(rows)}\n```\n")
    print(parts[-1], flush=True)

    curve = trade_off_curve(ckpt, (0, 1, 2, 4, 8, 16, 35), images)
    parts.append(f"## §4 keep-float trade-off\n\n```\n{format_trade_off(curve)}\n```\n")
    print(parts[-1], flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
