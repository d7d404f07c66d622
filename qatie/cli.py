"""The `qatie` command line: one subcommand per pipeline stage, each a thin wrapper on the package."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import QatieError


def _progress_bar(total: int, desc: str):
    """A tqdm bar fed by the training loop's progress events."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def update(event: dict):
        bar.n = event["step"]
        bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.1e}", refresh=False)
        bar.refresh()
        if "val" in event:
            for name, v in event["val"].items():
                bar.write(f"step {event['step']}: {name[:60]}: PSNR {v['psnr']:.2f} dB (input {v['input_psnr']:.2f}), "
                          f"SSIM {v['ssim']:.4f} (input {v['input_ssim']:.4f})")
        if event["step"] >= total:
            bar.close()

    return update


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    base = json.loads(Path(args.config).read_text()) if args.config else {}
    for key in ("width", "steps", "batch_size", "patch", "lr", "loss", "seed", "variant", "threads", "device"):
        val = getattr(args, key)
        if val is not None:
            base[key] = val
    if args.data:
        base["data"] = args.data
    if args.val:
        base["val_data"] = args.val
    cfg = TrainConfig.from_dict(base)
    summary = train(cfg, args.out, resume=args.resume, progress=_progress_bar(cfg.steps, "train"))
    print(f"trained {summary['steps_done']} steps in {summary['wall_s']:.0f} s → {args.out}/last.pt, {args.out}/best.pt")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qatie", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the FP32 network", description="Train the FP32 network. "
                       "SPEC: clean:DIR | pairs:INPUT_DIR,TARGET_DIR | dped:ROOT[:phone] | samples")
    t.add_argument("--data", action="append", metavar="SPEC", help="training data (repeatable)")
    t.add_argument("--val", action="append", metavar="SPEC", help="extra validation pairs to monitor (repeatable)")
    t.add_argument("--config", help="JSON file of TrainConfig fields (flags override it)")
    t.add_argument("--out", required=True, help="output folder (last.pt, best.pt, train_log.jsonl)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--width", type=int, choices=(16, 24, 32))
    t.add_argument("--variant")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--patch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--loss", choices=("paper", "l1"))
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--device", help="auto, cpu or cuda")
    t.set_defaults(func=cmd_train)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QatieError as e:
        print(f"qatie: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
