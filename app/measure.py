"""Measure the app from the outside: cold start and time-to-outputs of `/compare` on a 1-MP photo.

    python -m app.measure                 # starts `python app.py` on a free port, measures, stops it
    python -m app.measure --url http://127.0.0.1:7860/ --runs 5      # an app that is already running
    python -m app.measure --json measure.json

* **Cold start**: from spawning `python app.py` to the page answering (HTTP 200 on `/` and
  `/config`), i.e. a usable page; ONNX sessions are then warmed in the background.
* **Time to outputs**: from the `gradio_client` call (upload included) until the input and the
  three output PNGs have all arrived, downloaded on the client — what "on screen" costs
  through the API. Also the time to the analysis (metrics), to the paper set's two LiteRT
  pictures (the authors' file, QATIE's QAT-INT8 on LiteRT; where shown) and to the final update
  (the timing rounds that fit the budget). Each is the median over `--runs` calls on different
  1-MP photos.
* **Training** (`--train`): one `/train` call with the Train tab's defaults (built-in photos,
  from scratch), timed from submit to the final update.
* **Flood** (`--flood N`): one visitor's N sessions (`gradio_client` clients sharing an
  X-Forwarded-For address) each submit a 1-MP compare at once; then another visitor does: that lone visitor's time to outputs and to the final
  update, the flooders' outcomes, and (for a server started here) its RSS with children, peak
  during the flood and once it is over.
* **QAT step cost** (`--qat-cost`, no app): what a QAT step costs in FP32 steps at the Train
  tab's defaults on one torch thread — the range the Train tab's time estimate uses.
* **First view** (`--first-view`): in headless Chromium (/usr/bin/chromium, Playwright), from
  navigating to the page until the first view's comparison (the example's headline and enlarged
  crops, computed at start-up and cached) is on screen; a fresh browser page each time, median
  over `--runs` loads after one untimed load.

The app is launched with `app.server.AppServer`, as the API and browser tests launch it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from app.server import AppServer, rss_mb


def one_mp_photos(n: int, folder: Path) -> list[Path]:
    """`n` different ~1-MP JPEG photos (the example photos, degraded, at 1224×816 and shifted)."""
    from PIL import Image

    from qatie.data.datasets import EVAL_DEGRADATION, sample_images
    from qatie.data.degrade import degrade
    from qatie.imageio import to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    photos = list(sample_images(("rocket", "coffee", "astronaut", "chelsea")).items())
    out = []
    for i in range(n):
        name, img = photos[i % len(photos)]
        big = Image.fromarray(to_uint8(img)).resize((1224, 816), Image.Resampling.BICUBIC)
        arr = np.roll(np.asarray(big), 37 * i, axis=1).astype(np.float32) / 255
        arr = degrade(arr, 100 + i, EVAL_DEGRADATION)
        path = folder / f"photo_1mp_{i}.jpg"
        Image.fromarray(to_uint8(arr)).save(path, quality=92)
        out.append(path)
    return out


def time_compare(client, photo: Path) -> dict:
    """Submit /compare and time its streamed updates on the client, as a browser sees them: an
    update is on screen once each file it shows has been downloaded — a file already fetched (the
    same URL: an update that shows it again) is not fetched again, and new ones are fetched six at a
    time (a browser's connections per host). `client` is made with download_files=False."""
    from gradio_client import handle_file

    fetched: set[str] = set()
    t0 = time.perf_counter()
    job = client.submit(handle_file(str(photo)), api_name="/compare")
    first_images = analysis = None
    pictures: dict[str, float] = {}  # the authors' / LiteRT picture (paper set): when each is on screen
    got: set[str] = set()  # which of input/FP32/PTQ/QAT are on screen
    seen = 0
    while True:
        outs = job.outputs()
        for upd in map(named, outs[seen:]):
            _fetch_new(upd, fetched)
            now = time.perf_counter() - t0
            got |= {k for k in ("input", "fp32", "ptq", "qat") if _file_urls(upd[k])}
            if first_images is None and len(got) == 4:
                first_images = now
            if analysis is None and isinstance(upd["verdict"], str) and upd["verdict"]:
                analysis = now
            _note_pictures(upd, pictures, now)
        seen = len(outs)
        if job.done():
            break
        time.sleep(0.005)
    result = named(job.result())
    _fetch_new(result, fetched)
    final = time.perf_counter() - t0
    _note_pictures(result, pictures, final)
    js = result["metrics_json"]
    return {"photo": photo.name, "first_outputs_s": first_images, "analysis_s": analysis, "final_s": final,
            "authors_s": pictures.get("authors"), "litert_s": pictures.get("litert"),
            "latency_ms": js.get("latency_ms") if isinstance(js, dict) else None,
            "picture_latency_ms": {k: js[k]["latency_ms"] for k in ("authors_tflite", "litert")
                                   if isinstance(js, dict) and k in js}}


#: The paper set's two LiteRT pictures (`/compare` outputs), timed when each is first on screen.
PICTURES = ("authors", "litert")


def _note_pictures(update: dict, pictures: dict[str, float], now: float) -> None:
    """Record `now` for each picture this update shows for the first time."""
    for name in PICTURES:
        if name not in pictures and _file_urls(update[name]):
            pictures[name] = now


def _file_urls(value) -> list[str]:
    """The URLs of the files an output value shows (FileData dicts, also inside slider pairs)."""
    if isinstance(value, dict):
        return [value["url"]] if isinstance(value.get("url"), str) else []
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in _file_urls(v)]
    return []


def _fetch_new(update: dict, fetched: set[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    new = [u for v in update.values() for u in _file_urls(v) if u not in fetched]
    if not new:
        return
    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=60) as r:
            return len(r.read())

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(get, new))
    fetched.update(new)


def named(outputs) -> dict:
    """/compare's outputs (a list, as the API gives them) by name (`app.compare.handlers.OUTPUT_NAMES`)."""
    from app.compare.handlers import OUTPUT_NAMES

    return dict(zip(OUTPUT_NAMES, outputs))


def measure(url: str, runs: int, folder: Path) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)  # files fetched as a browser would (time_compare)
    photos = one_mp_photos(runs + 1, folder)
    time_compare(client, photos[-1])  # the first call of a fresh server pays for warm-up: not counted
    rows = [time_compare(client, p) for p in photos[:runs]]
    med = {k: statistics.median(r[k] for r in rows) for k in ("first_outputs_s", "analysis_s", "final_s")}
    for k in (f"{name}_s" for name in PICTURES):  # where shown
        if all(r[k] is not None for r in rows):
            med[k] = statistics.median(r[k] for r in rows)
    return {"runs": rows, "median": med}


def flood(url: str, n: int, folder: Path, pid: int | None = None) -> dict:
    """`n` sessions submit a 1-MP compare each, at once; 0.5 s later a lone visitor submits one.
    The lone visitor's times (client side) are what fairness means here."""
    import threading

    from gradio_client import Client, handle_file

    photos = one_mp_photos(n + 1, folder / "flood")
    # the flood comes from one address, the lone visitor from another (as a Space's proxy reports them)
    clients = [Client(url, verbose=False, headers={"X-Forwarded-For": "10.0.0.66"}) for _ in range(n)]
    clients.append(Client(url, verbose=False, headers={"X-Forwarded-For": "10.0.0.7"}, download_files=False))
    peak, stop = [0.0], threading.Event()

    def watch():
        while pid and not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            stop.wait(0.2)

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    jobs = [c.submit(handle_file(str(p)), api_name="/compare") for c, p in zip(clients[:n], photos[:n])]
    time.sleep(0.5)
    lone = time_compare(clients[n], photos[n])
    outcomes: dict[str, int] = {}
    for job in jobs:
        try:
            job.result()
            key = "ok"
        except Exception as exc:  # a full queue, a deadline: counted by kind
            key = type(exc).__name__ + ": " + str(exc)[:60]
        outcomes[key] = outcomes.get(key, 0) + 1
    stop.set()
    out = {"sessions": n, "lone": lone, "flood_s": round(time.perf_counter() - t0, 1), "outcomes": outcomes}
    if pid:
        time.sleep(5)
        out.update(peak_rss_mb=round(peak[0]), after_rss_mb=round(rss_mb(pid)))
    return out


def time_train(client) -> dict:
    """One /train call with the Train tab's default settings, timed on the client."""
    from app.train.handlers import DATA_SAMPLES, DEFAULTS, INIT_SCRATCH

    d = DEFAULTS
    t0 = time.perf_counter()
    status = client.predict(api_name="/train", data=DATA_SAMPLES, init=INIT_SCRATCH, width=d.width,
                            fp32_steps=d.fp32_steps, qat_steps=d.qat_steps, batch_size=d.batch_size, patch=d.patch,
                            lr=d.lr, qat_lr=d.qat_lr, ptq_method=d.ptq_method)[0]
    return {"train_s": round(time.perf_counter() - t0, 1), "width": d.width, "fp32_steps": d.fp32_steps,
            "qat_steps": d.qat_steps, "status": status}


def time_first_view(url: str, runs: int) -> dict:
    """Page load → the first view's comparison visible, in headless Chromium (fresh page each)."""
    from playwright.sync_api import sync_playwright

    shown = ("() => { const i = document.querySelector('#zoom img'), h = document.querySelector('#headline');"
             " return !!(i && i.complete && i.naturalWidth > 0 && h && h.innerText.includes('QAT-INT8')); }")
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            for i in range(runs + 1):
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                t0 = time.perf_counter()
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_function(shown, timeout=180_000)
                if i:  # the first load may wait for the start-up comparison: not counted
                    times.append(round(time.perf_counter() - t0, 2))
                page.close()
        finally:
            browser.close()
    return {"loads_s": times, "median_s": statistics.median(times)}


def qat_step_cost(steps: int = 60) -> dict:
    """What a QAT step costs in FP32 steps at the Train tab's defaults, one torch thread, in this
    process (no app): `steps` FP32 steps, then as many QAT steps from that model; speeds measured
    after the first 5 steps of each (`app.train.progress.QAT_STEP_COST_RANGE`)."""
    import dataclasses

    import torch

    from qatie.model.checkpoint import load_model, save_checkpoint
    from qatie.quantize.qat import run_qat
    from qatie.train.loop import train

    from app.train import handlers as tt

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="qatie-qat-cost-"))
    s = dataclasses.replace(tt.DEFAULTS, fp32_steps=steps, qat_steps=steps)
    train_cfg, _, qat_cfg = tt.stage_configs(s, "samples", s.width, threads=1)
    never = 10 ** 6  # no validation or checkpoints inside the timed steps
    seen: dict[str, list[tuple[int, float]]] = {"fp32": [], "qat": []}
    train(dataclasses.replace(train_cfg, val_every=never, checkpoint_every=never), folder / "fp32",
          progress=lambda e: seen["fp32"].append((e["step"], time.perf_counter())))
    save_checkpoint(folder / "fp32.pt", load_model(folder / "fp32" / "last.pt"), kind="fp32",
                    config=train_cfg.to_dict())
    run_qat(folder / "fp32.pt", folder / "qat.pt", dataclasses.replace(qat_cfg, val_every=never),
            progress=lambda e: seen["qat"].append((e["step"], time.perf_counter())))

    def rate(kind: str) -> float:
        (s0, t0), (s1, t1) = seen[kind][5], seen[kind][-1]
        return (s1 - s0) / (t1 - t0)

    return {"steps": steps, "fp32_steps_per_s": round(rate("fp32"), 3), "qat_steps_per_s": round(rate("qat"), 3),
            "qat_step_cost": round(rate("fp32") / rate("qat"), 2)}


def _pictures_text(times: dict) -> str:
    """'authors' picture 4.80 s, LiteRT picture 5.90 s, ' for the pictures a run showed."""
    return "".join(f"{label} picture {times[k]:.2f} s, " for k, label in (("authors_s", "authors'"), ("litert_s", "LiteRT"))
                   if times.get(k) is not None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="measure an app already running at this URL (no cold start)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--train", action="store_true", help="also time one /train call with the Train tab's defaults")
    ap.add_argument("--flood", type=int, default=0, metavar="N",
                    help="also measure a lone visitor's 1-MP compare while N other sessions each submit one")
    ap.add_argument("--first-view", action="store_true",
                    help="also time page load → first view's comparison on screen, in headless Chromium")
    ap.add_argument("--qat-cost", action="store_true",
                    help="only measure what a QAT step costs in FP32 steps at the Train tab's defaults (no app)")
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="qatie-measure-"))
    from qatie.runtime.cpu import cpu_name, int8_path

    report: dict = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "cpu": cpu_name(), "int8_path": int8_path(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"CPU: {report['cpu']} ({report['cpus']} usable cores, INT8 kernels: {report['int8_path']}); "
          f"load average before: {report['load_avg_1m']}")
    if args.qat_cost:
        report["qat_cost"] = q = qat_step_cost()
        print(f"Train tab defaults, one torch thread: FP32 {q['fp32_steps_per_s']} steps/s, QAT {q['qat_steps_per_s']} "
              f"steps/s: a QAT step costs {q['qat_step_cost']} FP32 steps")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
        return 0

    def run(url: str, pid: int | None = None) -> None:
        if args.first_view:  # first: the heavier measurements below would only delay it
            report["first_view"] = time_first_view(url, args.runs)
        report.update(measure(url, args.runs, folder))
        if args.flood:
            report["flood"] = flood(url, args.flood, folder, pid)
        if args.train:
            from gradio_client import Client

            report["train"] = time_train(Client(url, verbose=False))

    if args.url:
        run(args.url)
    else:
        with AppServer() as server:
            report["cold_start_s"] = round(server.startup_s, 2)
            print(f"cold start to usable page: {server.startup_s:.2f} s")
            run(server.url, server.proc.pid)
    for r in report["runs"]:
        lat = r["latency_ms"] or {}
        print(f"{r['photo']}: outputs on client {r['first_outputs_s']:.2f} s, metrics {r['analysis_s']:.2f} s, "
              + _pictures_text(r) + f"final {r['final_s']:.2f} s; model medians (ms) "
              + ", ".join(f"{k} {v['median_ms']:.0f}" for k, v in lat.items())
              + "".join(f", {k} {v:.0f}" for k, v in (r.get("picture_latency_ms") or {}).items()))
    m = report["median"]
    print(f"median over {len(report['runs'])} 1-MP photos (1224×816 JPEG): three outputs on the client after "
          f"{m['first_outputs_s']:.2f} s, metrics {m['analysis_s']:.2f} s, " + _pictures_text(m)
          + f"final {m['final_s']:.2f} s")
    if "flood" in report:
        f = report["flood"]
        print(f"flood of {f['sessions']} sessions, one 1-MP compare each ({f['outcomes']}, all done after "
              f"{f['flood_s']:.0f} s): a lone visitor submitting 0.5 s later got the three outputs after "
              f"{f['lone']['first_outputs_s']:.1f} s, the final update after {f['lone']['final_s']:.1f} s"
              + (f"; server RSS with children peaked at {f['peak_rss_mb']} MB, {f['after_rss_mb']} MB after"
                 if "peak_rss_mb" in f else ""))
    if "first_view" in report:
        f = report["first_view"]
        print(f"page load → first view's comparison on screen (Chromium, cached example): median {f['median_s']:.2f} s "
              f"over {len(f['loads_s'])} loads {f['loads_s']}")
    if "train" in report:
        t = report["train"]
        print(f"Train tab defaults (width {t['width']}, {t['fp32_steps']} FP32 + {t['qat_steps']} QAT steps): "
              f"{t['train_s']:.0f} s — {t['status'].splitlines()[0] if t['status'] else ''}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
