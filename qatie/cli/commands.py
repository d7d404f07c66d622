"""What each `qatie` subcommand does: thin wrappers that call the package's stages (the parser
is `qatie.cli.main`). Imports inside each command keep `qatie --help` and the ONNX-only commands torch-free."""
from __future__ import annotations

import json
from pathlib import Path

from qatie.config import PTQConfig, QATConfig, read_json_object
from qatie.errors import QatieError


def _progress_bar(total: int, desc: str):
    """A tqdm bar fed by the training loop's progress events (created on the first event, so an
    error before training starts prints only its message)."""
    from tqdm import tqdm

    bar = None

    def update(event: dict):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, initial=event["step"] - 1)
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
    from qatie.train.loop import TrainConfig, train

    flags = {key: getattr(args, key) for key in ("width", "steps", "batch_size", "patch", "lr", "loss", "seed",
                                                 "variant", "threads", "device")}
    cfg = TrainConfig.resolve(TrainConfig.load(args.config) if args.config else None, data=args.data or None,
                              val_data=args.val or None, **flags)
    summary = train(cfg, args.out, resume=args.resume, progress=_progress_bar(cfg.steps, "train"))
    print(f"trained {summary['steps_done']} steps in {summary['wall_s']:.0f} s → {args.out}/last.pt, {args.out}/best.pt")
    return 0


def _degradation_config(text: str | None):
    """EVAL_DEGRADATION with the fields of a JSON object (a file path or inline JSON) overriding it."""
    import dataclasses

    from qatie.data.datasets import EVAL_DEGRADATION

    if not text:
        return EVAL_DEGRADATION
    fields = read_json_object(text, "DegradationConfig (a JSON file or an inline JSON object)")
    known = {f.name for f in dataclasses.fields(EVAL_DEGRADATION)}
    unknown = set(fields) - known
    if unknown:
        raise QatieError(f"--config: unknown degradation fields {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return dataclasses.replace(EVAL_DEGRADATION, **fields)


def cmd_degrade(args) -> int:
    from qatie.data.datasets import _all_clean
    from qatie.data.degrade import degrade, seed_for
    from qatie.imageio import read_image, write_image

    root, out = Path(args.in_dir), Path(args.out_dir)
    if not root.is_dir():
        raise QatieError(f"{root}: not a folder")
    if out.resolve() == root.resolve():
        raise QatieError(f"{out}: the output folder must differ from the input folder")
    cfg = _degradation_config(args.config)
    # The same files, named the same way, as `qatie eval --clean-dir` (an OUT_DIR inside IN_DIR is skipped).
    files = [f for f in _all_clean(root) if out.resolve() not in f.resolve().parents]
    if not files:
        raise QatieError(f"{root}: no images found")
    targets: dict[Path, Path] = {}
    for f in files:
        rel = f.relative_to(root)
        dest = out / rel.with_suffix(".png")
        if dest in targets:
            raise QatieError(f"{f} and {targets[dest]} would both be written to {dest} (same stem)")
        targets[dest] = f
    for dest, f in targets.items():
        name = f.relative_to(root).as_posix()  # eval seeds each image by this name
        write_image(dest, degrade(read_image(f), seed_for(name, args.seed), cfg))
    print(f"degraded {len(targets)} images (seed {args.seed}) → {out}")
    return 0


def cmd_enhance(args) -> int:
    from qatie.runtime.enhancer import load_enhancer
    from qatie.imageio import read_image, write_image

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise QatieError(f"{out}: the output must end in .png, .jpg or .jpeg")
    if args.threads < 1:
        raise QatieError(f"--threads must be ≥ 1, got {args.threads}")
    image = read_image(args.input)
    enhance = load_enhancer(args.model, threads=args.threads)
    write_image(out, enhance(image))
    print(f"{args.input} → {out} ({image.shape[1]}×{image.shape[0]}, model {args.model})")
    return 0


def cmd_eval(args) -> int:
    from qatie.data.datasets import eval_pairs
    from qatie.analysis.evaluate import evaluate, format_table
    from qatie.util import jsonable

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise QatieError("--models: give at least one model")
    if args.clean_dir and (args.input_dir or args.target_dir):
        raise QatieError("give either --clean-dir or --input-dir/--target-dir, not both")
    if not args.clean_dir and not (args.input_dir and args.target_dir):
        raise QatieError("give --input-dir and --target-dir, or --clean-dir (with --seed)")
    if args.limit is not None and args.limit < 1:
        raise QatieError(f"--limit must be ≥ 1, got {args.limit}")
    for d in (args.clean_dir, args.input_dir, args.target_dir):
        if d and not Path(d).is_dir():
            raise QatieError(f"{d}: not a folder")
    pairs = eval_pairs(args.input_dir, args.target_dir, args.clean_dir, seed=args.seed, part=args.split,
                       limit=args.limit)
    if not pairs:
        raise QatieError("no images to evaluate")
    from tqdm import tqdm

    bar = tqdm(total=len(pairs), desc="eval", unit="img", dynamic_ncols=True, disable=None)

    def progress(i, n, name):
        bar.n = i
        bar.refresh()

    result = evaluate(models, pairs, threads=args.threads, progress=progress)
    bar.close()
    if args.clean_dir:
        result["data"] = {"clean_dir": args.clean_dir, "seed": args.seed, "split": args.split,
                          "degradation": "qatie.data.datasets.EVAL_DEGRADATION"}
    else:
        result["data"] = {"input_dir": args.input_dir, "target_dir": args.target_dir}
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(jsonable(result), indent=1, allow_nan=False))
        print(f"→ {path}")
    return 0


def _print_exactness(onnx_path: Path, label: str | None = None) -> None:
    """Whether an INT8 model QATIE wrote computes the exact integer result on every CPU (QuantSpec
    v3 makes every one pair-safe; this reads the file back and says so, or warns)."""
    import sys

    from qatie.runtime.int8_reference import exactness_note

    label = label or Path(onnx_path).name
    note = exactness_note(onnx_path)
    if note:
        print(f"WARNING: {label}: {note}", file=sys.stderr)
    else:
        print(f"{label}: exact on every CPU (no int8 weight pair can overflow the 16-bit sums of CPUs without VNNI)")


def cmd_ptq(args) -> int:
    from qatie.quantize.ptq import run_ptq

    def sensitivity_progress(i, n, name):
        print(f"\rsensitivity: {i}/{n} convs {name:<20}", end="" if i < n else "\n", flush=True)

    ranked = bool(args.keep_float) and args.keep_float.strip().lower().startswith("auto")  # (a recipe's: silent)
    progress = sensitivity_progress if ranked else None
    cfg = PTQConfig.resolve(PTQConfig.load(args.config) if args.config else None, method=args.method, calib=args.calib,
                            num_calib=args.num_calib, percentile=args.percentile, seed=args.seed,
                            keep_float=args.keep_float, calib_crop=args.calib_crop)
    out = run_ptq(args.checkpoint, args.out, cfg, progress=progress)
    print(f"INT8 ({cfg.method} PTQ) → {out} (+ {out.with_suffix('.json').name})")
    _print_exactness(out)
    if args.keep_float:
        side = json.loads(out.with_suffix(".json").read_text())
        print(f"float convs: {', '.join(side['keep_float']) or 'none'}; float tensors: {', '.join(side['float_points']) or 'none'}")
    return 0


def cmd_inspect(args) -> int:
    from qatie import analysis as qi
    from qatie.runtime.enhancer import resolve_onnx

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(names) < 2:
        raise QatieError("--models needs the FP32 model first, then at least one INT8 model (e.g. fp32,ptq,qat)")
    paths = [resolve_onnx(m) for m in names]
    result = qi.inspect_image(paths[0], paths[1:], args.image, threads=args.threads, max_side=args.max_side)
    print(f"{args.image}: {result['image_size'][0]}×{result['image_size'][1]}, analysed at "
          f"{result['analysed_size'][0]}×{result['analysed_size'][1]}")
    print(qi.format_table(result, worst=args.worst))
    if args.json:
        print(f"→ {qi.write_json(result, args.json, image_name=str(args.image))}")
    if args.csv:
        print(f"→ {qi.write_csv(result, args.csv)}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        qi.plot_sqnr(result, worst=args.worst).savefig(args.plot)
        print(f"→ {args.plot}")
    if args.histogram:
        hist = qi.activation_histogram(paths[0], args.histogram, args.image, paths[1:], threads=args.threads,
                                       max_side=args.max_side)
        for r in hist["ranges"]:
            print(f"{hist['name']} {r['label']}: range [{r['grid_min']:.4g}, {r['grid_max']:.4g}], step {r['step']:.4g}, "
                  f"{r['levels_used']} of 256 levels used, clipped {100 * (r['clipped_low'] + r['clipped_high']):.3g}%")
        out = Path(args.histogram_plot or f"{hist['name']}_histogram.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        qi.plot_histogram(hist).savefig(out)
        print(f"→ {out}")
    return 0


def cmd_qat(args) -> int:
    from qatie.quantize.qat import run_qat

    cfg = QATConfig.resolve(QATConfig.load(args.config) if args.config else None, data=args.data, steps=args.steps,
                            lr=args.lr, learnable=args.learnable, distill=args.distill, batch_size=args.batch_size,
                            patch=args.patch, num_calib=args.num_calib, calib_method=args.calib_method, seed=args.seed,
                            val_data=args.val, threads=args.threads)
    out = run_qat(args.checkpoint, args.out, cfg, resume=args.resume, run_dir=args.run_dir, teacher=args.teacher,
                  progress=_progress_bar(cfg.steps, "qat"))
    print(f"QAT checkpoint → {out}; export it with: qatie export --checkpoint {out} --out qat.onnx")
    import tempfile

    from qatie.quantize.qat import export_checkpoint

    with tempfile.TemporaryDirectory() as d:  # what its export will be, checked now
        _print_exactness(export_checkpoint(out, Path(d) / "qat_int8.onnx"), "its INT8 export")
    return 0


def cmd_import_tflite(args) -> int:
    from qatie.paper.tflite import save_import

    out = save_import(args.model, args.out)
    print(f"→ {out} (the paper's network, width 32, weights dequantized from {Path(args.model).name}; MIT licence)")
    return 0


def cmd_export(args) -> int:
    from qatie.quantize.qat import export_checkpoint

    if args.format == "tflite":
        return _export_tflite(args)
    if not args.checkpoint:
        raise QatieError("export --format onnx needs --checkpoint")
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"→ {out}")
    if out.with_suffix(".json").exists():  # an INT8 export (an FP32 one has no sidecar)
        _print_exactness(out)
    return 0


def _export_tflite(args) -> int:
    import tempfile

    from qatie.export.to_tflite import check_size, export_tflite
    from qatie.quantize.qat import export_checkpoint

    if bool(args.model) == bool(args.checkpoint):
        raise QatieError("export --format tflite needs one of --model (an INT8 model) or --checkpoint (a QAT .pt)")
    check_size(args.size)  # before any ONNX export
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_checkpoint(args.checkpoint, Path(tmp) / f"{Path(args.checkpoint).stem}.onnx")
        out = export_tflite(model, args.out, args.size)
    print(f"→ {out} ({out.stat().st_size / 1e6:.2f} MB, LiteRT INT8, input {args.size} HxW float32 NHWC in [0, 1])")
    return 0


def cmd_litert_proof(args) -> int:
    import tempfile

    from qatie.analysis.litert_parity import agreement, format_rows, op_rows, summary
    from qatie.export.to_tflite import int8_onnx
    from qatie.imageio import read_image
    from qatie.paths import REPO_ROOT, SHIPPED_MODELS
    from qatie.runtime.cpu import machine_summary
    from qatie.runtime.int8_reference import default_images
    from qatie.runtime.litert import litert_file

    onnx_path = int8_onnx(args.model)
    own_fp32 = {"paper-qat": "paper", "paper-ptq": "paper", "qat": "fp32", "ptq": "fp32"}.get(args.model)
    if not (args.fp32 or own_fp32):
        raise QatieError(f"--fp32: which FP32 model is {args.model}'s? (a shipped INT8 name knows its own)")
    fp32 = args.fp32 or REPO_ROOT / SHIPPED_MODELS[own_fp32]
    images = {Path(p).name: read_image(p) for p in args.images} if args.images else default_images((120, 136))
    out = {"machine": machine_summary(args.threads), "model": str(onnx_path), "proof": {}, "agreement": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kernels in [k for k in args.kernels.split(",") if k]:  # "" = the agreement only
            rows = []
            for img in images.values():
                rows += op_rows(litert_file(onnx_path, *img.shape[:2], tmp), onnx_path, img, kernels, args.threads)
            print(format_rows(rows, kernels) + "\n")
            out["proof"][kernels] = summary(rows)
        for name, img in images.items():
            a = agreement(onnx_path, fp32, img, tmp, threads=args.threads) | {"image": name}
            out["agreement"].append(a)
            print(f"{name} {a['size']}: LiteRT vs FP32 {a['litert_vs_fp32_db']:.2f} dB, ONNX INT8 vs FP32 "
                  f"{a['onnx_vs_fp32_db']:.2f} dB, LiteRT vs ONNX INT8 {a['litert_vs_onnx_db']:.2f} dB")
    print(f"machine: {out['machine']['cpu']} ({out['machine']['int8_path']}), {args.threads} thread(s)")
    if args.json:
        from qatie.util import atomic_write_text, jsonable

        atomic_write_text(args.json, json.dumps(jsonable(out), indent=2) + "\n")
        print(f"→ {args.json}")
    return 0


def cmd_bench(args) -> int:
    from qatie.runtime.bench import format_table, parse_size, run_benchmark, write_json

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    result = run_benchmark(args.models.split(","), sizes, threads=args.threads, runs=args.runs,
                           warmup=args.warmup, reference_tflite=args.reference_tflite, litert=args.litert)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"→ {args.json}")
    return 0


def cmd_deviation(args) -> int:
    from qatie.runtime.bench import parse_size
    from qatie.imageio import read_image
    from qatie.runtime.int8_reference import default_images, format_deviation, measure

    try:
        images = ({Path(p).name: read_image(p) for p in args.images} if args.images
                  else default_images(parse_size(args.size)))
    except ValueError as e:
        raise QatieError(str(e)) from None
    result = measure(args.models.split(","), images, threads=args.threads)
    print(format_deviation(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"→ {args.json}")
    return 0


def cmd_report(args) -> int:
    from qatie.report.build import build_report

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    build_report(args.out, ckpt_dir=args.checkpoints, sizes=sizes, threads=args.threads, runs=args.runs, limit=args.limit,
                 readme=args.readme)
    return 0


def cmd_run(args) -> int:
    from qatie.api import run_recipe
    from qatie.config import RunRecipe

    recipe = RunRecipe.load(args.recipe)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    if args.dry_run:
        for step, what in recipe.plan():
            if steps is None or step in steps:
                print(f"[{recipe.name}] {step}: {what}")
        return 0
    files = run_recipe(recipe, steps=steps)
    print(f"[{recipe.name}] done: " + ", ".join(str(files[k]) for k in files if files[k].is_file()))
    return 0
