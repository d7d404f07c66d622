"""Stage 5, quantization: where INT8 ranges come from — PTQ calibration (`ptq`), QAT fine-tuning (`qat`), layers kept in float (`keep_float`). Both write their INT8 models through `qatie.export`."""
