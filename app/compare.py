"""The Compare tab's event handlers (Gradio side of `app.core`). No torch.

`compare` is a generator, and what it yields is the design:

1. blank the previous result (the user sees at once that work started) — and show the input:
   the input image is sent with it, so its transfer overlaps the models;
2. after ONE pass of each model: the three outputs — that pass is each model's first latency
   sample;
3. the analysis: metrics table, verdict, heatmaps, zoom, the two before/after sliders (latency
   from that single pass);
4. `TIMING_RUNS - 1` more interleaved timing rounds, each yielding the table and verdict again,
   so the latency shown ends as the median of `TIMING_RUNS` passes.

Images are written by `render.save_png` (zlib level 1) into a per-request folder and returned as
paths; Gradio copies them into its cache, and the folder is removed when the generator ends.
Results for the bundled examples are kept (keyed by file contents, options and the model files'
signature) and replayed on the next click: examples are cached lazily, per model set.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from qatie.cpu import int8_path
from qatie.errors import QatieError

from . import authors, config, core, example_cache, models, render, slots
from .zoom import DEFAULT_WINDOW, crop_slider, render_zoom
from .verdict import authors_rating, authors_short, headline, verdict
from . import guard

log = logging.getLogger("qatie.app")

OUTPUT_NAMES = ("notice", "input", "fp32", "ptq", "qat", "slider_ptq", "slider_qat", "verdict", "metrics",
                "heatmap", "zoom", "zoom_x", "zoom_y", "metrics_json", "downloads", "headline", "slider_crop",
                "heatmap_ref", "authors", "state")
N_OUT = len(OUTPUT_NAMES)
IDX = {name: i for i, name in enumerate(OUTPUT_NAMES)}
#: Fixed colour scales (8-bit levels) of the error displays, so a colour means the same on every
#: photo: quantization error (INT8 vs FP32) and each model against the reference.
QUANT_SCALE = 16.0
REF_SCALE = 64.0
SKIP = gr.skip


def user_error(exc: BaseException, what: str = "comparing") -> gr.Error:
    """Every failure as a gr.Error with a message a user can act on (no traceback in the UI)."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, QatieError):
        msg = guard.public_text(str(exc))
        title = ("Model problem" if isinstance(exc, models.ModelFileError) else
                 "Time limit" if isinstance(exc, guard.DeadlineError) else
                 "One request at a time" if isinstance(exc, (slots.BusyError, slots.SlotWaitError)) else
                 "Cannot use this input")
        return gr.Error(msg[:1].upper() + msg[1:], title=title)
    if isinstance(exc, MemoryError):
        return gr.Error("Out of memory while " + what + ": try a smaller photo, or untick 'Full size'.")
    log.error("unexpected error while %s:\n%s", what, "".join(traceback.format_exception(exc)))
    return gr.Error(f"Unexpected error while {what} ({type(exc).__name__}: {guard.public_text(str(exc))[:300]}). "
                    "The server log has the details.")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _display(u8: np.ndarray) -> tuple[np.ndarray, float]:
    """A copy small enough to show (full-size results are downloads), and its scale factor."""
    h, w = u8.shape[:2]
    tw, th = render.fit_size(w, h, config.DISPLAY_MAX_MP * 1e6)
    if (tw, th) == (w, h):
        return u8, 1.0
    return render.resize_u8(u8, (tw, th)), tw / w


def _overrides(custom_fp32, custom_ptq, custom_qat) -> dict[str, tuple[str, str]]:
    out = {}
    for role, payload in zip(models.ROLES, (custom_fp32, custom_ptq, custom_qat)):
        found = core.payload_path(payload)
        if found is not None:
            path, name = found
            if not name.lower().endswith(".onnx"):
                raise core.AppInputError(f"uploaded {models.ROLE_LABELS[role]} model {name!r} is not an .onnx file")
            out[role] = (str(path), name)
    return out


def empty_table() -> pd.DataFrame:
    """The metrics table before a result (named columns, no rows — never Gradio's "1 2 3")."""
    return pd.DataFrame(columns=["Model", "Agreement with FP32 (dB)", "Max error vs FP32 (levels)",
                                 "Pixels > 2 levels off FP32", "Latency (ms)", "File (MB)"])


def _empty_outputs(notice: str) -> list:
    vals = [None] * N_OUT
    vals[0] = notice
    vals[IDX["metrics"]] = empty_table()
    vals[IDX["headline"]] = ""
    vals[IDX["verdict"]] = ""
    vals[IDX["zoom_x"]] = SKIP()
    vals[IDX["zoom_y"]] = SKIP()
    vals[IDX["state"]] = None
    return vals


def error_outputs(err: gr.Error) -> list:
    """Every output blanked, the message kept in the notice line (a toast alone vanishes, and the
    previous photo's result must not stay on screen under an error)."""
    title = getattr(err, "title", None) or "Error"
    return _empty_outputs(f'<span class="error-notice">⚠️ <b>{title}:</b> {getattr(err, "message", str(err))}</span>')


def _notice(prep: core.Prepared, model_set: models.ModelSet, overrides: dict, extra: str = "",
            tflite: str = "") -> str:
    w, h = prep.size
    mode = "tiled" if prep.tiled else "whole image"
    lines = list(prep.notices)
    # Which models the result shows and what they do (a built-in set by its one-line description).
    blurb = models.BUILTIN_BLURBS.get(model_set.key)
    names = f"**{blurb or model_set.label}**" + (" (other sets: *Advanced › Models*)" if blurb else "")
    if overrides:
        names += " — replaced by uploads: " + ", ".join(
            f"{models.ROLE_LABELS[r]} = {n}" for r, (_, n) in overrides.items())
    lines.append(f"`{prep.name}` processed at {w}×{h} ({mode}) with {names}, {config.THREADS} ONNX Runtime "
                 f"thread(s), INT8 kernels: {int8_path()}."
                 + (f" {extra}" if extra else ""))
    if tflite:
        lines[-1] += " " + tflite
    return "\n\n".join(lines)


def _frame(headers: list[str], rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


def _json(result: dict, latencies: dict, sizes: dict, prep: core.Prepared, model_set: models.ModelSet) -> dict:
    out = core.public(result)
    out["latency_ms"] = {r: core.latency_summary(latencies[r]) for r in models.ROLES if latencies.get(r)}
    out["file_mb"] = {r: round(sizes[r], 3) for r in models.ROLES}
    out["model_set"] = model_set.label
    out["model_set_key"] = model_set.key
    out["threads"] = config.THREADS
    out["int8_path"] = int8_path()  # which integer kernels produced the INT8 outputs and latencies (qatie.cpu)
    out["original_size"] = list(prep.original_size)
    out["seed"] = prep.seed
    return out


# --------------------------------------------------------------------------------------------
# The compare generator
# --------------------------------------------------------------------------------------------

def compare(image, reference=None, simulate=False, seed=0, full_size=False, model_set=None,
            custom_fp32=None, custom_ptq=None, custom_qat=None, session_sets=None, request: gr.Request = None):
    """Enhance a photo with the FP32, PTQ-INT8 and QAT-INT8 models and compare the outputs.

    Returns (streamed): notice, input, FP32, PTQ-INT8, QAT-INT8, FP32↔PTQ slider, FP32↔QAT slider,
    verdict, metrics table, heatmaps (INT8 vs FP32), zoom (worst-region crops), zoom x %, zoom y %,
    metrics (JSON), downloads, headline (one line of HTML), worst-region FP32↔INT8 slider,
    heatmaps vs the reference, the authors' INT8 TFLite output (paper set with ai-edge-litert;
    else None). `model_set` None means the default set (`models.default_set()`).
    """
    try:
        with slots.one_per_session(request, "A comparison"):
            ticket = slots.SLOTS.ticket(slots.visitor(request))
            try:
                waited = time.monotonic()
                while not ticket.wait(1.0):  # visitors are served in turn (app.slots)
                    if time.monotonic() - waited > config.SLOT_WAIT_S:
                        raise slots.SlotWaitError(slots.wait_message("The comparison"))
                    yield _waiting(ticket.ahead())
                yield from _compare(image, reference, simulate, seed, full_size, model_set, custom_fp32, custom_ptq,
                                    custom_qat, session_sets)
            finally:
                ticket.release()
    except slots.BusyError as exc:  # the running request's outputs stay as they are
        raise user_error(exc) from None
    except Exception as exc:
        err = user_error(exc)
        yield error_outputs(err)
        raise err from None


def _drop_reference(prep: core.Prepared) -> None:
    """The paper network enhances — it re-grades colour and exposure on purpose — so a restoration
    reference (the app's simulated phone photo, the examples' clean originals) does not fit its
    task: scoring against one makes full precision look worse than the untouched input."""
    what = "the clean upload" if prep.reference_kind == "simulated" else "the reference"
    prep.reference, prep.reference_kind = None, None
    prep.notices = [n.replace(" the upload itself is the ground truth.", " it is not scored against the upload.")
                    for n in prep.notices]
    prep.notices.append(f"Rated against full precision only: the paper network re-grades colour, so {what} is not "
                        "its target.")


def _waiting(ahead: int) -> list:
    vals = [SKIP()] * N_OUT
    vals[IDX["notice"]] = (f"⏳ Waiting for a free slot — {ahead} request(s) ahead of yours. Visitors are served in "
                           "turn; your comparison starts as soon as a slot frees.")
    return vals


def compare_ui(image, reference=None, simulate=False, seed=0, full_size=False, model_set=None,
               custom_fp32=None, custom_ptq=None, custom_qat=None, session_sets=None, request: gr.Request = None):
    """The Compare button's handler: `compare`, except that an error ends in the notice line (and
    a toast) instead of an exception — the blanked outputs then carry no "Error" badges over the
    message. API callers use `compare`, which raises."""
    try:
        yield from compare(image, reference, simulate, seed, full_size, model_set, custom_fp32, custom_ptq,
                           custom_qat, session_sets, request)
    except gr.Error as err:
        gr.Warning(err.message, title=err.title)


def _compare(image, reference, simulate, seed, full_size, model_set, custom_fp32, custom_ptq, custom_qat,
             session_sets):
    request_dir = None
    keep_dir = False
    enh = None
    t_start = time.perf_counter()
    deadline = guard.Deadline(config.COMPARE_DEADLINE_S, "The comparison")

    def mark(what: str) -> None:
        log.debug("compare: %s at %.3f s", what, time.perf_counter() - t_start)

    try:
        try:
            prep = core.prepare(image, reference, bool(simulate), seed, bool(full_size))
            deadline.extend(config.COMPARE_DEADLINE_PER_MP_S * prep.megapixels)
            overrides = _overrides(custom_fp32, custom_ptq, custom_qat)
            model_set = models.resolve_set(model_set, session_sets)
            if model_set.key == models.PAPER_KEY and prep.reference is not None:
                _drop_reference(prep)
            if model_set.key in models.BUILTIN_SETS and not overrides:
                models.wait_warm()
            enh = models.enhancers(model_set, overrides)
        except Exception as exc:
            raise user_error(exc, "reading the inputs") from None
        sizes = {r: models.file_mb(e) for r, e in enh.items()}

        key = example_cache.key(prep, model_set, bool(overrides))
        if key is not None:
            cached = example_cache.get(key)
            if cached is not None:
                yield example_cache.replay(cached, IDX["state"])
                return

        # 0. Clear the previous result and show the input at once: its transfer overlaps the models.
        request_dir = config.work_dir("requests", uuid.uuid4().hex)
        shown = {}
        disp, scale = _display(prep.image)
        shown["input"] = render.save_png(disp, request_dir / "input.png")
        vals = _empty_outputs(_notice(prep, model_set, overrides, "Running FP32, PTQ-INT8 and QAT-INT8…"))
        vals[1] = shown["input"]
        mark("input ready")
        yield vals

        # 1. One pass of each model = the outputs and the first latency sample.
        try:
            outputs, latencies = {}, {}
            for role in models.ROLES:
                with deadline.onnx():
                    outputs[role], ms = core.run_model(enh[role], prep.image, prep.tiled)
                latencies[role] = [ms]
                shown[role] = render.save_png(_display(outputs[role])[0], request_dir / f"{role}.png")
            for role, (_, name) in overrides.items():  # a model the user brought: exact on this CPU?
                with deadline.onnx():
                    warning = models.exactness_warning(role, name, enh[role], outputs[role], prep.image,
                                                       prep.tiled)
                if warning:
                    prep.notices.append(warning)
        except Exception as exc:
            raise user_error(exc, "running the models") from None
        vals = [SKIP()] * N_OUT
        vals[0] = _notice(prep, model_set, overrides, "Measuring…")
        vals[2:5] = [shown["fp32"], shown["ptq"], shown["qat"]]
        mark("outputs ready (models " + ", ".join(f"{r} {latencies[r][0]:.0f} ms" for r in models.ROLES) + ")")
        yield vals
        mark("outputs sent")

        # 2. Analysis.
        try:
            deadline.check()
            result = core.analyse(prep, outputs)
            maps = result["maps"]
            def panel(title: str, m: np.ndarray):
                return f"{title}  (max {m.max():.0f}, {100 * (m > 2).mean():.1f}% > 2 levels)", m

            panels = [panel("|PTQ-INT8 − FP32|", maps["ptq_vs_fp32"]), panel("|QAT-INT8 − FP32|", maps["qat_vs_fp32"])]
            vmax = QUANT_SCALE
            heat = render.heatmap_png(panels, request_dir / "heatmap_levels.png", vmax=vmax, cols=2, panel_px=420,
                                      title=f"Quantization error, fixed colour scale 0–{QUANT_SCALE:g} levels")
            heat = render.stack_pngs([render.perceptual_map_png(maps, request_dir / "perceptual.png"), heat],
                                     request_dir / "heatmap.png")
            heat_ref = None
            if prep.reference is not None:  # each model against the ground truth
                what = "clean" if prep.reference_kind == "simulated" else "ref"
                heat_ref = render.heatmap_png(
                    [panel(f"|FP32 − {what}|", maps["fp32_vs_ref"]), panel(f"|PTQ-INT8 − {what}|", maps["ptq_vs_ref"]),
                     panel(f"|QAT-INT8 − {what}|", maps["qat_vs_ref"])], request_dir / "heatmap_ref.png",
                    vmax=REF_SCALE, cols=3, panel_px=420,
                    title=f"Each model against the {'clean original' if what == 'clean' else 'reference'}, "
                          f"fixed colour scale 0–{REF_SCALE:g} levels")
            state = {
                "images": {"input": prep.image, "reference": prep.reference, **outputs},
                "errors": {r: np.clip(maps[f"{r}_vs_fp32"], 0, 255).astype(np.uint8) for r in ("ptq", "qat")},
                "vmax": vmax, "display_scale": scale, "reference_kind": prep.reference_kind,
            }
            w, h = prep.size
            zx = round(100.0 * result["worst"]["x"] / w, 1)
            zy = round(100.0 * result["worst"]["y"] / h, 1)
            zoom_path = render_zoom(state, zx, zy, DEFAULT_WINDOW, request_dir)
            crop_pair = crop_slider(state, zx, zy, result["worst"]["role"], DEFAULT_WINDOW, request_dir)
        except Exception as exc:
            raise user_error(exc, "measuring the outputs") from None

        tflite = {"note": "", "path": None, "metrics": None, "ms": None}  # the authors' model (paper set)
        if authors.applies(model_set, overrides):
            tflite["note"] = authors.unavailable_notice()

        def measured(final: bool):
            headers, rows = core.table(result, latencies, sizes)
            js = _json(result, latencies, sizes, prep, model_set)
            if tflite["metrics"] is not None:
                rows.append(authors.table_row(headers, tflite["metrics"], tflite["ms"]))
                js["authors_tflite"] = {"label": authors.LABEL, "file": authors.PATH.name, "how": tflite["how"],
                                        **tflite["metrics"], "latency_ms": round(tflite["ms"], 1)}
            text = verdict(result, latencies, sizes, final=final)
            if tflite.get("details"):
                text += "\n\n" + tflite["details"]
            return _frame(headers, rows), text, js

        def note(extra: str = "") -> str:
            return _notice(prep, model_set, overrides, extra, tflite["note"])

        def head() -> str:
            return headline(result, latencies, sizes)

        total_first = sum(latencies[r][0] for r in models.ROLES) / 1000.0
        more = config.TIMING_RUNS - 1
        # Extra timing rounds only within the time budget of one compare, and not while other
        # visitors wait (latency under load means little): the Benchmark tab times more.
        elapsed = time.perf_counter() - t_start
        over_budget = elapsed + total_first > config.TIMING_BUDGET_S
        others_waiting = slots.SLOTS.waiting() > 0
        skip_timing = more > 0 and (over_budget or others_waiting)
        frame, text, js = measured(final=(more == 0 or skip_timing))
        vals = [SKIP()] * N_OUT
        vals[0] = note("Timing more runs…" if more and not skip_timing else "")
        vals[7], vals[8], vals[13] = text, frame, js
        vals[9], vals[10] = heat, zoom_path
        vals[5] = (shown["fp32"], shown["ptq"])
        vals[6] = (shown["fp32"], shown["qat"])
        vals[11], vals[12] = zx, zy
        vals[IDX["headline"]], vals[IDX["slider_crop"]], vals[IDX["heatmap_ref"]] = head(), crop_pair, heat_ref
        vals[IDX["state"]] = state
        downloads = None
        if prep.tiled:
            downloads = [render.save_png(arr, request_dir / f"full_{name}.png")
                         for name, arr in (("input", prep.image), *outputs.items())]
            vals[14] = downloads
        yield vals

        # 2b. The authors' own INT8 TFLite, as released (paper set): one pass, scored like the INT8 models.
        if authors.applies(model_set, overrides) and authors.available():
            try:
                out, tflite["ms"], tflite["how"] = authors.run(prep.image, deadline)
                tflite["metrics"] = authors.measure(out, outputs["fp32"], prep.reference, result)
                tflite["path"] = render.save_png(_display(out)[0], request_dir / "authors.png")
                if downloads is not None:  # full-size mode: its full-size output too
                    downloads.append(render.save_png(out, request_dir / "full_authors_tflite.png"))
                tflite["note"] = f"**{authors.LABEL}**: {authors_short(tflite['metrics'])} (see *Details*)."
                tflite["details"] = (f"**{authors.LABEL}**: {tflite['how']}; agreement with the paper FP32 "
                                     f"{core._num(tflite['metrics']['agreement_psnr_db'], '.2f')} dB; "
                                     + authors_rating(tflite["metrics"]))
            except guard.DeadlineError as exc:
                raise user_error(exc, "running the authors' TFLite model") from None
            except Exception as exc:  # an optional extra: the comparison stands without it
                log.warning("authors' TFLite model failed: %s: %s", type(exc).__name__, exc)
                tflite["note"] = f"The authors' TFLite model could not run ({type(exc).__name__}: {guard.public_text(str(exc))[:200]})."
            frame, text, js = measured(final=(more == 0 or skip_timing))
            vals = [SKIP()] * N_OUT
            vals[0] = note("Timing more runs…" if more and not skip_timing else "")
            vals[7], vals[8], vals[13] = text, frame, js
            vals[IDX["authors"]] = tflite["path"]
            if downloads is not None:
                vals[14] = downloads
            yield vals

        # 3. More timing runs, interleaved (rotating order), streamed.
        if skip_timing:
            more = 0
        for i in range(more):
            if i and time.perf_counter() - t_start + total_first > config.TIMING_BUDGET_S:
                break  # the budget is spent: the last round's numbers stand
            order = list(models.ROLES[i % 3:] + models.ROLES[:i % 3])
            try:
                for role in order:
                    with deadline.onnx():
                        latencies[role].append(core.time_model(enh[role], prep.image, prep.tiled))
            except Exception as exc:
                raise user_error(exc, "timing the models") from None
            if i == more - 1:
                break  # the final update below carries the last round's numbers
            frame, text, js = measured(final=False)
            vals = [SKIP()] * N_OUT
            vals[7], vals[8], vals[13] = text, frame, js
            vals[IDX["headline"]] = head()
            yield vals

        if skip_timing:
            final_notice = note("Latency is from a single pass: extra timing runs are skipped "
                                + ("while other visitors wait." if others_waiting else
                                   f"when they would take this compare past {config.TIMING_BUDGET_S:g} s "
                                   "(the Benchmark tab times more)."))
        else:
            final_notice = note()
        # The last update carries every output (already-sent files are not copied again), so an
        # API caller's result is complete, not a list of "unchanged" markers.
        frame, text, js = measured(final=True)
        final = [final_notice, shown["input"], shown["fp32"], shown["ptq"], shown["qat"],
                 (shown["fp32"], shown["ptq"]), (shown["fp32"], shown["qat"]), text, frame, heat, zoom_path,
                 zx, zy, js, downloads, head(), crop_pair, heat_ref, tflite["path"], state]
        if key is not None:
            # Keep the files and the full final result for the next click on this example.
            keep_dir = True
            example_cache.remember(key, final)
        moved = state.get("zoom")  # the user may have moved the zoom while the timing runs ran
        if moved and Path(moved["path"]).is_file():
            final[10:13] = [moved["path"], moved["x"], moved["y"]]
        yield final
    finally:
        deadline.cancel()
        models.close_enhancers(enh)
        if request_dir is not None and not keep_dir:
            shutil.rmtree(request_dir, ignore_errors=True)
        guard.give_back_memory()


# --------------------------------------------------------------------------------------------
# Zoom
# --------------------------------------------------------------------------------------------

def zoom(state, x_pct, y_pct, window):
    """Redraw the zoom at (x %, y %) of the image with a window of `window` pixels."""
    if not state:
        raise gr.Error("Run a comparison first: the zoom shows a region of its outputs.")
    out_dir = config.work_dir("zoom")
    _sweep(out_dir)
    try:
        path = render_zoom(state, x_pct, y_pct, window, out_dir)
    except Exception as exc:
        raise user_error(exc, "drawing the zoom") from None
    # Remembered in the session's result, so a comparison still streaming its timing runs ends
    # with the zoom where the user put it.
    state["zoom"] = {"x": float(x_pct), "y": float(y_pct), "path": path}
    return path


def zoom_at_click(state, window, evt: gr.SelectData):
    """Click on any shown image → zoom there."""
    if not state:
        raise gr.Error("Run a comparison first: the zoom shows a region of its outputs.")
    try:
        x, y = evt.index[:2]
    except (TypeError, ValueError):
        raise gr.Error("Could not read where you clicked; use the x/y sliders instead.") from None
    scale = state.get("display_scale") or 1.0
    h, w = state["images"]["input"].shape[:2]
    x_pct = round(min(100.0, max(0.0, 100.0 * (float(x) / scale) / w)), 1)
    y_pct = round(min(100.0, max(0.0, 100.0 * (float(y) / scale) / h)), 1)
    return x_pct, y_pct, zoom(state, x_pct, y_pct, window)


def _sweep(folder: Path, max_age_s: float = 600.0) -> None:
    """Delete zoom images older than `max_age_s` (Gradio has its own copy once it was sent)."""
    now = time.time()
    for p in folder.glob("zoom_*.png"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
        except OSError:
            pass
