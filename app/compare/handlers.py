"""The Compare tab's event handlers (Gradio side of `app.compare.pipeline`). No torch.

`compare` streams named updates ({output name: value}, `OUTPUT_NAMES`) from a `CompareRun`,
whose stages are the design: the previous result blanked at once; one pass of each model (the
three outputs, and each model's first latency sample); the analysis, with the paper set's LiteRT
pictures (the authors' TFLite file as released, QATIE's QAT-INT8 on LiteRT) computed beside it;
more timing rounds while they fit the time budget; a final update carrying every output.
`as_slots` turns an update into Gradio's list of event outputs.
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

from qatie.runtime.cpu import int8_path
from qatie.errors import QatieError

from app.boundary import uploads
from app import config, models, outputs, render
from app.compare import authors, beside, litert
from app.compare import pipeline as core
from app.compare import example_cache
from app.boundary import slots
from app.compare.zoom import DEFAULT_WINDOW, crop_slider, render_zoom
from app.compare.verdict import headline, picture_rating, picture_short, verdict
from app.boundary import guard

log = logging.getLogger("qatie.app")

#: The Compare tab's outputs, by name: handlers yield {name: value} updates (names left out stay
#: as they are); `as_slots` lays one out in this order for Gradio's event outputs (app/compare/layout.py).
OUTPUT_NAMES = ("notice", "input", "fp32", "ptq", "qat", "slider_ptq", "slider_qat", "verdict", "metrics",
                "heatmap", "zoom", "zoom_x", "zoom_y", "metrics_json", "downloads", "headline", "slider_crop",
                "heatmap_ref", "authors", "litert", "litert_note", "state")
#: The INT8 pictures prepared beside the analysis (paper set, with ai-edge-litert), by output name,
#: in the order they are finished: the authors' TFLite file as released (its tiles beside the
#: analysis), and QATIE's own QAT-INT8 written to LiteRT (loaded beside it, run after it, alone).
#: Each module offers the same names: LABEL, NAME, JSON_KEY, DOWNLOAD_NAME, LATENCY_IS, applies,
#: available, unavailable_notice, start (→ an object with background(), finish(), cancel() and file).
BESIDE = {"authors": authors, "litert": litert}
#: Fixed colour scales (8-bit levels) of the error displays, so a colour means the same on every
#: photo: quantization error (INT8 vs FP32) and each model against the reference.
QUANT_SCALE = 16.0
REF_SCALE = 64.0
SKIP = gr.skip


def as_slots(update: dict) -> list:
    """A named update as Gradio's list of the Compare events' outputs (a name left out: unchanged)."""
    return outputs.as_slots(OUTPUT_NAMES, update)


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
        found = uploads.payload_path(payload)
        if found is not None:
            path, name = found
            if not name.lower().endswith(".onnx"):
                raise uploads.AppInputError(f"uploaded {models.ROLE_LABELS[role]} model {name!r} is not an .onnx file")
            out[role] = (str(path), name)
    return out


#: The metrics table's column widths (its 9 columns, `core.table_headers`), in pixels: every column fits the
#: results column of a 1440-px window (long headers and cells wrap), and on a phone each stays
#: readable (≥ 90 px) with the table scrolling sideways in its box.
TABLE_COLUMN_WIDTHS = ["114px", "96px", "100px", "90px", "96px", "100px", "90px", "90px", "90px"]


def empty_table() -> pd.DataFrame:
    """The metrics table before a result (its columns without a reference, no rows — never
    Gradio's "1 2 3")."""
    return pd.DataFrame(columns=core.table_headers(reference=False))


def empty_outputs(notice: str) -> dict:
    """Every output blanked, with `notice` in the notice line."""
    blank = {name: None for name in OUTPUT_NAMES}
    blank.update(notice=notice, metrics=empty_table(), headline="", verdict="", zoom_x=SKIP(), zoom_y=SKIP())
    return blank


def error_outputs(err: gr.Error) -> dict:
    """Every output blanked, the message kept in the notice line (a toast alone vanishes, and the
    previous photo's result must not stay on screen under an error)."""
    title = getattr(err, "title", None) or "Error"
    return empty_outputs(f'<span class="error-notice">⚠️ <b>{title}:</b> {getattr(err, "message", str(err))}</span>')


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


def _json(result: dict, latencies: dict, sizes: dict, prep: core.Prepared, model_set: models.ModelSet) -> dict:
    out = core.public(result)
    out["latency_ms"] = {r: core.latency_summary(latencies[r]) for r in models.ROLES if latencies.get(r)}
    out["file_mb"] = {r: round(sizes[r], 3) for r in models.ROLES}
    out["model_set"] = model_set.label
    out["model_set_key"] = model_set.key
    out["threads"] = config.THREADS
    out["int8_path"] = int8_path()  # which integer kernels produced the INT8 outputs and latencies (qatie.runtime.cpu)
    out["original_size"] = list(prep.original_size)
    out["seed"] = prep.seed
    return out


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


def _working(what: str) -> str:
    """The headline while a comparison runs: the top of the page says what is happening (on a
    phone it is the first thing on screen) instead of showing empty boxes."""
    return f'<div class="headline">⏳ {what}</div>'


def _over_budget() -> str:
    """Why a compare's latency is from its single pass: the timing rounds did not fit the budget."""
    return f"when they would take this compare past {config.TIMING_BUDGET_S:g} s (the Benchmark tab times more)."


def _waiting(ahead: int) -> dict:
    return {"notice": f"⏳ Waiting for a free slot — {ahead} request(s) ahead of yours. Visitors are served in "
                      "turn; your comparison starts as soon as a slot frees."}


# --------------------------------------------------------------------------------------------
# The compare generator
# --------------------------------------------------------------------------------------------

def compare(image, reference=None, simulate=False, seed=0, full_size=False, model_set=None,
            custom_fp32=None, custom_ptq=None, custom_qat=None, session_sets=None, request: gr.Request = None):
    """Enhance a photo with the FP32, PTQ-INT8 and QAT-INT8 models and compare the outputs.

    Yields Gradio's list of outputs (`as_slots`; by name, `OUTPUT_NAMES`): notice, input, FP32,
    PTQ-INT8, QAT-INT8, FP32↔PTQ slider, FP32↔QAT slider, verdict, metrics table, heatmaps (INT8
    vs FP32), zoom (worst-region crops), zoom x %, zoom y %, metrics (JSON), downloads, headline
    (one line of HTML), worst-region FP32↔INT8 slider, heatmaps vs the reference, the authors' INT8
    TFLite output and QATIE's QAT-INT8 on LiteRT (paper set with ai-edge-litert; else None), the
    line over those two (how each is rated), the result state. `model_set` None
    means the default set (`models.default_set()`).
    """
    for update in compare_named(image, reference, simulate, seed, full_size, model_set, custom_fp32, custom_ptq,
                                custom_qat, session_sets, request):
        yield as_slots(update)


def compare_named(image, reference=None, simulate=False, seed=0, full_size=False, model_set=None,
                  custom_fp32=None, custom_ptq=None, custom_qat=None, session_sets=None, request: gr.Request = None):
    """`compare` as {output name: value} updates (the last one carries every output)."""
    try:
        with slots.one_per_session(request, "A comparison"):
            ticket = slots.SLOTS.ticket(slots.visitor(request))
            try:
                waited = time.monotonic()
                while not ticket.wait(1.0):  # visitors are served in turn (app.boundary.slots)
                    if time.monotonic() - waited > config.SLOT_WAIT_S:
                        raise slots.SlotWaitError(slots.wait_message("The comparison"))
                    yield _waiting(ticket.ahead())
                run = CompareRun(image, reference, simulate, seed, full_size, model_set,
                                 (custom_fp32, custom_ptq, custom_qat), session_sets)
                yield from run.stream()
            finally:
                ticket.release()
    except slots.BusyError as exc:  # the running request's outputs stay as they are
        raise user_error(exc) from None
    except Exception as exc:
        err = user_error(exc)
        yield error_outputs(err)
        raise err from None


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


class CompareRun:
    """One comparison, stage by stage; `stream()` yields the named updates:

    1. blank the previous result at once, the headline saying what runs;
    2. ONE pass of each model: the three outputs (and the input as the models got it), and each
       model's first latency sample;
    3. the analysis (table, verdict, maps, zoom, sliders) — the LiteRT pictures (paper set: the
       authors' TFLite file, QATIE's QAT-INT8 on LiteRT) are prepared beside it (`app.compare.beside`)
       and follow: the authors' tiles joined by this thread, then LiteRT's run, alone;
    4. more interleaved timing rounds while they fit the time budget, so the latency shown ends as
       the median of the passes.

    Images are written by `render.save_png` (zlib level 1) into a per-request folder and returned
    as paths; Gradio copies them into its cache, and the folder is removed when the run ends.
    Results for the bundled examples are kept (keyed by file contents, options and the model
    files' signature) and replayed on the next click."""

    def __init__(self, image, reference, simulate, seed, full_size, model_set, custom, session_sets):
        self.t_start = time.perf_counter()
        self.deadline = guard.Deadline(config.COMPARE_DEADLINE_S, "The comparison")
        self.enh = None
        self.request_dir: Path | None = None
        self.keep_dir = False
        # The pictures computed beside the analysis (`BESIDE`): each its runner while it runs, notice
        # line, shown file, metrics, latency and details.
        self.extras = {name: {"beside": None, "note": "", "path": None, "metrics": None, "ms": None}
                       for name in BESIDE}
        self.worker = None  # the pictures' thread (`app.compare.beside`), made when one applies
        self.shown: dict[str, object] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self.latencies: dict[str, list[float]] = {}
        self.downloads = None
        self.skip_note = ""
        try:
            self.prep = core.prepare(image, reference, bool(simulate), seed, bool(full_size))
            self.deadline.extend(config.COMPARE_DEADLINE_PER_MP_S * self.prep.megapixels)
            self.overrides = _overrides(*custom)
            self.model_set = models.resolve_set(model_set, session_sets)
            if self.model_set.key == models.PAPER_KEY and self.prep.reference is not None:
                _drop_reference(self.prep)
            if self.model_set.key in models.BUILTIN_SETS and not self.overrides:
                models.wait_warm()
        except Exception as exc:
            raise user_error(exc, "reading the inputs") from None

    def mark(self, what: str) -> None:
        log.debug("compare: %s at %.3f s", what, time.perf_counter() - self.t_start)

    def stream(self):
        try:
            try:
                self.enh = models.enhancers(self.model_set, self.overrides)
            except Exception as exc:
                raise user_error(exc, "reading the inputs") from None
            self.sizes = {r: models.file_mb(e) for r, e in self.enh.items()}
            self.cache_key = example_cache.key(self.prep, self.model_set, bool(self.overrides))
            cached = example_cache.get(self.cache_key) if self.cache_key is not None else None
            if cached is not None:
                yield example_cache.replay(cached)
                return
            self.request_dir = config.work_dir("requests", uuid.uuid4().hex)
            yield self._blank()
            yield self._run_models()
            yield self._analyse()
            for name in self._pending():  # the authors' first: LiteRT's run then has the machine to itself
                update = self._beside_picture(name)
                if self._pending() or (self.more_rounds and self._round_fits()):  # else the final update carries it
                    yield update
            yield from self._timing_rounds()
            yield self._final()
        finally:
            self.deadline.cancel()
            for ex in self.extras.values():
                if ex["beside"] is not None:
                    ex["beside"].cancel()
            if self.worker is not None:
                self.worker.shutdown(wait=False, cancel_futures=True)
            models.close_enhancers(self.enh)
            if self.request_dir is not None and not self.keep_dir:
                shutil.rmtree(self.request_dir, ignore_errors=True)
            guard.give_back_memory()

    def notice(self, extra: str = "") -> str:
        return _notice(self.prep, self.model_set, self.overrides, extra,
                       " ".join(ex["note"] for ex in self.extras.values() if ex["note"]))

    def _pending(self) -> list[str]:
        """The pictures not yet finished."""
        return [name for name, ex in self.extras.items() if ex["beside"] is not None]

    # -- 1. blank the previous result ------------------------------------------------------
    def _blank(self) -> dict:
        """Blank the previous result at once (the photo itself is on screen in the upload box; its
        PNG here goes out with the three outputs, encoded beside them, not before the models)."""
        update = empty_outputs(_notice(self.prep, self.model_set, self.overrides,
                                       "Running FP32, PTQ-INT8 and QAT-INT8…"))
        update["headline"] = _working("Running FP32, PTQ-INT8 and QAT-INT8 on your photo…")
        self.mark("input ready")
        return update

    # -- 2. one pass of each model ------------------------------------------------------------
    def _run_models(self) -> dict:
        prep = self.prep
        try:
            for role in models.ROLES:  # one after another: each pass is also a clean latency sample
                with self.deadline.onnx():
                    self.outputs[role], ms = core.run_model(self.enh[role], prep.image, prep.tiled)
                self.latencies[role] = [ms]
            for role, (_, name) in self.overrides.items():  # a model the user brought: exact on this CPU?
                with self.deadline.onnx():
                    warning = models.exactness_warning(role, name, self.enh[role], self.outputs[role], prep.image,
                                                       prep.tiled)
                if warning:
                    prep.notices.append(warning)
        except Exception as exc:
            raise user_error(exc, "running the models") from None
        # Encoded together once the passes are done (on both cores), so no pass is timed beside one.
        disp, self.display_scale = _display(prep.image)
        self.shown.update(render.save_pngs({"input": disp, **{role: _display(self.outputs[role])[0]
                                                              for role in models.ROLES}}, self.request_dir))
        self.mark("outputs ready (models " + ", ".join(f"{r} {self.latencies[r][0]:.0f} ms"
                                                       for r in models.ROLES) + ")")
        return {"notice": self.notice("Measuring…"), **{k: self.shown[k] for k in ("input", *models.ROLES)},
                "headline": _working("The three outputs are below — now measuring what a viewer would notice…")}

    # -- 3. the analysis ----------------------------------------------------------------------
    def _analyse(self) -> dict:
        for name in BESIDE:
            self._start_beside(name)
        started = {name: ex["beside"] for name, ex in self.extras.items() if ex["beside"] is not None}
        if started:
            self.worker = beside.worker()
            beside.schedule(self.worker, started)
        try:
            self.deadline.check()
            self.result = core.analyse(self.prep, self.outputs)
            heat, heat_ref = self._heatmaps(self.result["maps"])
            self._zoom_state()
        except Exception as exc:
            raise user_error(exc, "measuring the outputs") from None
        self._plan_timing()
        more = self.more_rounds > 0
        if self.prep.tiled:
            self.downloads = [render.save_png(arr, self.request_dir / f"full_{name}.png")
                              for name, arr in (("input", self.prep.image), *self.outputs.items())]
        self.heat, self.heat_ref = heat, heat_ref
        update = self._measured(final=not more and not self._pending())
        update.update(
            notice=self.notice("Timing more runs…" if more else ""), heatmap=heat, heatmap_ref=heat_ref,
            zoom=self.zoom_path, zoom_x=self.zx, zoom_y=self.zy, slider_crop=self.crop_pair,
            slider_ptq=(self.shown["fp32"], self.shown["ptq"]), slider_qat=(self.shown["fp32"], self.shown["qat"]),
            headline=headline(self.result, self.latencies, self.sizes), litert_note=self._litert_note(),
            state=self.state)
        if self.downloads is not None:
            update["downloads"] = self.downloads
        self.mark("analysis ready")
        return update

    def _heatmaps(self, maps: dict) -> tuple[str, str | None]:
        def panel(title: str, m: np.ndarray):
            return f"{title}  (max {m.max():.0f}, {100 * (m > 2).mean():.1f}% > 2 levels)", m

        d = self.request_dir
        heat = render.heatmap_png([panel("|PTQ-INT8 − FP32|", maps["ptq_vs_fp32"]),
                                   panel("|QAT-INT8 − FP32|", maps["qat_vs_fp32"])], d / "heatmap_levels.png",
                                  vmax=QUANT_SCALE, cols=2, panel_px=420,
                                  title=f"Quantization error, fixed colour scale 0–{QUANT_SCALE:g} levels")
        heat = render.stack_pngs([render.perceptual_map_png(maps, d / "perceptual.png"), heat], d / "heatmap.png")
        if self.prep.reference is None:
            return heat, None
        what = "clean" if self.prep.reference_kind == "simulated" else "ref"  # each model against the ground truth
        heat_ref = render.heatmap_png(
            [panel(f"|{models.ROLE_LABELS[r]} − {what}|", maps[f"{r}_vs_ref"]) for r in models.ROLES],
            d / "heatmap_ref.png", vmax=REF_SCALE, cols=3, panel_px=420,
            title=f"Each model against the {'clean original' if what == 'clean' else 'reference'}, "
                  f"fixed colour scale 0–{REF_SCALE:g} levels")
        return heat, heat_ref

    def _zoom_state(self) -> None:
        """The session's state (for the zoom) and the zoom on the worst region."""
        maps, prep = self.result["maps"], self.prep
        self.state = {
            "images": {"input": prep.image, "reference": prep.reference, **self.outputs},
            "errors": {r: np.clip(maps[f"{r}_vs_fp32"], 0, 255).astype(np.uint8) for r in ("ptq", "qat")},
            "vmax": QUANT_SCALE, "display_scale": self.display_scale, "reference_kind": prep.reference_kind,
        }
        w, h = prep.size
        worst = self.result["worst"]
        self.zx, self.zy = round(100.0 * worst["x"] / w, 1), round(100.0 * worst["y"] / h, 1)
        self.zoom_path = render_zoom(self.state, self.zx, self.zy, DEFAULT_WINDOW, self.request_dir)
        self.crop_pair = crop_slider(self.state, self.zx, self.zy, worst["role"], DEFAULT_WINDOW, self.request_dir)

    def _plan_timing(self) -> None:
        """Extra timing rounds only within the time budget of one compare, and not while other
        visitors wait (latency under load means little): the Benchmark tab times more."""
        self.round_s = sum(self.latencies[r][0] for r in models.ROLES) / 1000.0
        self.more_rounds = config.TIMING_RUNS - 1
        if self.more_rounds <= 0:
            return
        if slots.SLOTS.waiting() > 0:
            self.skip_note = "while other visitors wait."
        elif not self._round_fits():
            self.skip_note = _over_budget()
        if self.skip_note:
            self.more_rounds = 0

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def _round_fits(self) -> bool:
        """One more timing round ends within the compare's time budget."""
        return self._elapsed() + self.round_s <= config.TIMING_BUDGET_S

    def _measured(self, final: bool) -> dict:
        """The table, verdict and JSON from the numbers so far."""
        headers, rows = core.table(self.result, self.latencies, self.sizes)
        js = _json(self.result, self.latencies, self.sizes, self.prep, self.model_set)
        text = verdict(self.result, self.latencies, self.sizes, final=final)
        for name in self._shown_beside():
            mod, ex = BESIDE[name], self.extras[name]
            rows.append(core.picture_row(headers, mod.LABEL, ex["metrics"], ex["ms"], ex["file_mb"]))
            js[mod.JSON_KEY] = {"label": mod.LABEL, "file": ex["file"], "how": ex["how"], **ex["metrics"],
                                "latency_ms": round(ex["ms"], 1), "latency_is": mod.LATENCY_IS}
            text += "\n\n" + ex["details"]
        return {"verdict": text, "metrics": pd.DataFrame(rows, columns=headers), "metrics_json": js}

    def _shown_beside(self) -> list[str]:
        """The pictures that are in (rated)."""
        return [name for name, ex in self.extras.items() if ex["metrics"] is not None]

    # -- 3b. the pictures prepared beside the analysis -------------------------------------------
    def _start_beside(self, name: str) -> None:
        """Prepare `name`'s picture (`BESIDE`) where it applies; `beside.schedule` then runs it on
        the core the analysis leaves."""
        mod, ex = BESIDE[name], self.extras[name]
        if not mod.applies(self.model_set, self.overrides):
            return
        ex["note"] = mod.unavailable_notice()
        if mod.available():
            try:
                ex["beside"] = mod.start(self.prep, self.model_set, self.deadline)
            except Exception as exc:  # an optional extra: the comparison stands without it
                self._beside_failed(name, exc)

    def _beside_picture(self, name: str) -> dict:
        """`name`'s picture once it is in (the authors' tiles joined by this thread; LiteRT's run done
        here, alone): rated like the INT8 models, shown, in the table."""
        mod, ex = BESIDE[name], self.extras[name]
        try:
            out, ms, how = ex["beside"].finish()
            ex["metrics"] = core.measure_picture(out, self.outputs["fp32"], self.prep.reference, self.result)
            ex.update(ms=ms, how=how, file=ex["beside"].file.name, file_mb=ex["beside"].file.stat().st_size / 1e6)
            ex["path"] = render.save_png(_display(out)[0], self.request_dir / f"{name}.png")
            if self.downloads is not None:  # full-size mode: its full-size output too
                self.downloads.append(render.save_png(out, self.request_dir / mod.DOWNLOAD_NAME))
            ex["rated"] = f"**{mod.LABEL}**: {picture_short(ex['metrics'])}"
            ex["details"] = (f"**{mod.LABEL}**: {how}; agreement with the paper FP32 "
                             f"{core._num(ex['metrics']['agreement_psnr_db'], '.2f')} dB; "
                             + picture_rating(ex["metrics"]) + f" Latency: {mod.LATENCY_IS}.")
        except guard.DeadlineError as exc:
            raise user_error(exc, f"running {mod.NAME}") from None
        except Exception as exc:  # an optional extra: the comparison stands without it
            ex["metrics"] = None
            self._beside_failed(name, exc)
        ex["beside"] = None
        update = self._measured(final=self.more_rounds == 0 and not self._pending())
        update.update(notice=self.notice("Timing more runs…" if self.more_rounds else ""),
                      litert_note=self._litert_note(), **{name: ex["path"]})
        if self.downloads is not None:
            update["downloads"] = self.downloads
        self.mark(f"{name} picture ready")
        return update

    def _litert_note(self) -> str:
        """The line over the LiteRT pictures: how each is rated (its row in the table, in words)."""
        rated = [ex["rated"] for ex in self.extras.values() if ex.get("rated")]
        if not rated:
            return "⏳ On LiteRT, the phone runtime: computing…" if self._pending() else ""
        return ("**On LiteRT, the phone runtime** — rated like the INT8 models (numbers and latency: *Details*): "
                + "; ".join(rated) + ".")

    def _beside_failed(self, name: str, exc: BaseException) -> None:
        mod = BESIDE[name]
        log.warning("%s failed: %s: %s", mod.NAME, type(exc).__name__, exc)
        self.extras[name]["note"] = (f"{mod.NAME[:1].upper()}{mod.NAME[1:]} could not run ({type(exc).__name__}: "
                                     f"{guard.public_text(str(exc))[:200]}).")

    # -- 4. more timing rounds ------------------------------------------------------------------
    def _timing_rounds(self):
        """Interleaved rounds in rotating order, streamed; the last round's numbers go out with
        the final update."""
        for i in range(self.more_rounds):
            if not self._round_fits():  # the budget is spent (the pictures may have spent it): the numbers stand
                if not i:
                    self.skip_note = _over_budget()
                break
            order = list(models.ROLES[i % 3:] + models.ROLES[:i % 3])
            try:
                for role in order:
                    with self.deadline.onnx():
                        self.latencies[role].append(core.time_model(self.enh[role], self.prep.image, self.prep.tiled))
            except Exception as exc:
                raise user_error(exc, "timing the models") from None
            if i == self.more_rounds - 1:
                break
            yield {**self._measured(final=False), "headline": headline(self.result, self.latencies, self.sizes)}

    # -- the final update ---------------------------------------------------------------------
    def _final(self) -> dict:
        """Every output (already-sent files are not copied again), so an API caller's result is
        complete, not a list of "unchanged" markers."""
        s = self.shown
        note = self.notice(f"Latency is from a single pass: extra timing runs are skipped {self.skip_note}"
                           if self.skip_note else "")
        final = {"notice": note, "input": s["input"], "fp32": s["fp32"], "ptq": s["ptq"], "qat": s["qat"],
                 "slider_ptq": (s["fp32"], s["ptq"]), "slider_qat": (s["fp32"], s["qat"]),
                 **self._measured(final=True), "heatmap": self.heat, "zoom": self.zoom_path, "zoom_x": self.zx,
                 "zoom_y": self.zy, "downloads": self.downloads,
                 "headline": headline(self.result, self.latencies, self.sizes), "slider_crop": self.crop_pair,
                 "heatmap_ref": self.heat_ref, **{name: ex["path"] for name, ex in self.extras.items()},
                 "litert_note": self._litert_note(), "state": self.state}
        if self.cache_key is not None:  # the files and the full result, for the next click on this example
            self.keep_dir = True
            example_cache.remember(self.cache_key, final)
        moved = self.state.get("zoom")  # the user may have moved the zoom while the timing runs ran
        if moved and Path(moved["path"]).is_file():
            final = {**final, "zoom": moved["path"], "zoom_x": moved["x"], "zoom_y": moved["y"]}
        self.mark("final")
        return final


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
