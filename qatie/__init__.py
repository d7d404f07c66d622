"""QATIE: see, measure and fix what INT8 quantization does to an image-enhancement network."""
from qatie.api import calibrate_ptq, export_onnx, export_tflite, finetune_qat, load, train_fp32
from qatie.errors import CheckpointError, ImageReadError, ModelFileError, QatieError

__version__ = "0.1.0"


def build_model(width: int = 32, variant: str = "full"):
    """Build the paper's network (imports torch lazily so the ONNX runtime path stays torch-free)."""
    from qatie.model.network import build_model as _build

    return _build(width, variant)


__all__ = ["load", "train_fp32", "calibrate_ptq", "finetune_qat", "export_onnx", "export_tflite", "build_model", "QatieError",
           "ImageReadError", "CheckpointError", "ModelFileError", "__version__"]
