"""The Train tab: short FP32 training → PTQ calibration → QAT fine-tune → ONNX export, live.

This is the only part of the app that uses torch, and it imports it (and every torch-dependent
qatie module: train, ptq, qat, export, checkpoint, model) inside the worker, on first use — the
compare path stays torch-free.

The pipeline runs in a worker thread; the Gradio handler is a generator that drains the
worker's event queue about once a second and streams a loss curve, a validation-PSNR curve and
`gr.Progress`. (The curves are a matplotlib PNG: Gradio's LinePlot fixes its colour legend at the
first update and then drops series that appear later, such as the QAT stage.) Cancelling (button, closed tab) sets the run's stop flag, which the training loop
checks every step. Each run writes into its own folder; the finished set is added to *that
browser session's* model sets (a `gr.State`), so it shows up in the Compare and Benchmark tabs
for this user only, and its files are offered for download.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from qatie.errors import QatieError

from app import config, models, outputs
from app.boundary import guard, uploads
from app.boundary import slots
from app.compare.handlers import user_error
from app.train.progress import QAT_STEP_COST, plot_curves, progress_md

log = logging.getLogger("qatie.app")

DATA_SAMPLES = "Built-in sample photos (scikit-image)"
DATA_UPLOADS = "My photos (upload below)"
INIT_SCRATCH = "Scratch (a new network)"
INIT_SHIPPED = "The shipped FP32 model (fine-tune it)"
MAX_TRAIN_PHOTOS = 24
TRAIN_PHOTO_MP = 1.0

# ---------------------------------------------------------------------------------------------
# The compute budget of one training on a public CPU Space (2 vCPU shared by every visitor;
# training gets one torch thread and one of the `config.HEAVY_SLOTS`, one training at a time).
# Work is counted in units of one FP32 step on one megapixel of crops at width 16 (cost grows
# with batch × crop² × (width/16)²; a QAT step, with fake quantization and a teacher pass, cost
# 5.5× an FP32 step: 0.94 vs 0.165 s at the defaults). One unit took about 5 s on one torch
# thread of this project's 2-core AMD EPYC test machine while it was shared (load ~7), so the
# default budget of 100 units is at most ~8 minutes of steps plus ~1.5 minutes of validation,
# calibration and export: under `TRAIN_DEADLINE_S`, which stops any run that still overruns.
# The Train tab's defaults use about half of it.
# ---------------------------------------------------------------------------------------------
MAX_FP32_STEPS = 2000
MAX_QAT_STEPS = 500
MAX_BATCH = 16
MAX_PATCH = 128
TRAIN_BUDGET_UNITS = config._env_float("QATIE_TRAIN_BUDGET_UNITS", 100.0)
TRAIN_DEADLINE_S = config._env_float("QATIE_TRAIN_DEADLINE_S", 900.0)
UNIT_S = 5.0  # seconds per unit (see above), for the estimate shown before starting
OVERHEAD_S = 90.0  # torch import, validation, PTQ calibration, three exports
_TRAIN_SLOT = threading.BoundedSemaphore(1)


def cost_units(s: "TrainSettings") -> float:
    """The compute a run asks for, in budget units (see above)."""
    width = 32 if s.init == INIT_SHIPPED else s.width  # the shipped network is width 32
    per_step = s.batch_size * s.patch ** 2 / 1e6 * (width / 16) ** 2
    return per_step * (s.fp32_steps + QAT_STEP_COST * s.qat_steps)


def estimate_s(s: "TrainSettings") -> float:
    return OVERHEAD_S + UNIT_S * cost_units(s)


def budget_md() -> str:
    """What the user sees before starting: the limits and why."""
    return (f"**Compute budget** (a public demo on 2 shared CPU cores): at most {MAX_FP32_STEPS} FP32 and "
            f"{MAX_QAT_STEPS} QAT steps, batch {MAX_BATCH}, crops of {MAX_PATCH} px, and {TRAIN_BUDGET_UNITS:g} "
            f"units of work in all (one unit: one FP32 step on 1 MP of crops at width 16; a QAT step costs "
            f"{QAT_STEP_COST:g}, width 32 costs 4×) — about {(OVERHEAD_S + UNIT_S * TRAIN_BUDGET_UNITS) / 60:.0f} "
            f"minutes. A run is stopped after {TRAIN_DEADLINE_S / 60:.0f} minutes whatever happens, and one "
            "training runs at a time on this server.")


# Stop flags of running trainings, by browser session (the Cancel button's handler sets it).
_STOPS: dict[str, threading.Event] = {}
_STOPS_LOCK = threading.Lock()


@dataclass
class TrainSettings:
    data: str = DATA_SAMPLES
    init: str = INIT_SCRATCH
    width: int = 16
    fp32_steps: int = 600
    qat_steps: int = 150
    batch_size: int = 8
    patch: int = 64
    lr: float = 1e-3
    qat_lr: float = 1e-4
    ptq_method: str = "minmax"
    num_calib: int = 8
    seed: int = 0


DEFAULTS = TrainSettings()


def _threads() -> int:
    """torch threads for training (QATIE_TRAIN_THREADS, default 1): on a 2-vCPU machine that
    also serves Compare requests, two OpenMP threads spin-waiting on each other while ONNX Runtime
    runs were measured 10× slower than one thread; one thread leaves a core to the other users."""
    return max(1, int(config._env_float("QATIE_TRAIN_THREADS", 1)))


def _validate(s: TrainSettings) -> None:
    def check(name, v, lo, hi):
        if v is None or not lo <= v <= hi:
            raise uploads.AppInputError(f"{name} must be between {lo} and {hi}, got {v}")
    if s.width not in (16, 24, 32):
        raise uploads.AppInputError(f"width must be 16, 24 or 32, got {s.width}")
    check("FP32 steps", s.fp32_steps, 0 if s.init == INIT_SHIPPED else 1, MAX_FP32_STEPS)
    check("QAT steps", s.qat_steps, 1, MAX_QAT_STEPS)
    check("batch size", s.batch_size, 1, MAX_BATCH)
    check("patch size", s.patch, 32, MAX_PATCH)
    check("learning rate", s.lr, 1e-6, 1e-1)
    check("QAT learning rate", s.qat_lr, 1e-7, 1e-1)
    check("calibration images", s.num_calib, 1, 64)
    if s.ptq_method not in ("minmax", "percentile", "entropy"):
        raise uploads.AppInputError(f"PTQ method must be minmax, percentile or entropy, got {s.ptq_method!r}")
    if s.init not in (INIT_SCRATCH, INIT_SHIPPED):
        raise uploads.AppInputError(f"unknown starting point {s.init!r}")
    if s.data not in (DATA_SAMPLES, DATA_UPLOADS):
        raise uploads.AppInputError(f"unknown training data {s.data!r}")
    units = cost_units(s)
    if units > TRAIN_BUDGET_UNITS:
        raise uploads.AppInputError(
            f"these settings need {units:.0f} units of compute (about {estimate_s(s) / 60:.0f} minutes here); this "
            f"public demo's budget per training is {TRAIN_BUDGET_UNITS:g}. Use fewer steps, a smaller batch or "
            "crops, or a narrower network.")


def _prepare_uploads(files, folder: Path) -> tuple[str, int]:
    """Validate uploaded training photos, write them (≤ 1 MP PNG) to `folder`; the data SPEC."""
    from qatie.imageio import to_uint8

    from app.boundary.box import Box
    from app.render import fit_size, resize_u8, save_png

    files = [f for f in (files or []) if f]
    if not files:
        raise uploads.AppInputError("'My photos' is selected but no photos were uploaded: add some, or train on the samples")
    if len(files) > MAX_TRAIN_PHOTOS:
        raise uploads.AppInputError(f"{len(files)} photos uploaded; the limit is {MAX_TRAIN_PHOTOS}")
    folder.mkdir(parents=True, exist_ok=True)
    with Box("Reading the training photos") as box:  # one worker decodes them all (app.boundary.box)
        for i, f in enumerate(files):
            up = uploads.read_upload(f, "training photo", max_pixels=TRAIN_PHOTO_MP * 1e6, box=box)
            h, w = up.image.shape[:2]
            if min(h, w) < 32:
                raise uploads.AppInputError(f"training photo {up.name!r} is {w}×{h}: training photos need at least "
                                         "32×32 pixels")
            tw, th = fit_size(w, h, TRAIN_PHOTO_MP * 1e6)
            save_png(resize_u8(to_uint8(up.image), (tw, th)), folder / f"{i:03d}.png")
    return f"clean:{folder}", len(files)


def stage_configs(s: TrainSettings, spec: str, width: int, threads: int):
    """The tab's settings as the package's recipes (`qatie.config`): (TrainConfig, PTQConfig,
    QATConfig). What the tab does not set is the shipped recipe's: the loss and data mix for FP32,
    distillation with ranges calibrated then learned for QAT."""
    from qatie.config import PTQConfig, QATConfig, TrainConfig

    train_cfg = TrainConfig(data=[spec], width=width, steps=max(1, s.fp32_steps), batch_size=s.batch_size,
                            patch=s.patch, lr=s.lr, min_lr=s.lr / 50,
                            warmup_steps=min(50, max(1, s.fp32_steps // 10)), seed=s.seed,
                            val_every=max(1, s.fp32_steps // 8), val_limit=8,
                            checkpoint_every=max(1, s.fp32_steps), threads=threads)
    ptq_cfg = PTQConfig(method=s.ptq_method, calib=spec, num_calib=s.num_calib, seed=s.seed)
    qat_cfg = QATConfig(data=(spec,), steps=s.qat_steps, lr=s.qat_lr, batch_size=s.batch_size, patch=s.patch,
                        num_calib=s.num_calib, seed=s.seed, val_every=max(1, s.qat_steps // 4), val_limit=8,
                        threads=threads)  # validated on the FP32 curves' photos
    return train_cfg, ptq_cfg, qat_cfg


def _pipeline(s: TrainSettings, spec: str, out: Path, events: "queue.Queue", stop: threading.Event) -> None:
    """Worker thread: every stage posts events; exceptions are posted, never raised."""
    try:
        t0 = time.time()
        events.put(("stage", "Loading torch…"))
        import torch

        threads = _threads()
        torch.set_num_threads(threads)
        from qatie.model.checkpoint import load_model, save_checkpoint
        from qatie.quantize.ptq import run_ptq
        from qatie.quantize.qat import export_checkpoint, run_qat
        from qatie.train.loop import train

        fp32_pt = out / "fp32.pt"
        if s.init == INIT_SHIPPED:
            src = config.CHECKPOINTS / "fp32.pt"
            if not src.is_file():
                raise uploads.AppInputError("the shipped FP32 checkpoint (checkpoints/fp32.pt) is not in this copy of the app; "
                                         "start from scratch instead")
            model = load_model(src)
            width = model.width
        else:
            model, width = None, s.width
        cfg, ptq_cfg, qat_cfg = stage_configs(s, spec, width, threads)

        if s.fp32_steps > 0:
            events.put(("stage", f"FP32 training: {s.fp32_steps} steps"))
            summary = train(cfg, out / "fp32_run", model=model, progress=lambda e: events.put(("fp32", e)),
                            should_stop=stop.is_set)
            if stop.is_set():
                events.put(("cancelled", None))
                return
            from qatie.model.checkpoint import load_model as _load

            trained = _load(out / "fp32_run" / "last.pt")
            save_checkpoint(fp32_pt, trained, kind="fp32", config=cfg.to_dict(), steps=summary["steps_done"],
                            wall_s=summary["wall_s"], data=summary["data"])
        else:
            shutil.copyfile(config.CHECKPOINTS / "fp32.pt", fp32_pt)

        events.put(("stage", "Exporting FP32 to ONNX"))
        export_checkpoint(fp32_pt, out / "fp32.onnx")
        if stop.is_set():
            events.put(("cancelled", None))
            return
        events.put(("stage", f"PTQ: calibrating ({s.ptq_method}, {s.num_calib} images) and exporting INT8"))
        run_ptq(fp32_pt, out / "int8_ptq.onnx", ptq_cfg)
        if stop.is_set():
            events.put(("cancelled", None))
            return
        events.put(("stage", f"QAT fine-tuning: {s.qat_steps} steps"))
        run_qat(fp32_pt, out / "qat.pt", qat_cfg, progress=lambda e: events.put(("qat", e)), should_stop=stop.is_set)
        if stop.is_set():
            events.put(("cancelled", None))
            return
        events.put(("stage", "Exporting QAT to INT8 ONNX"))
        export_checkpoint(out / "qat.pt", out / "int8_qat.onnx")
        _relative_names(out)
        events.put(("done", round(time.time() - t0, 1)))
    except BaseException as exc:  # posted to the handler, which shows it as a gr.Error
        events.put(("error", exc))


#: The Train event's outputs, by name (`app.outputs`): the status line, the curves, the files, the
#: session's model sets, and the Compare and Benchmark tabs' model lists.
TRAIN_OUTPUTS = ("status", "curves", "files", "sets", "compare_models", "bench_models")


def train(data, init, width, fp32_steps, qat_steps, batch_size, patch, lr, qat_lr, ptq_method, photos=None,
          session_sets=None, request: gr.Request = None):
    """Train FP32, quantize it with PTQ and QAT, export the three ONNX models.

    Streams: status, training curves (PNG), files; finally adds the set to this session's model
    sets. One heavy request per browser session, in a fair slot (`app.boundary.slots`).
    """
    try:
        with slots.one_per_session(request, "A training"), slots.heavy_slot(request, "The training"):
            settings = _settings(data, init, width, fp32_steps, qat_steps, batch_size, patch, lr, qat_lr, ptq_method)
            for update in TrainingRun(settings, photos, session_sets, request).stream():
                yield outputs.as_slots(TRAIN_OUTPUTS, update)
    except (slots.BusyError, slots.SlotWaitError) as exc:
        raise gr.Error(str(exc), title="One request at a time") from None


def _settings(data, init, width, fp32_steps, qat_steps, batch_size, patch, lr, qat_lr, ptq_method) -> TrainSettings:
    try:
        s = TrainSettings(data=data, init=init, width=int(width), fp32_steps=int(fp32_steps), qat_steps=int(qat_steps),
                          batch_size=int(batch_size), patch=int(patch), lr=float(lr), qat_lr=float(qat_lr),
                          ptq_method=ptq_method)
        _validate(s)
        return s
    except (TypeError, ValueError) as exc:
        raise gr.Error(f"Invalid training settings: {exc}") from None
    except Exception as exc:
        raise user_error(exc, "reading the training settings") from None


class TrainingRun:
    """One training: the server's training slot, the worker thread running `_pipeline`, its
    watchdog, and the named updates `stream()` yields while it runs and when it ends."""

    def __init__(self, s: TrainSettings, photos, session_sets, request):
        self.s, self.session_sets = s, session_sets
        self.session = getattr(request, "session_hash", None) or uuid.uuid4().hex
        with _STOPS_LOCK:
            old = _STOPS.get(self.session)
        if old is not None:
            old.set()  # one training per session: a new one replaces the previous
        if not _TRAIN_SLOT.acquire(timeout=20):
            raise gr.Error("Another training is running on this server (one at a time keeps Compare fast for "
                           "everyone). Try again in a few minutes.")
        self.run_id = uuid.uuid4().hex[:8]
        self.out = config.work_dir("train", self.session[:16], self.run_id)
        try:
            if s.data == DATA_UPLOADS:
                self.spec, n_photos = _prepare_uploads(photos, self.out / "photos")
                self.data_desc = f"{n_photos} uploaded photo(s)"
            else:
                self.spec, self.data_desc = "samples", "the built-in samples"
        except Exception as exc:
            shutil.rmtree(self.out, ignore_errors=True)
            _TRAIN_SLOT.release()
            raise user_error(exc, "reading the training photos") from None
        self.stop, self.timed_out = threading.Event(), threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.points: list[dict] = []
        self.speed: dict[str, tuple[int, float]] = {}  # stage → (first step seen, when)
        self.latest = None  # (stage, step, steps, (first step, when)) of the last step reported
        self.stage = "Starting…"
        self.finished = self.error = None
        self.plot_dir = config.work_dir("train_plots")

    def curves(self) -> str:
        for old in self.plot_dir.glob(f"{self.run_id}_*.png"):  # Gradio keeps its own copy of what was sent
            old.unlink(missing_ok=True)
        s = self.s
        return plot_curves(self.points, s.fp32_steps, s.fp32_steps + s.qat_steps,
                           self.plot_dir / f"{self.run_id}_{uuid.uuid4().hex[:6]}.png")

    def stream(self):
        with _STOPS_LOCK:
            _STOPS[self.session] = self.stop
        watchdog = threading.Timer(TRAIN_DEADLINE_S, lambda: (self.timed_out.set(), self.stop.set()))
        watchdog.daemon = True
        worker = threading.Thread(target=_pipeline, args=(self.s, self.spec, self.out, self.events, self.stop),
                                  name=f"qatie-train-{self.run_id}", daemon=True)
        try:
            worker.start()
            watchdog.start()
            yield {"status": f"**{self.stage}** (estimated {estimate_s(self.s) / 60:.0f} min; stopped after "
                             f"{TRAIN_DEADLINE_S / 60:.0f} min at most)", "curves": self.curves(), "files": None}
            yield from self._follow(worker)
        finally:
            self.stop.set()
            watchdog.cancel()
            with _STOPS_LOCK:
                if _STOPS.get(self.session) is self.stop:
                    del _STOPS[self.session]
            # The worker stops within a step; then its folder goes unless the run finished (also when
            # the client left and this generator was closed), and the server's training slot frees up.
            threading.Thread(target=_after_worker, args=(worker, None if self.finished is not None else self.out),
                             name=f"qatie-train-cleanup-{self.run_id}", daemon=True).start()
        yield self._outcome()

    def _follow(self, worker: threading.Thread):
        """Drain the worker's events; a progress update about every 1.5 s until it ends."""
        t0, last_yield = time.time(), 0.0
        while True:
            try:
                kind, payload = self.events.get(timeout=0.5)
            except queue.Empty:
                kind, payload = None, None
            if kind is None and not worker.is_alive() or self._ended(kind, payload):
                return
            now = time.time()
            if now - last_yield >= 1.5:
                last_yield = now
                yield {"status": progress_md(self.stage, self.latest, now, now - t0, self.s.qat_steps),
                       "curves": self.curves()}

    def _ended(self, kind, payload) -> bool:
        """Take in one worker event; True when it ends the run."""
        if kind == "stage":
            self.stage = payload
            self.latest = None  # the previous stage's "step n of n" does not describe this one
        elif kind in ("fp32", "qat"):
            offset = 0 if kind == "fp32" else self.s.fp32_steps
            point = {"step": payload["step"] + offset, "loss": payload["loss"], "stage": kind.upper()}
            if "val" in payload:
                point["val"] = payload["val"]
            self.points.append(point)
            # Measured speed of this stage: from its first reported step to now.
            first = self.speed.setdefault(kind, (payload["step"], time.time()))
            self.latest = (kind, payload["step"], payload["steps"], first)
        elif kind == "done":
            self.finished = payload
        elif kind == "error":
            self.error = payload
        return kind in ("done", "cancelled", "error")

    def _outcome(self) -> dict:
        """The last update: the new model set, or why there is none."""
        if self.error is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            if isinstance(self.error, QatieError):
                raise user_error(self.error, "training")
            log.error("training failed:\n%s", "".join(traceback.format_exception(self.error)))
            raise gr.Error(f"Training failed ({type(self.error).__name__}: "
                           f"{guard.public_text(str(self.error))[:300]}). The server log has the details.")
        if self.finished is None:
            shutil.rmtree(self.out, ignore_errors=True)
            if self.timed_out.is_set():
                raise gr.Error(f"Training was stopped at this demo's time limit ({TRAIN_DEADLINE_S / 60:.0f} "
                               "minutes). Nothing was added to your models; try fewer steps or smaller settings.")
            return {"status": "**Cancelled.** Nothing was added to your models.", "curves": self.curves(),
                    "files": None}
        return self._new_set()

    def _new_set(self) -> dict:
        s, out = self.s, self.out
        try:
            from qatie.runtime import enhancer as rt

            for name in ("fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx"):
                rt.OnnxEnhancer(out / name, threads=1)  # fail here, clearly, rather than in Compare
            width_used = (models.sidecar(out / "int8_qat.onnx") or {}).get("width", s.width)
        except Exception as exc:
            raise user_error(exc, "checking the trained models") from None
        sets = dict(self.session_sets or {})
        key = f"trained-{self.run_id}"
        start = ("from the shipped FP32" if s.fp32_steps == 0 else "fine-tuned shipped FP32") \
            if s.init == INIT_SHIPPED else "from scratch"
        label = (f"Trained #{len(sets) + 1}: width {width_used}, {s.fp32_steps} FP32 + {s.qat_steps} QAT steps "
                 f"({start}, {self.data_desc})")
        sets[key] = {"label": label, "paths": {"fp32": str(out / "fp32.onnx"), "ptq": str(out / "int8_ptq.onnx"),
                                               "qat": str(out / "int8_qat.onnx")}}
        files = [str(out / n) for n in ("fp32.onnx", "int8_ptq.onnx", "int8_qat.onnx", "fp32.pt", "qat.pt",
                                        "int8_ptq.json", "int8_qat.json") if (out / n).is_file()]
        status = (f"**Done in {self.finished:.0f} s.** “{label}” is now selected in the Compare tab (for this "
                  "browser session only — shipped models stay available). Download the models below.")
        return {"status": status, "curves": self.curves(), "files": files, "sets": sets,
                "compare_models": gr.update(choices=models.choices(sets), value=key),
                "bench_models": gr.update(choices=models.choices(sets))}


def _after_worker(worker: threading.Thread, remove: Path | None) -> None:
    try:
        worker.join()
        if remove is not None:
            shutil.rmtree(remove, ignore_errors=True)
    finally:
        _TRAIN_SLOT.release()


def _relative_names(out: Path) -> None:
    """Downloads name their files relative to the run (no server paths): rewrite the run
    folder's prefix out of the sidecars and the checkpoints' recorded configs."""
    import json

    import torch

    prefix = str(out) + "/"

    def fix(v):
        if isinstance(v, str):
            return v.replace(prefix, "").replace(str(out), ".")
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(fix(x) for x in v)
        return v

    for side in out.glob("*.json"):
        side.write_text(json.dumps(fix(json.loads(side.read_text())), indent=1))
    for ckpt in out.glob("*.pt"):
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
        torch.save(fix(data) if isinstance(data, dict) else data, ckpt)


def forget(session_sets) -> None:
    """State delete callback: remove the files of a closed session's trained sets."""
    for entry in (session_sets or {}).values():
        try:
            folder = Path(entry["paths"]["fp32"]).parent
            if config.WORK_DIR in folder.parents:
                shutil.rmtree(folder, ignore_errors=True)
        except (KeyError, TypeError):
            pass


def cancel(request: gr.Request):
    """Stop this session's training (it stops within a training step)."""
    session = getattr(request, "session_hash", None)
    with _STOPS_LOCK:
        stop = _STOPS.get(session)
    if stop is None:
        return "Nothing to cancel."
    stop.set()
    # The run's event is cancelled with this click (nothing it made is kept); the worker thread
    # stops at its next step check and its files are removed then.
    return "**Cancelled.** Nothing was added to your models."
