"""QATIE app: compare FP32 / PTQ-INT8 / QAT-INT8 on your photo, train and quantize from the UI.

    python app.py                      # http://127.0.0.1:7860
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=8080 python app.py

The UI lives in `app/` (a package next to this file); this file only builds and launches it,
which is what Hugging Face Spaces runs (`app_file: app.py`). Compare/Benchmark never import
torch; the Train tab imports it on first use.
"""
import logging
import os
import time

_T0 = time.perf_counter()
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry or update checks

from app.ui import build_demo, launch  # noqa: E402

logging.basicConfig(level=os.environ.get("QATIE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("httpx").setLevel(logging.WARNING)

demo = build_demo()

if __name__ == "__main__":
    logging.getLogger("qatie.app").info("UI built in %.2f s", time.perf_counter() - _T0)
    launch(demo)
