"""Stage 4, export: the ONNX writer for FP32 and INT8 models (`to_onnx`), the JSON sidecar of per-tensor scales (`sidecar`), and the graph passes run on every export (`graph_opt`)."""
