"""The Python API reads like the CLI, and the README's example runs as written."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, assert_exact_on_every_cpu
from tolerances import TOLERANCES


def readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-example:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no API example block"
    return m.group(1)


@pytest.mark.slow
def test_readme_api_example_runs(tmp_path):
    """Run in a scratch folder (its runs/ lands there); the paper set comes from the repository."""
    code = readme_example()
    if not (REPO_ROOT / "checkpoints" / "paper_int8_qat.onnx").is_file():
        code = code.replace(', "paper-qat")', ")")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if "agreement with this FP32" in ln]
    assert len(lines) >= 2 and all("(" in ln and "dB" in ln for ln in lines), proc.stdout
    for f in ("best.pt", "ptq.onnx", "ptq.json", "qat.pt", "qat.onnx", "qat.json", "coffee_qat.png"):
        assert (tmp_path / "runs" / "api_demo" / f).is_file(), f
    for f in ("ptq.onnx", "qat.onnx"):  # what the Python API writes is exact on every CPU
        assert_exact_on_every_cpu(tmp_path / "runs" / "api_demo" / f)
    from qatie.runtime.litert import LiteRTEnhancer  # the LiteRT file runs at the size it was written for

    lite = LiteRTEnhancer(tmp_path / "runs" / "api_demo" / "qat.tflite")
    assert lite.size == (256, 256) and lite.enhance(np.full((256, 256, 3), 0.5, np.float32)).shape == (256, 256, 3)


def test_api_names_do_not_shadow_the_stage_modules():
    """`qatie.train.loop` stays the training module after the API is imported (and vice versa)."""
    import qatie
    import qatie.quantize.ptq
    import qatie.quantize.qat
    import qatie.train.loop

    assert callable(qatie.train_fp32) and callable(qatie.calibrate_ptq) and callable(qatie.finetune_qat)
    assert qatie.train.loop.__name__ == "qatie.train.loop" and qatie.quantize.ptq.run_ptq is not None and qatie.quantize.qat.run_qat
    assert qatie.export_onnx.__module__ == "qatie.api"


def test_load_gives_an_enhancer_for_a_checkpoint_and_rejects_nonsense(tmp_path):
    import qatie
    from qatie.model.checkpoint import save_checkpoint
    from qatie.errors import QatieError

    ckpt = save_checkpoint(tmp_path / "m.pt", qatie.build_model(8))
    img = np.random.default_rng(0).random((24, 40, 3), dtype=np.float32)
    out = qatie.load(ckpt)(img)
    assert out.shape == img.shape and np.allclose(out, img, atol=TOLERANCES["untrained_identity_max_abs"])  # delta starts at zero: identity
    with pytest.raises(QatieError):
        qatie.load(tmp_path / "absent.onnx")
    with pytest.raises(QatieError, match="TrainConfig"):
        qatie.train_fp32(42, tmp_path / "run")
