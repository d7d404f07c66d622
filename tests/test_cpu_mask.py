"""The CPU mask (`qatie.runtime.cpu_mask`): a masked process runs ONNX Runtime's AVX2 integer
kernels, whose pair sums saturate — and on them the shipped INT8 models give exactly the output
they give on this CPU's own kernels. The product's result on both kernel families, checked on one
machine (on a CPU without VNNI both runs use AVX2; the first test then checks only the mask)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from qatie.errors import QatieError
from qatie.runtime import cpu_mask
from qatie.runtime.cpu import int8_exact, int8_path
from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(cpu_mask.unavailable_reason() is not None,
                                reason=str(cpu_mask.unavailable_reason()))

CKPT = REPO_ROOT / "checkpoints"
SHIPPED_INT8 = ["int8_ptq", "int8_qat", "paper_int8_ptq", "paper_int8_qat"]

#: One QLinearConv over 8 channels of 255 with weights of 127 (scales 1, output scale 1024): the
#: exact sum gives round(255·127·8 / 1024) = 253; VPMADDUBSW's int16 pair sums clip each pair of
#: products (64770) to 32767, giving 4·32767 / 1024 → 128. Prints "<detected path> <value>".
PROBE = """
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from qatie.runtime.cpu import int8_path
c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)
inits = [c("xs", np.float32(1)), c("xz", np.uint8(0)), c("w", np.full((1, 8, 1, 1), 127, np.int8)),
         c("ws", np.float32(1)), c("wz", np.int8(0)), c("ys", np.float32(1024)), c("yz", np.uint8(0))]
node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
print(int8_path(), int(s.run(None, {"x": np.full((1, 8, 1, 1), 255, np.uint8)})[0].item()))
"""

#: Each shipped INT8 model's output on a bundled example photo, as JSON lists of uint8 bytes' hex.
OUTPUTS = """
import json, sys
from qatie.imageio import read_image
from qatie.imageio import to_uint8
from qatie.runtime.enhancer import OnnxEnhancer
img = read_image("assets/examples/astronaut_input.png")[:192, :256]
print(json.dumps({n: to_uint8(OnnxEnhancer(f"checkpoints/{n}.onnx", threads=1).enhance(img)).tobytes().hex()
                  for n in sys.argv[1:]}))
"""


def _python(code: str, *args: str, masked: bool) -> str:
    env = cpu_mask.environment() if masked else None
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_masked_process_runs_the_saturating_avx2_kernels():
    assert _python(PROBE, masked=True) == "avx2 128"
    native_path = int8_path()
    expected = {True: 253, False: 128}.get(int8_exact(native_path))
    if expected is None:
        pytest.skip(f"this CPU's path {native_path} is not one whose exactness is established")
    assert _python(PROBE, masked=False) == f"{native_path} {expected}"


@pytest.mark.skipif(not all((CKPT / f"{n}.onnx").is_file() for n in SHIPPED_INT8), reason="shipped models absent")
def test_shipped_int8_outputs_are_bit_identical_on_avx2_kernels():
    masked = json.loads(_python(OUTPUTS, *SHIPPED_INT8, masked=True))
    native = json.loads(_python(OUTPUTS, *SHIPPED_INT8, masked=False))
    for name in SHIPPED_INT8:
        a = np.frombuffer(bytes.fromhex(masked[name]), np.uint8)
        b = np.frombuffer(bytes.fromhex(native[name]), np.uint8)
        assert a.size == 192 * 256 * 3 and np.array_equal(a, b), (
            f"{name}: {int((a != b).sum())} values differ between AVX2 kernels and {int8_path()}")


#: The paper QAT-INT8 model written to LiteRT and run by XNNPACK on a bundled example crop (hex bytes).
LITERT_OUTPUT = """
import sys, tempfile
from qatie.imageio import read_image, to_uint8
from qatie.runtime.litert import LiteRTEnhancer, litert_file
img = read_image("assets/examples/astronaut_input.png")[:96, :128]
with tempfile.TemporaryDirectory() as d:
    print(to_uint8(LiteRTEnhancer(litert_file("checkpoints/paper_int8_qat.onnx", 96, 128, d)).enhance(img)).tobytes().hex())
"""


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None or not (CKPT / "paper_int8_qat.onnx").is_file(),
                    reason="needs ai-edge-litert and the shipped paper models")
def test_qatie_litert_output_is_bit_identical_on_xnnpack_avx2_kernels():
    """The LiteRT file of the paper QAT-INT8 model gives the same bytes on XNNPACK's AVX2 int8 kernels
    as on this CPU's (`qatie litert-proof` under the mask: every conv exact there too)."""
    assert _python(LITERT_OUTPUT, masked=True) == _python(LITERT_OUTPUT, masked=False)


def test_the_command_line_runs_a_command_masked_and_says_why_it_cannot():
    done = subprocess.run([sys.executable, "-m", "qatie.runtime.cpu_mask", sys.executable, "-c",
                           "from qatie.runtime.cpu import int8_path; print(int8_path())"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "avx2", done.stderr
    said = _python("from qatie.runtime.cpu import describe; print(describe())", masked=True)
    assert "hidden: qatie.runtime.cpu_mask" in said and "INT8 kernels: avx2" in said, said
    assert cpu_mask.main([]) == 2


def test_where_the_mask_cannot_run_it_says_why(monkeypatch):
    monkeypatch.setattr(cpu_mask.shutil, "which", lambda name: None)
    with pytest.raises(QatieError, match="no C compiler"):
        cpu_mask.library()
